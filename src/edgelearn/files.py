"""One-file containers: a JSON manifest + named arrays in safetensors (no pickle), written atomically."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from edgelearn.errors import ModelFileError

MANIFEST_KEY = "edgelearn"
MAX_FILE_BYTES = 2 * 2**30


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix.

    Temp file in the same folder, fsync, rename over the target, fsync the folder. The file gets
    ``mode`` (0644: models and packages are meant to be shared; pass 0o600 for anything secret)
    before any byte is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Write a secret (a private key, a token): mode 0600 from its first byte, atomically."""
    atomic_write_bytes(path, data, mode=0o600)


def private_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) with mode 0700 if it is missing; an existing folder is left as it is."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is masked by the umask
    return path


def atomic_write_figure(path: str | os.PathLike, fig) -> None:
    """Save a matplotlib figure as a PNG atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def container_bytes(manifest: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """``manifest`` (JSON-able) and ``arrays`` as the bytes of one safetensors file."""
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return st_save(tensors, metadata={MANIFEST_KEY: json.dumps(manifest)})


def read_container(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a file written by :func:`write_container`; any damage raises :class:`ModelFileError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ModelFileError(f"{path}: larger than {MAX_FILE_BYTES // 2**30} GiB, refusing to read it")
    return parse_container(path.read_bytes(), path)


def parse_container(data: bytes, path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse the bytes of a container; ``path`` names it in error messages."""
    if len(data) > MAX_FILE_BYTES:
        raise ModelFileError(f"{path}: larger than {MAX_FILE_BYTES // 2**30} GiB, refusing to read it")
    try:
        arrays = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: not an edgelearn file, or truncated/damaged ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path}: malformed manifest")
    return manifest, arrays
