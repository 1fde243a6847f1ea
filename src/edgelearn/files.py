"""One-file containers: a JSON manifest + named arrays in safetensors (no pickle), written atomically."""

import json
import math
import os
import secrets
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from edgelearn.errors import ModelFileError, WriteError

MANIFEST_KEY = "edgelearn"
MAX_FILE_BYTES = 2 * 2**30
MAX_HEADER_BYTES = 64 * 2**20  # the JSON header: manifest + array table (100,000 labels fit)
MAX_ARRAY_BYTES = 2**30  # all arrays together, as declared in the header
MAX_DIMS = 8
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4,
               "U64": 8, "I64": 8, "F64": 8}


DATA_ENV = "EDGELEARN_DATA"


def default_data_dir() -> Path:
    """``$EDGELEARN_DATA``, else the user's data folder (``$XDG_DATA_HOME/edgelearn``, default
    ``~/.local/share/edgelearn``): never the current folder, so a checkout never holds a station's state."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "edgelearn"


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix.

    Temp file in the same folder, fsync, rename over the target, fsync the folder. The file gets the
    mode any program's new file gets (0666 less the umask: 0644 under the usual 022, for models and
    packages are meant to be shared), or exactly ``mode`` (0o600 for anything secret) before any byte is written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_file_beside(path, 0o666 if mode is None else mode)
    except OSError as exc:  # the folder the user named cannot hold the file: say which, without a traceback
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # exactly, whatever the umask
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


def _new_file_beside(path: Path, mode: int) -> tuple[int, str]:
    """A new, uniquely named temp file next to ``path``, created with ``mode`` less the umask (as open()
    creates files; tempfile.mkstemp would make every file 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), str(tmp)
        except FileExistsError:
            continue


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
    return parse_container(read_model_file(path), path)


def read_model_file(path: str | os.PathLike) -> bytes:
    """A model or package file's bytes: a missing or oversized file is a :class:`ModelFileError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ModelFileError(f"{path}: larger than {MAX_FILE_BYTES // 2**30} GiB, refusing to read it")
    return path.read_bytes()


def parse_container(data: bytes, path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse the bytes of a container; ``path`` names it in error messages."""
    if len(data) > MAX_FILE_BYTES:
        raise ModelFileError(f"{path}: larger than {MAX_FILE_BYTES // 2**30} GiB, refusing to read it")
    header = read_header(data, path)
    try:
        manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
        arrays = st_load(data)
    except (SafetensorError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: not an edgelearn file, or truncated/damaged ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path}: malformed manifest")
    return manifest, arrays


def read_header(data: bytes, path) -> dict:
    """The safetensors header (8-byte length + JSON), checked before any array is allocated: the
    header's length, each array's dtype and shape, and the bytes all arrays would take."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise ModelFileError(f"{path}: not an edgelearn file, or truncated/damaged (header of {size:,} bytes in "
                             f"a file of {len(data):,}; at most {MAX_HEADER_BYTES // 2**20} MiB)")
    try:
        header = json.loads(data[8:8 + size])
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: not an edgelearn file, or truncated/damaged (header: {exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise ModelFileError(f"{path}: not an edgelearn file (malformed header)")
    total = sum(_array_bytes(name, entry, path) for name, entry in header.items() if name != "__metadata__")
    if total > min(MAX_ARRAY_BYTES, len(data) - 8 - size):
        raise ModelFileError(f"{path}: its arrays would take {total:,} bytes, but the file holds "
                             f"{len(data) - 8 - size:,} (at most {MAX_ARRAY_BYTES // 2**20} MiB are read)")
    return header


def _array_bytes(name: str, entry, path) -> int:
    """Bytes one header entry declares; refuses unknown dtypes and malformed shapes."""
    dtype, shape = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else (None, None)
    if dtype not in DTYPE_BYTES:
        raise ModelFileError(f"{path}: array {name!r} has an unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS \
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ModelFileError(f"{path}: array {name!r} has a malformed shape {shape!r}")
    return math.prod(shape) * DTYPE_BYTES[dtype]
