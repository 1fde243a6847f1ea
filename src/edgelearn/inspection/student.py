"""The shallow student of Kim, Noh and Park (Table 1): five 3x3 conv layers, each followed by ReLU and 2x2
max-pooling, then two fully connected layers. With filters (4, 8, 16, 4, 4), a 4096-unit hidden
layer, 224-pixel RGB input and 12 classes it has the paper's 858,380 parameters; a smaller hidden
layer keeps it under 1/100 of a MobileNetV2."""

from dataclasses import asdict, dataclass

from torch import nn

from edgelearn.errors import ParameterError

PAPER_FILTERS = (4, 8, 16, 4, 4)


@dataclass(frozen=True)
class StudentConfig:
    num_classes: int
    filters: tuple[int, ...] = PAPER_FILTERS
    hidden: int = 256
    input_size: int = 128
    in_channels: int = 3
    batch_norm: bool = True  # folded into the convs for inference; trains more reliably on small data

    def to_dict(self) -> dict:
        return {**asdict(self), "filters": list(self.filters)}

    @classmethod
    def from_dict(cls, data: dict) -> "StudentConfig":
        return cls(**{**data, "filters": tuple(data["filters"])})


class Student(nn.Sequential):
    """Build from a :class:`StudentConfig` (``Student(StudentConfig(6))``)."""

    def __init__(self, config: StudentConfig):
        if len(config.filters) < 1 or min(config.filters) < 1 or config.hidden < 1:
            raise ParameterError(f"a student needs positive filter counts and hidden units, got {config}")
        layers, channels, side = [], config.in_channels, config.input_size
        for width in config.filters:
            layers += [nn.Conv2d(channels, width, 3, padding=1)]
            layers += [nn.BatchNorm2d(width)] if config.batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels, side = width, side // 2
        if side < 1:
            raise ParameterError(f"{len(config.filters)} poolings leave nothing of a {config.input_size}-pixel input")
        layers += [nn.Flatten(), nn.Linear(channels * side * side, config.hidden), nn.ReLU(inplace=True),
                   nn.Linear(config.hidden, config.num_classes)]
        super().__init__(*layers)
        self.config = config


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
