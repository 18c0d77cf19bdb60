"""How many threads tinyseq uses, and who gets them.

Policy: the threads go to BLAS (the matrix products); the Numba kernels run serially. At tinyseq's sizes
(T = 10, widths 64-512) the products are most of a step's arithmetic, while every elementwise kernel is a
single short pass over memory that a thread team would barely amortise. Numba and BLAS are never parallel at
the same time: their thread pools spin-wait after each call and would steal each other's cores, which on a
2-core laptop costs more than either gains (STYLE.md). `set_threads(n)` therefore sets Numba's count to 1,
so the `prange` loops of the recurrent kernels run serially (measured: 2 Numba threads beside 2 BLAS threads
made the rnn/gru step 2-3x slower).

BLAS threads are set at run time, in this order:
  1. threadpoolctl, if importable (not a dependency of tinyseq; it knows every BLAS and OpenMP runtime);
  2. OpenBLAS's own `openblas_set_num_threads` via ctypes, found in the libraries this process has loaded
     (NumPy's wheels bundle OpenBLAS, with a `scipy_` prefix and a `64_` suffix in recent ones);
  3. otherwise the environment variables OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS, which
     only take effect if set before NumPy is first imported (so the CLI sets them at start-up).
"""
from __future__ import annotations

import ctypes
import os

_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads")


def default_threads() -> int:
    """All cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _openblas_setter():
    """The `openblas_set_num_threads` of an OpenBLAS already loaded into this process, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        if not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                return fn
    return None


def set_blas_threads(n: int) -> str:
    """Set the BLAS thread count; returns how ("threadpoolctl", "openblas", or "env")."""
    import numpy  # noqa: F401  (BLAS must be loaded for the run-time routes)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
        return "threadpoolctl"
    except ImportError:
        pass
    setter = _openblas_setter()
    if setter is not None:
        setter(int(n))
        return "openblas"
    for var in _ENV_VARS:
        os.environ[var] = str(n)
    return "env"


def check_threads(n, flag: str = "--threads") -> int:
    """n itself if it is a usable thread count: 1 .. the machine's cores (more only slows every thread down);
    otherwise a one-line TinyseqError."""
    from tinyseq.errors import TinyseqError

    cores = os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TinyseqError(f"{flag} must be a positive integer, got {n!r}: e.g. {flag} 1")
    if n > cores:
        raise TinyseqError(f"{flag} {n} is more than the {cores} cores of this machine: use 1..{cores}")
    return n


def set_threads(n: int | None = None) -> int:
    """Give n threads (default: all cores) to BLAS and one to Numba. Returns n.

    Numba's `prange` kernels (the recurrent time loops) run serially: measured on 2 cores, a 2-thread Numba team
    next to 2 BLAS threads that spin-wait after every input projection made the rnn/gru step 2-3x *slower*
    (rnn64 batch 64: 0.39x PyTorch with 2 Numba threads against 2.99x with 1; BENCHMARKS.md)."""
    n = default_threads() if n is None else check_threads(int(n))
    set_blas_threads(n)
    try:
        import numba
        numba.set_num_threads(1)
    except ImportError:
        pass
    return n


# ----------------------------------------------------------------------------------------------------------
# the allocator: a training step allocates and frees the same ~10 MB of activations every step
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc mallopt parameters (malloc.h)
_KEPT = False


def keep_freed_memory(trim_bytes: int = 256 << 20, mmap_bytes: int = 32 << 20) -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the OS.

    By default glibc returns the top of the heap to the OS whenever more than a few MB are free, which at the
    end of every training step is the whole activation record; the next step then page-faults all of it in
    again, zero-filled by the kernel: a third of a small model's step time here. With a 256 MB trim threshold
    and arrays up to 32 MB served from the heap, a step reuses the previous step's memory. The process keeps
    its peak heap (tens of MB for tinyseq's models). No-op (False) where libc has no mallopt (macOS, Windows).
    """
    global _KEPT
    if _KEPT:
        return True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _KEPT = bool(mallopt(M_TRIM_THRESHOLD, int(trim_bytes)) and mallopt(M_MMAP_THRESHOLD, int(mmap_bytes)))
    return _KEPT
