"""--threads auto (tinyseq.threads.AutoThreads): every transition, driven by a fake clock and a fake load, so
the decisions are exact and no test depends on this machine's speed or load; plus the load arithmetic."""
import numpy as np
import pytest

from tinyseq import threads
from tinyseq.threads import AutoThreads, LoadMeter, free_cores


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Load:
    """Other programs' busy cores, set by the test; counts how often the policy looked."""

    def __init__(self, value=0.0):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def make(cores=2, load=0.0, **kw):
    clock, other = Clock(), Load(load)
    return AutoThreads(cores, clock=clock, load=other, **kw), clock, other


def steps(auto, clock, seconds_for, n, dt=0.01):
    """n steps, each lasting seconds_for[threads in use]; the clock advances dt per step. Returns the counts
    the policy asked for after each step."""
    out = []
    for _ in range(n):
        clock.now += dt
        out.append(auto.after_step(seconds_for[auto.threads]))
    return out


@pytest.mark.parametrize("total,other,free", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1),
                                              (4, 1.2, 3), (4, 1.6, 2), (1, 0.0, 1), (8, 0.0, 8)])
def test_free_cores(total, other, free):
    assert free_cores(total, other) == free


def test_idle_trial_keeps_two_threads_when_they_pay():
    auto, clock, _ = make()
    # warm-up, then 1 vs 2 alternating three steps each, starting with 2; 2 threads are 1.25x faster
    got = steps(auto, clock, {1: 1.0, 2: 0.8}, 7)
    assert got == [2, 1, 2, 1, 2, 1, 2]
    assert auto.phase == "steady" and auto.threads == 2
    assert auto.history[-1][:2] == (7, 2) and "1.25x" in auto.history[-1][2]
    assert steps(auto, clock, {1: 1.0, 2: 0.8}, 5) == [2] * 5


def test_idle_trial_stays_on_one_thread_below_the_gain():
    auto, clock, _ = make()
    got = steps(auto, clock, {1: 1.0, 2: 0.97}, 7)          # 3% faster: not worth it (gain 1.05)
    assert got == [2, 1, 2, 1, 2, 1, 1]
    assert auto.threads == 1 and "1.03x" in auto.history[-1][2]


def test_trial_uses_medians_so_one_slow_step_does_not_decide():
    auto, clock, _ = make()
    auto.after_step(5.0)                                     # warm-up: ignored however long
    for s in [0.5, 1.0, 9.0, 1.0, 0.5, 1.0]:                 # 2 threads: 0.5, 9.0 (an outlier), 0.5
        auto.after_step(s)
    assert auto.threads == 2 and "2.00x" in auto.history[-1][2]


def test_busy_at_start_skips_the_trial():
    auto, clock, load = make(load=1.0)
    assert steps(auto, clock, {1: 1.0, 2: 0.1}, 4) == [1, 1, 1, 1]
    assert auto.phase == "steady" and auto.history[-1][:2] == (1, 1) and "busy" in auto.history[-1][2]


def test_busy_core_appears_drops_to_one_at_the_next_look():
    auto, clock, load = make(recheck=1.0)
    steps(auto, clock, {1: 1.0, 2: 0.5}, 7)
    assert auto.threads == 2
    load.value = 1.0                                         # another program takes a core
    assert steps(auto, clock, {1: 1.0, 2: 0.5}, 2, dt=0.3) == [2, 2]   # no look before the recheck time
    assert steps(auto, clock, {1: 1.0, 2: 0.5}, 1, dt=0.5) == [1]
    assert "busy" in auto.history[-1][2]
    assert steps(auto, clock, {1: 1.0, 2: 0.5}, 5, dt=1.0) == [1] * 5  # still busy: stays, no new trial


def test_busy_during_the_trial_ends_it_on_one_thread():
    auto, clock, load = make(recheck=1.0)
    steps(auto, clock, {1: 1.0, 2: 0.5}, 2)                  # warm-up, one trial step
    assert auto.phase == "trial"
    load.value = 1.5
    assert steps(auto, clock, {1: 1.0, 2: 0.5}, 1, dt=2.0) == [1]
    assert auto.phase == "steady" and auto.plan != [] and "busy" in auto.history[-1][2]


def test_cores_coming_free_start_a_new_trial():
    auto, clock, load = make(load=1.0, recheck=1.0)
    steps(auto, clock, {1: 1.0, 2: 0.5}, 3, dt=1.0)
    assert auto.threads == 1
    load.value = 0.0
    got = steps(auto, clock, {1: 1.0, 2: 0.5}, 4, dt=0.25)
    assert got == [1, 1, 1, 2]                               # the look 1 s after the last one starts the trial
    got = steps(auto, clock, {1: 1.0, 2: 0.5}, 6, dt=0.25)
    assert got == [1, 2, 1, 2, 1, 2]
    assert auto.phase == "steady" and "trial done" in auto.history[-1][2]


def test_idle_recheck_does_not_repeat_a_trial_it_lost():
    auto, clock, load = make(recheck=1.0)
    steps(auto, clock, {1: 1.0, 2: 1.0}, 7)
    n_history = len(auto.history)
    assert steps(auto, clock, {1: 1.0, 2: 1.0}, 10, dt=1.0) == [1] * 10
    assert len(auto.history) == n_history and load.calls == 1 + 10


def test_one_core_never_tries_more():
    auto, clock, _ = make(cores=1)
    assert steps(auto, clock, {1: 1.0}, 10, dt=1.0) == [1] * 10


def test_summary_lists_every_count_used():
    auto, clock, _ = make(cores=4, start=1)
    steps(auto, clock, {1: 1.0, 4: 0.5}, 7)
    assert auto.summary() == {"policy": "auto", "threads": 4, "used": [1, 4]}


# ---------------------------------------------------------------------------------------------------------
# the load arithmetic, from a fake /proc/stat
def write_stat(path, cpus):
    """cpus: per core (user, system, idle) in clock ticks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {u} 0 {s} {idle} 0 0 0 0 0 0" for i, (u, s, idle) in enumerate(cpus)]
    path.write_text("\n".join(lines) + "\nintr 0\n")


def test_proc_stat_sums_busy_ticks_over_our_cores(tmp_path, monkeypatch):
    import os

    hz = os.sysconf("SC_CLK_TCK")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    stat = tmp_path / "stat"
    write_stat(stat, [(3 * hz, 1 * hz, 6 * hz), (2 * hz, 0, 8 * hz), (10 * hz, 0, 0)])   # cpu2 is not ours
    busy, wall = threads._proc_stat(str(stat))
    assert busy == pytest.approx(6.0) and wall == pytest.approx(10.0)
    assert threads._proc_stat(str(tmp_path / "missing")) is None


def test_load_meter_subtracts_our_own_cpu_time(monkeypatch):
    readings = iter([(100.0, 50.0, 10.0), (102.5, 51.0, 11.0), (102.51, 51.01, 11.0), (104.0, 52.0, 11.0)])
    monkeypatch.setattr(LoadMeter, "_read", staticmethod(lambda: next(readings)))
    meter = LoadMeter(cores=2)
    assert meter() == pytest.approx(1.5)     # 2.5 busy core-seconds in 1 s, 1.0 of them ours
    assert meter() == pytest.approx(1.5)     # 10 ms later: too short to measure, the previous value
    assert meter() == pytest.approx(1.5)     # 1.5 busy, none ours, over 1 s since the last real reading


def test_load_meter_without_proc_stat_assumes_idle(monkeypatch):
    monkeypatch.setattr(threads, "_proc_stat", lambda path="/proc/stat": None)
    meter = LoadMeter(cores=2)
    assert meter() == 0.0


# ---------------------------------------------------------------------------------------------------------
# the count changes the numbers at most by rounding (on some BLAS builds not at all), so auto may switch mid-run
def _short_run(threads, tmp_path=None):
    """12 steps of the default mess3 transformer at batch 256 (products large enough for BLAS to split them)."""
    from tinyseq.models import build_model
    from tinyseq.processes import parse_process
    from tinyseq.train import TrainConfig, train

    proc = parse_process("mess3")
    model = build_model("transformer", {}, vocab=3, dtype="float32", seed=2, backend="numba")
    out = None if tmp_path is None else str(tmp_path)
    train(proc, model, TrainConfig(steps=12, warmup=2, eval_every=0, eval_sequences=64, seed=2, threads=threads),
          out=out)
    return model.params.data.copy()


def _blas_count_changes_bits() -> bool:
    """Does this machine's BLAS round a float32 product of the training's shape differently on 1 and 2 threads?
    (OpenBLAS 0.3.31 does on an AMD EPYC here, in the last bits; on an earlier machine it did not.)"""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2560, 32), dtype=np.float32), rng.standard_normal((32, 96), dtype=np.float32)
    threads.set_blas_threads(1)
    one = x @ w
    threads.set_blas_threads(2)
    return not np.array_equal(one, x @ w)


def _same(a, b, exact: bool) -> None:
    """The same bytes where the BLAS is count-independent; else the same numbers to float32 rounding."""
    if exact:
        assert a.tobytes() == b.tobytes()
    else:
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_one_two_and_auto_switching_mid_run_give_the_same_tensors(monkeypatch, tmp_path):
    # where the BLAS rounds differently on 2 threads, each count alone is still deterministic (README, "Threads")
    if threads.default_threads() < 2:
        pytest.skip("needs 2 cores")
    exact = not _blas_count_changes_bits()
    one, two = _short_run(1), _short_run(2)
    assert one.tobytes() == _short_run(1).tobytes() and two.tobytes() == _short_run(2).tobytes()
    # auto forced to switch: an idle fake load and gain 0, so it alternates 2 / 1 in the trial, then keeps 2
    made = []

    def forced(step=0):
        threads.set_threads(1)
        auto = AutoThreads(2, step=step, gain=0.0, load=Load(0.0), apply=threads.set_blas_threads)
        made.append(auto)
        return auto

    monkeypatch.setattr(threads, "start_auto_threads", forced)
    auto = _short_run("auto", tmp_path)
    assert made[0].used == [1, 2] and made[0].threads == 2
    _same(one, two, exact)
    _same(one, auto, exact)
    from tinyseq.checkpoint import load

    record = load(str(tmp_path / "model.npz")).meta["state"]["threads"]
    assert record == {"policy": "auto", "threads": 2, "used": [1, 2]}      # a --steps run: no history


@pytest.mark.parametrize("policy", [1, "auto"])
def test_resume_keeps_the_recorded_policy(tmp_path, policy):
    from tinyseq.train import load_run

    _short_run(policy, tmp_path)
    _, _, config, _ = load_run(str(tmp_path / "model.npz"))
    assert config.threads == policy


@pytest.mark.parametrize("value,expected", [("auto", "auto"), (None, None), ("1", 1), (1, 1)])
def test_parse_threads(value, expected):
    assert threads.parse_threads(value) == expected


@pytest.mark.parametrize("value", ["0", "x", "-1", "1.5", 0, 10 ** 6])
def test_parse_threads_refuses(value):
    from tinyseq.errors import TinyseqError

    with pytest.raises(TinyseqError, match="--threads"):
        threads.parse_threads(value)
