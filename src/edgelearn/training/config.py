"""One fine-tuning run's settings as one object: what ``edgelearn train`` was asked, checked once, and handed
as it is to every process of a distributed run (it pickles), so each builds the same job from it."""

import os
from dataclasses import dataclass
from pathlib import Path

from edgelearn.data.patches import PatchGrid
from edgelearn.errors import ParameterError

MODES = ("single", "ddp", "ps")
STRATEGIES = ("frozen", "partial", "full")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run of :func:`edgelearn.training.train`.

    What is trained: ``dataset`` (a folder data set, its train/ split if any; a test/ split is scored at the end),
    ``output`` (the best epoch's weights, + .json, .ckpt, .png), ``backbone`` and its ``weights``, ``strategy``
    (frozen: a new head only; partial: and the last ``trainable_blocks`` blocks; full: everything), ``epochs``,
    ``lr`` (default by strategy), ``batch_size`` (per worker), ``input_size`` (default: the weights' native size,
    or with ``patch`` the patch size), ``val_fraction`` held out per class, ``patch`` (Kim, Noh and Park's
    protocol), ``start_from`` (an earlier result: an online session continues from it), ``max_norm`` (the weight
    constraint), ``dropout`` (before the head; default: the model's) and ``seed``.

    How it runs: ``mode`` single (this process), ddp (``workers`` data-parallel processes) or ps (a parameter
    server and ``workers`` asynchronous workers); ``threads`` per process (default: the cores shared among the
    workers); across machines (ps) the server listens on ``address`` (HOST:PORT) and each worker joins it with
    its ``rank`` (1..workers); ``resume`` continues from OUTPUT.ckpt after an interruption.
    """

    dataset: Path
    output: Path
    backbone: str = "mobilenet_v2"
    weights: str | os.PathLike | None = None
    strategy: str = "frozen"
    epochs: int = 5
    lr: float | None = None
    batch_size: int = 32
    input_size: int | None = None
    trainable_blocks: int = 3
    val_fraction: float = 0.1
    patch: PatchGrid | None = None
    start_from: Path | None = None
    max_norm: float | None = None
    dropout: float | None = None
    seed: int = 0
    mode: str = "single"
    workers: int = 1
    threads: int | None = None
    address: str | None = None
    rank: int | None = None
    resume: bool = False

    def __post_init__(self):
        for name in ("dataset", "output", "start_from"):  # str or Path in, Path out
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.strategy not in STRATEGIES:
            raise ParameterError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.mode not in MODES:
            raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ParameterError("epochs and batch size must be at least 1")
        if self.workers < 1:
            raise ParameterError("workers must be at least 1")
        if self.mode != "ps" and (self.address or self.rank is not None):
            raise ParameterError("address and rank are for the parameter server (mode ps)")
        if self.rank is not None and not self.address:
            raise ParameterError("a worker (rank) needs the parameter server's address")
        if self.rank is not None and not 1 <= self.rank <= self.workers:
            raise ParameterError(f"a worker's rank is 1..{self.workers}, got {self.rank}")
