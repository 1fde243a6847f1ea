"""``torch.export`` programs (``.pt2``, fp32): TorchScript's maintained successor (``torch.jit`` is
deprecated in this torch)."""

import tempfile
from pathlib import Path

import torch

from edgelearn.errors import ModelFileError
from edgelearn.files import atomic_write_bytes


def export_program(model: torch.nn.Module, input_size: int, path: Path) -> Path:
    """``torch.export`` the model (dynamic batch) and save the program, atomically."""
    example = torch.zeros(2, 3, input_size, input_size)
    program = torch.export.export(model.to(memory_format=torch.contiguous_format), (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    with tempfile.TemporaryDirectory() as tmp:
        torch.export.save(program, Path(tmp) / "m.pt2")
        atomic_write_bytes(path, (Path(tmp) / "m.pt2").read_bytes())
    return path


class ProgramRunner:
    """Runs a saved program: ``(n, 3, s, s)`` tensor -> ``(n, classes)`` tensor, no autograd."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.module = torch.export.load(self.path).module()
        except Exception as exc:  # torch raises many kinds for a bad file
            raise ModelFileError(f"cannot load the exported program {path}: {str(exc).splitlines()[0]}") from exc

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            out = self.module(batch)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)[0]
