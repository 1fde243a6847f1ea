"""A long-running process's budget on a small device: one BLAS thread, and freed memory handed back.

The station and ``edgelearn watch`` decide frame after frame with small matrix products; ONNX Runtime gets
the cores for the backbone. Left to itself OpenBLAS spreads those products over its own threads, which then
spin while they wait: `watch` at 5 frames/s spent 55 % of a core in OpenBLAS's idle threads (measured with
gdb), and SLDA's solve beside a busy backbone took 660 ms instead of 100 (loaded 2-core machine).
"""

import ctypes

from threadpoolctl import ThreadpoolController


def one_blas_thread():
    """Limit numpy's BLAS to one thread until the returned limiter's ``restore_original_limits()`` (or the
    end of its ``with`` block)."""
    return ThreadpoolController().limit(limits=1, user_api="blas")


def return_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise). Teaching runs larger batches
    through the backbone than predictions do: without this the station held 120 MB more for good after its
    first teaching (MobileNetV2 at 224 px, measured with malloc_trim: 294 -> 173 MB)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    """The process's C library if it has glibc's ``malloc_trim`` (Linux), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
