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
import statistics
import time

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


_SETTER = None     # the OpenBLAS setter once found (False: none)


def set_blas_threads(n: int) -> str:
    """Set the BLAS thread count; returns how ("threadpoolctl", "openblas", or "env")."""
    import numpy  # noqa: F401  (BLAS must be loaded for the run-time routes)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
        return "threadpoolctl"
    except ImportError:
        pass
    global _SETTER
    if _SETTER is None:
        _SETTER = _openblas_setter() or False
    setter = _SETTER
    if setter:
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


def parse_threads(value, flag: str = "--threads"):
    """"auto", a usable count (an int or its digits, as the command line gives it) or None; anything else is
    a one-line TinyseqError."""
    from tinyseq.errors import TinyseqError

    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise TinyseqError(f"{flag} must be auto or a positive integer, got {value!r}: e.g. {flag} auto")
        value = int(value)
    return check_threads(value, flag)


def static_threads(value, flag: str = "--threads") -> int:
    """A fixed count for a command without training steps to time (probe): "auto" is the cores other
    programs leave free, measured over 0.2 s; a count is checked."""
    value = parse_threads(value, flag)
    if value == "auto":
        return free_cores(default_threads(), measure_other_load(0.2))
    return default_threads() if value is None else value


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
# --threads auto: measure, choose, and watch for other programs
#
# Why not simply "all cores": OpenBLAS's helper threads spin-wait after each product. With another program
# keeping one of 2 cores busy, a 2-thread BLAS waits for a thread that the scheduler has parked behind that
# program, and a step takes up to 10x longer (measured: 10 steps in 6 s against 107 with one thread). Idle,
# two threads gain only ~5% on the default model. So auto starts on 1 thread, times real training steps on 1
# and on the free cores, keeps the extra threads only when they pay >= 5%, and drops back as soon as
# another program takes a core. Switching mid-run changes the numbers at most by rounding: some BLAS builds give
# the same bits for every thread count, others (OpenBLAS 0.3.31 on an AMD EPYC, float32) round a threaded
# product differently in the last bits; tests/test_threads.py checks a short run either way. Byte-identical
# runs take a fixed --threads N.

def _proc_stat(path: str = "/proc/stat") -> tuple[float, float] | None:
    """(busy CPU seconds summed over the cores we may run on, wall seconds) since boot, from /proc/stat
    (its per-core lines, in clock ticks); None where there is no /proc/stat (macOS, Windows)."""
    try:
        with open(path) as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
    except OSError:
        return None
    ours = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
    busy = total = 0
    n = 0
    for fields in lines:
        if ours is not None and fields[0] not in ours:
            continue
        ticks = [int(x) for x in fields[1:9]]   # user nice system idle iowait irq softirq steal
        busy += sum(ticks) - ticks[3] - ticks[4]
        total += sum(ticks)
        n += 1
    if n == 0:
        return None
    hz = float(os.sysconf("SC_CLK_TCK"))
    return busy / hz, total / hz / n


class LoadMeter:
    """Cores kept busy by OTHER processes since the previous reading: the machine's busy time (/proc/stat)
    minus this process's own CPU time (all its threads, spinning BLAS helpers included), over the elapsed
    time. Readings less than `min_seconds` apart return the previous value (/proc/stat counts in 10 ms
    ticks). Where /proc/stat does not exist (macOS, Windows) it reports 0.0: the machine is assumed idle."""

    def __init__(self, cores: int | None = None, min_seconds: float = 0.1):
        self.cores = cores or (os.cpu_count() or 1)
        self.min_seconds = min_seconds
        self.value = 0.0
        self.last = self._read()

    @staticmethod
    def _read():
        stat = _proc_stat()
        return None if stat is None else (stat[0], stat[1], time.process_time())

    def __call__(self) -> float:
        now = self._read()
        if now is None or self.last is None:
            return 0.0
        busy, wall, own = (a - b for a, b in zip(now, self.last))      # seconds, as the kernel counted them
        if wall >= self.min_seconds:
            self.last = now
            self.value = min(float(self.cores), max(0.0, (busy - own) / wall))
        return self.value


def measure_other_load(interval: float = 0.5) -> float:
    """Cores kept busy by other processes, averaged over the next `interval` seconds (sleeps that long)."""
    meter = LoadMeter()
    time.sleep(interval)
    return meter()


_METER = None


def other_load() -> float:
    """Cores kept busy by other processes since the previous call of other_load() (the first call: 0.0)."""
    global _METER
    if _METER is None:
        _METER = LoadMeter()
        return 0.0
    return _METER()


def free_cores(total: int, other: float) -> int:
    """Cores left for us when other programs keep `other` cores busy: a core counts as taken when more than
    half of it is busy. Always at least 1."""
    return max(1, min(total, total - int(other + 0.5)))


class AutoThreads:
    """The `--threads auto` policy, driven by the training loop: after every step call
    `n = auto.after_step(seconds)` and run the next step with n BLAS threads.

      warm-up   the first step (compilation, first-touch memory) is not timed;
      trial     steps alternate 1 thread / the free cores, `trial` steps each; the extra threads are kept
                only if their median step is >= `gain` times faster;
      steady    every `recheck` seconds the other programs' load is read: when they take a core, drop to
                the free cores at once; when cores come free again, run a new trial.

    `history` lists (step, threads, reason) for every decision. `clock` and `load` (cores busy elsewhere
    since the previous call) are injectable so tests can drive every transition deterministically."""

    def __init__(self, cores: int, trial: int = 3, gain: float = 1.05, recheck: float = 1.0, start: int = 1,
                 clock=time.monotonic, load=None, step: int = 0, apply=None):
        self.cores, self.trial, self.gain, self.recheck = int(cores), int(trial), float(gain), float(recheck)
        self.clock, self.apply = clock, apply     # apply(n): called whenever the count changes
        self.load = load if load is not None else LoadMeter(self.cores)
        self.threads = max(1, min(int(start), self.cores))
        self.step = step                           # steps done (a resumed run passes its step count)
        self.phase = "warmup"
        self.free = self.cores                     # free cores at the last look
        self.plan, self.times = [], {}             # trial: thread counts still to run; step times per count
        self.next_check = None
        self.history = [(step, self.threads, "start")]
        self.used = [self.threads]                 # every count a step ran with, in order of first use

    def _set(self, n: int, reason: str | None = None) -> int:
        """Use n threads from the next step on; a reason goes into the history."""
        if reason is not None:
            self.history.append((self.step, n, reason))
        if n not in self.used:
            self.used.append(n)
        if n != self.threads and self.apply is not None:
            self.apply(n)
        self.threads = n
        return n

    def _start_trial(self, free: int, reason: str) -> int:
        """Alternate `free` and 1 threads for `trial` steps each, starting with `free`."""
        self.phase, self.times = "trial", {1: [], free: []}
        self.plan = [free, 1] * self.trial
        return self._set(self.plan.pop(0), f"trial 1 vs {free}: {reason}")

    def _end_trial(self) -> int:
        """Keep the extra threads only if they made the median step >= gain times faster."""
        many = max(self.times)
        one, fast = statistics.median(self.times[1]), statistics.median(self.times[many])
        speedup = one / fast if fast > 0 else 0.0
        self.phase = "steady"
        return self._set(many if speedup >= self.gain else 1, f"trial done: {many} threads {speedup:.2f}x of 1")

    def _look(self) -> int:
        """Read the other programs' load: drop threads at once if they took cores (ending any trial that
        needs them), start a trial if cores came free. Returns the count for the next step."""
        other = self.load()
        free, was_free = free_cores(self.cores, other), self.free
        self.free = free
        wanted = max(self.times) if self.phase == "trial" else self.threads
        if wanted > free:
            self.phase = "steady"
            return self._set(free, f"busy: other programs use {other:.1f} cores")
        if self.phase == "steady" and free > was_free and free > self.threads:
            return self._start_trial(free, f"cores came free (other load {other:.1f})")
        return self.threads

    def after_step(self, seconds: float) -> int:
        """Record that the step just done (with self.threads threads) took `seconds`; return the next count."""
        self.step += 1
        now = self.clock()
        if self.phase == "warmup":                 # compilation and first-touch memory: not a measurement
            self.next_check = now + self.recheck
            other = self.load()
            self.free = free_cores(self.cores, other)
            if self.free > 1:
                return self._start_trial(self.free, "after the warm-up step")
            self.phase = "steady"
            return self._set(1, f"busy at start: other programs use {other:.1f} cores")
        if self.phase == "trial":
            self.times[self.threads].append(float(seconds))
        if now >= self.next_check:
            self.next_check = now + self.recheck
            was = self.phase
            n = self._look()
            if was != "trial" or self.phase != "trial":      # a drop, a new trial, or steady as before
                return n
        if self.phase == "trial":
            return self._set(self.plan.pop(0)) if self.plan else self._end_trial()
        return self.threads

    def summary(self) -> dict:
        """What a checkpoint records: the policy, the count in use, and every count used."""
        return {"policy": "auto", "threads": self.threads, "used": list(self.used)}


def threads_record(policy, with_history: bool = False) -> dict:
    """What a checkpoint says about the threads: {"policy": "fixed" | "auto", "threads": the count in use,
    "used": every count used}, and for auto with_history the decisions [(step, threads, reason), ...].
    The history's steps follow the machine's load, so it is kept only where the file has a clock anyway."""
    if isinstance(policy, AutoThreads):
        record = policy.summary()
        if with_history:
            record["history"] = [list(h) for h in policy.history]
        return record
    return {"policy": "fixed", "threads": int(policy), "used": [int(policy)]}


def start_auto_threads(step: int = 0) -> AutoThreads:
    """--threads auto for this process: start on 1 BLAS thread (Numba serial) and let AutoThreads change the
    BLAS count as it decides (only on a change: setting it costs a library call)."""
    set_threads(1)
    return AutoThreads(default_threads(), step=step, apply=set_blas_threads)


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
