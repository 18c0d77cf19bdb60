"""Training throughput: tinyseq (Numba and NumPy backends) against PyTorch eager, in tokens per second.

One training step = forward, softmax cross-entropy, backward, one Adam update; tokens per step = batch * n_ctx.
Each row runs the three contenders *interleaved* block by block (tinyseq-numba, tinyseq-numpy, PyTorch, then
again), so a noisy shared machine slows all of them alike, and reports the median of the timed blocks after a
warm-up. The ratio to PyTorch is paired: the median over rounds of that round's ratio. PyTorch runs in its own worker process (`python -m tinyseq.lab.bench --torch-worker`), so its thread
settings never leak into ours, and ours not into it.

FLOP ceiling. A step costs about
    6 * P_matmul * tokens                  (2 for the forward, 4 for the backward, per weight-matrix entry)
  + 6 * n_layers * n_ctx * NH*HS * tokens  (q.k scores and att @ v, each T keys per token; x3 for backward)
where P_matmul counts the entries of every weight matrix that multiplies activations (W_Q, W_K, W_V, W_O,
W_in, W_out, W_U; not the embedding tables, which are looked up, nor biases and LayerNorm gains). That is
Kaplan et al.'s C = 6N + 6 n_layer n_ctx d_attn per token. `ceiling` = the machine's float32 matmul rate
(GFLOP/s, measured here with the same thread count) / FLOPs per token; `fraction_of_ceiling` = measured
tokens/s / ceiling.

Adding a model kind (e.g. a GRU) is one entry in KINDS: how to build the tinyseq model, how many FLOPs a
token costs, and the name of a PyTorch builder in TORCH_BUILDERS (the worker side).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.threads import check_threads, default_threads, set_threads

# the folder that holds the tinyseq package: child processes import it from here even when it is not installed
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ----------------------------------------------------------------------------------------------------------
# what can be benchmarked


def _transformer_configs():
    from tinyseq.nn.transformer import TransformerConfig, paper_config
    return {
        "mess3": paper_config("mess3"),     # the published mess3 model: 4 layers, d_model 64, 1 head of 8
        "small": TransformerConfig(d_vocab=3, n_ctx=10, n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=128),
        "tiny": TransformerConfig(d_vocab=3, n_ctx=6, n_layers=1, d_model=8, n_heads=1, d_head=4, d_mlp=16),
    }


def _transformer_build(cfg, backend, seed=0):
    from tinyseq.nn.transformer import Transformer
    return Transformer(cfg, dtype=np.float32, seed=seed, backend=backend)


def _transformer_flops_per_token(cfg) -> float:
    C, NH, HS, F, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    p_matmul = cfg.n_layers * (3 * C * NH * HS + NH * HS * C + 2 * C * F) + C * V
    return 6.0 * p_matmul + 6.0 * cfg.n_layers * cfg.n_ctx * NH * HS


def _recurrent_configs(kind):
    from tinyseq.nn.recurrent import RecurrentConfig
    return {f"{kind}64": RecurrentConfig(kind=kind, d_vocab=3, n_ctx=10, hidden=64)}   # ANCHORS' nn.{RNN,GRU,LSTM}


def _recurrent_build(cfg, backend, seed=0):
    from tinyseq.nn.recurrent import Recurrent
    return Recurrent(cfg, dtype=np.float32, seed=seed, backend=backend)


def _recurrent_flops_per_token(cfg) -> float:
    from tinyseq.nn.recurrent import GATES
    GH = GATES[cfg.kind] * cfg.hidden
    p_matmul = sum(GH * ((cfg.input_width if k == 0 else cfg.hidden) + cfg.hidden) for k in range(cfg.n_layers))
    return 6.0 * (p_matmul + cfg.hidden * cfg.d_vocab)     # weight_ih, weight_hh, readout (embedding: a lookup)


@dataclass
class Kind:
    """One model family: configs by name, tinyseq builder, FLOPs per token, and the PyTorch twin's builder."""
    configs: Callable[[], dict]            # name -> config dataclass (with d_vocab, n_ctx)
    build: Callable                        # (config, backend) -> model with .forward/.backward/.params/.ops
    flops_per_token: Callable              # config -> float
    torch_builder: str                     # key of TORCH_BUILDERS
    backends: tuple = ("numba", "numpy")


KINDS: dict[str, Kind] = {
    "transformer": Kind(_transformer_configs, _transformer_build, _transformer_flops_per_token, "transformer"),
    **{k: Kind(lambda k=k: _recurrent_configs(k), _recurrent_build, _recurrent_flops_per_token, "recurrent")
       for k in ("rnn", "gru", "lstm")},
}


def available_models() -> dict[str, tuple[str, object]]:
    """model name -> (kind, config). A name is unique across kinds ("mess3", "small", ...)."""
    out = {}
    for kind_name, kind in KINDS.items():
        for name, cfg in kind.configs().items():
            out[name] = (kind_name, cfg)
    return out


# ----------------------------------------------------------------------------------------------------------
# one tinyseq training step


class TinyseqRunner:
    """One training step exactly as tinyseq.train runs it (objective forward/backward, the training loop's
    AdamW on the flat buffer, lr 1e-3, no weight decay, no clipping: what the PyTorch side's Adam does)."""

    def __init__(self, kind: Kind, cfg, backend: str, batch: int, seed: int = 0):
        from tinyseq.objectives import Objective
        from tinyseq.optim import adamw_step, adamw_step_numba

        self.model = kind.build(cfg, backend)
        self.update = adamw_step_numba if backend == "numba" else adamw_step
        self.objective = Objective()
        P = self.model.params
        self.m, self.v, self.t = np.zeros_like(P.data), np.zeros_like(P.data), 0
        rng = np.random.default_rng(seed)
        self.tokens = rng.integers(0, cfg.d_vocab, (batch, cfg.n_ctx + 1))

    def step(self):
        from tinyseq.objectives import objective_backward, objective_forward

        m, P = self.model, self.model.params
        loss, _, saved = objective_forward(m, self.tokens, self.objective, m.ops)
        P.zero_grad()
        objective_backward(m, saved, self.objective, m.ops)
        self.t += 1
        self.update(P.data, P.grad, self.m, self.v, self.t, 1e-3, 0.9, 0.999, 1e-8, 0.0)
        return loss

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------
# the PyTorch side: runs only inside the worker process


def _torch_transformer(torch, cfg):
    nn, F = torch.nn, torch.nn.functional
    C, NH, HS = cfg.d_model, cfg.n_heads, cfg.d_head
    act = F.relu if cfg.act_fn == "relu" else (lambda u: F.gelu(u, approximate="tanh"))
    norm = (lambda: nn.LayerNorm(C)) if cfg.normalization_type == "LN" else (lambda: nn.Identity())

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = norm(), norm()
            self.qkv, self.out = nn.Linear(C, 3 * NH * HS), nn.Linear(NH * HS, C)
            self.fc_in, self.fc_out = nn.Linear(C, cfg.d_mlp), nn.Linear(cfg.d_mlp, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, NH, HS).permute(2, 0, 3, 1, 4)
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)          # (B, NH, T, HS)
            x = x + self.out(z.transpose(1, 2).reshape(B, T, NH * HS))
            return x + self.fc_out(act(self.fc_in(self.ln2(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.d_vocab, C)
            self.pos = nn.Parameter(torch.randn(cfg.n_ctx, C) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layers))
            self.ln_final, self.unembed = norm(), nn.Linear(C, cfg.d_vocab)

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.unembed(self.ln_final(x))

    return Model()


def _torch_recurrent(torch, cfg):
    nn = torch.nn
    cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cfg.kind]

    class Model(nn.Module):      # nn.Embedding + fused nn.RNN/GRU/LSTM + nn.Linear, as tinyseq's Recurrent
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.d_vocab, cfg.input_width)
            self.rnn = cls(cfg.input_width, cfg.hidden, num_layers=cfg.n_layers, batch_first=True)
            self.readout = nn.Linear(cfg.hidden, cfg.d_vocab)

        def forward(self, tokens):
            return self.readout(self.rnn(self.embed(tokens))[0])

    return Model()


TORCH_BUILDERS = {"transformer": _torch_transformer, "recurrent": _torch_recurrent}


def _torch_worker() -> None:
    """Read one JSON request per line on stdin, answer one JSON line on stdout.
    request {"kind", "model", "batch", "threads", "steps"} -> {"seconds"}; {"quit": true} ends.
    request {"threads", "train": {...}} (the --end-to-end side) -> {"seconds", "cpu"} of _torch_train_run."""
    import torch
    torch.set_num_interop_threads(1)
    runners = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        torch.set_num_threads(int(req["threads"]))
        if "train" in req:
            sys.stdout.write(json.dumps(_torch_train_run(torch, **req["train"])) + "\n")
            sys.stdout.flush()
            continue
        key = (req["model"], req["batch"])
        if key not in runners:
            kind_name, cfg = available_models()[req["model"]]
            torch.manual_seed(0)
            model = TORCH_BUILDERS[KINDS[kind_name].torch_builder](torch, cfg)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            tokens = torch.randint(0, cfg.d_vocab, (req["batch"], cfg.n_ctx + 1))
            runners[key] = (model, opt, tokens[:, :-1], tokens[:, 1:].reshape(-1), cfg.d_vocab)
        model, opt, x, y, V = runners[key]
        t0 = time.perf_counter()
        for _ in range(int(req["steps"])):
            loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, V), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sys.stdout.write(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
        sys.stdout.flush()


def _torch_train_run(torch, process, batch, warm, steps, lr, warmup, clip, seed=0) -> dict:
    """Wall and CPU seconds of PyTorch training steps warm+1 .. warm+steps of a fresh published transformer for
    `process`, the loop `tinyseq train` runs: batches pre-sampled from the process (before the clock starts), forward,
    cross-entropy, backward, clip_grad_norm_, AdamW with warmup + cosine, the loss read back each step."""
    from tinyseq.nn.transformer import paper_config
    from tinyseq.processes import parse_process, sample

    cfg, total = paper_config(process), warm + steps
    torch.manual_seed(seed)
    model = _torch_transformer(torch, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tokens = torch.from_numpy(sample(parse_process(process), total * batch, cfg.n_ctx + 1,
                                     np.random.default_rng(seed))).reshape(total, batch, cfg.n_ctx + 1)
    t0 = cpu0 = 0.0
    for i in range(total):
        if i == warm:                                     # steps 1..warm: allocator and caches warm up
            t0, cpu0 = time.perf_counter(), time.process_time()
        for group in opt.param_groups:                    # tinyseq's schedule: linear warmup, cosine to 0
            group["lr"] = lr * min(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * i / total))
        x, y = tokens[i, :, :-1], tokens[i, :, 1:]
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, cfg.d_vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        loss.item()                                       # what a training loop logs
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}


class TorchWorker:
    """A PyTorch process that times steps on request (None when torch is not importable)."""

    def __init__(self, threads: int):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyseq.lab.bench", "--torch-worker"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker died")
        return json.loads(line)

    def run(self, model, batch, threads, steps) -> float:
        """Seconds of `steps` training steps on one fixed batch (the step-only rows)."""
        return self._ask(dict(model=model, batch=batch, threads=threads, steps=steps))["seconds"]

    def train(self, threads, **run) -> dict:
        """{"seconds", "cpu"} of _torch_train_run(**run): the --end-to-end side."""
        return self._ask(dict(threads=threads, train=run))

    def close(self):
        try:
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 (a dead worker is already closed)
            self.proc.kill()


def torch_available() -> bool:
    try:
        import importlib.util
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------------------
# machine facts


def matmul_gflops(threads: int, n: int = 512, seconds: float = 0.5) -> float:
    """float32 (n, n) @ (n, n) rate with `threads` BLAS threads: the machine's matmul ceiling."""
    set_threads(threads)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    rates = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        rates.append(2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return float(np.median(rates))


_COMPILE_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
from tinyseq.nn.transformer import Transformer, TransformerConfig
for act in ("relu", "gelu"):
    for dtype in (np.float32, np.float64):
        m = Transformer(TransformerConfig(n_layers=1, d_model=8, n_heads=1, d_head=4, d_mlp=8, act_fn=act),
                        dtype=dtype, backend="numba")
        x = np.zeros((2, 5), dtype=np.int64)
        logits, cache = m.forward(x)
        loss, probs = m.ops.cross_entropy_forward(logits, x)
        m.backward(m.ops.cross_entropy_backward(probs, x), cache)
        m.ops.embedding_backward(np.zeros((3, 8), dtype), np.zeros((2, 5, 8), dtype), x)
print(time.perf_counter() - t0)
"""


def compile_times() -> dict:
    """Seconds to import tinyseq and run one step of every Numba kernel (float32 and float64), in a fresh
    process: `cold` with an empty Numba cache (everything compiles), `warm` from the cache the cold run wrote."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="tinyseq-numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir,
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for label in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"compile-time probe failed: {res.stderr.strip().splitlines()[-1:]}")
            out[label] = float(res.stdout.strip().splitlines()[-1])
    return out


def sampling_throughput(process="mess3", batch=4096, length=11, blocks=7, quick=False) -> dict:
    """Tokens/s of process sampling on one thread, Numba kernel and NumPy reference, medians of `blocks`."""
    from tinyseq.processes import parse_process, sample

    proc = parse_process(process)
    rng = np.random.default_rng(0)
    blocks = 2 if quick else blocks
    out = {"process": proc.label, "batch": batch, "length": length}
    for backend in ("numba", "numpy"):
        sample(proc, batch, length, rng, backend=backend)            # compile / warm up
        times = []
        for _ in range(blocks):
            t0 = time.perf_counter()
            sample(proc, batch, length, rng, backend=backend)
            times.append(time.perf_counter() - t0)
        out[f"{backend}_tokens_per_s"] = round(batch * length / float(np.median(times)))
    return out


# ----------------------------------------------------------------------------------------------------------
# the benchmark


def run(models=("mess3", "small"), batches=(64, 256), threads=(1, 2), backends=("numba", "numpy"),
        with_torch=True, quick=False, blocks=None, block_seconds=None, compile_probe=True) -> dict:
    """Rows of tokens/s for every model x batch x threads; PyTorch alongside when importable."""
    known = available_models()
    for name in models:
        if name not in known:
            raise TinyseqError(f"unknown bench model {name!r}: use one of {', '.join(known)}")
    for n in threads:
        check_threads(n)
    for b in batches:
        if b < 1:
            raise TinyseqError(f"--batches must be positive, got {b}")
    blocks = blocks or (2 if quick else 7)
    block_seconds = block_seconds or (0.05 if quick else 0.4)
    with_torch = with_torch and torch_available()

    result = {"machine": {"cores": os.cpu_count(), "numpy": np.__version__, "gflops_f32": {}},
              "protocol": {"blocks": blocks, "block_seconds": block_seconds,
                           "step": "forward + cross-entropy + backward + Adam",
                           "flops_per_token": "6 * P_matmul + 6 * n_layers * n_ctx * n_heads * d_head"},
              "rows": []}
    try:
        import numba
        result["machine"]["numba"] = numba.__version__
    except ImportError:
        pass
    for n in threads:
        result["machine"]["gflops_f32"][str(n)] = round(matmul_gflops(n, seconds=0.1 if quick else 0.5), 2)

    workers = {}
    try:
        for n in threads:
            if with_torch:
                workers[n] = TorchWorker(n)
            for name in models:
                kind_name, cfg = known[name]
                kind = KINDS[kind_name]
                for batch in batches:
                    result["rows"].append(_bench_row(name, kind_name, kind, cfg, batch, n, backends,
                                                     workers.get(n), blocks, block_seconds, result))
    finally:
        for w in workers.values():
            w.close()
        set_threads(default_threads())
    set_threads(1)
    result["sampling"] = sampling_throughput(quick=quick)
    set_threads(default_threads())
    if compile_probe and "numba" in backends:
        result["compile_seconds"] = compile_times()
    return result


def _bench_row(name, kind_name, kind, cfg, batch, threads, backends, worker, blocks, block_seconds, result):
    set_threads(threads)
    tokens_per_step = batch * cfg.n_ctx
    contenders = {}
    for backend in backends:
        if backend in kind.backends:
            contenders[f"tinyseq_{backend}"] = TinyseqRunner(kind, cfg, backend, batch).run
    if worker is not None:
        contenders["torch"] = lambda steps: worker.run(name, batch, threads, steps)
    # warm-up (compiles, caches, allocator) and a step count that makes one block about block_seconds long
    steps = {}
    for label, run_steps in contenders.items():
        run_steps(2)
        per_step = run_steps(3) / 3
        steps[label] = max(2, int(block_seconds / max(per_step, 1e-6)))
    samples = {label: [] for label in contenders}
    for _ in range(blocks):                     # interleaved: every contender once per round
        for label, run_steps in contenders.items():
            samples[label].append(steps[label] * tokens_per_step / run_steps(steps[label]))
    flops = kind.flops_per_token(cfg)
    ceiling = result["machine"]["gflops_f32"][str(threads)] * 1e9 / flops
    row = {"model": name, "kind": kind_name, "batch": batch, "threads": threads,
           "flops_per_token": flops, "ceiling_tokens_per_s": round(ceiling)}
    for label, values in samples.items():
        med = float(np.median(values))
        row[label] = {"tokens_per_s": round(med), "blocks": [round(v) for v in values],
                      "fraction_of_ceiling": float(f"{med / ceiling:.3g}")}
    if "torch" in samples:
        for backend in backends:
            if f"tinyseq_{backend}" in row:
                # paired: the median over rounds of this round's ratio (one round shares the machine's load)
                label = f"tinyseq_{backend}"
                row[f"ratio_{backend}_vs_torch"] = round(float(np.median(
                    np.array(samples[label]) / np.array(samples["torch"]))), 2)
    return row


def format_table(result: dict) -> str:
    """The rows as a Markdown table (what BENCHMARKS.md shows)."""
    head = ["model", "batch", "threads", "tinyseq numba tok/s", "tinyseq numpy tok/s", "PyTorch tok/s",
            "numba / PyTorch", "numba % of ceiling", "ceiling tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        def tps(label):
            return f"{r[label]['tokens_per_s']:,}" if label in r else "-"
        frac = f"{100 * r['tinyseq_numba']['fraction_of_ceiling']:.3g}%" if "tinyseq_numba" in r else "-"
        ratio = f"{r['ratio_numba_vs_torch']:.2f}x" if "ratio_numba_vs_torch" in r else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {tps('tinyseq_numba')} | "
                     f"{tps('tinyseq_numpy')} | {tps('torch')} | {ratio} | {frac} | {r['ceiling_tokens_per_s']:,} |")
    m = result["machine"]
    lines.append("")
    lines.append("float32 matmul GFLOP/s: " + ", ".join(f"{k} thread(s) {v}" for k, v in m["gflops_f32"].items()))
    if "sampling" in result:
        sm = result["sampling"]
        lines.append(f"Sampling {sm['process']} (batch {sm['batch']} x {sm['length']}, 1 thread): "
                     f"Numba {sm['numba_tokens_per_s'] / 1e6:.1f}M tokens/s, NumPy {sm['numpy_tokens_per_s'] / 1e6:.1f}M")
    if "compile_seconds" in result:
        c = result["compile_seconds"]
        lines.append(f"Numba compile (import + first step of every kernel): cold {c['cold']:.1f} s, "
                     f"warm (cached) {c['warm']:.1f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# --busy: the thread policy end to end, on an idle machine and with one core kept busy by another program
#
# Each run is the command a user types, `tinyseq train --process mess3 --time T --threads X` in a fresh
# process (start-up, sampling and evaluation included), and its rate is steps / seconds from its summary.
# The thread settings are interleaved within each repeat, so a shared machine's changing load falls on all
# of them alike; the table shows medians. "busy" = a child process of ours spinning `while True: pass`,
# started before the runs and always stopped afterwards (also on Ctrl-C or an error).

# the busy loop stops by itself if we die without stopping it (its parent changes)
BUSY_LOOP = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
             "    for _ in range(1_000_000):\n        pass\n")
BUSY_PRESETS = {"default": [], "paper": ["--preset", "paper"]}


class BusyCore:
    """`with BusyCore():` one core kept busy by a child process for the duration of the block."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        return False


def _cli_command() -> list[str]:
    """How to run the tinyseq CLI in a child process (works from a checkout and when installed)."""
    return [sys.executable, "-c", "import sys, cli; cli.main(sys.argv[1:])"]


def run_train(args: list[str]) -> dict:
    """Run `tinyseq train ARGS --out TMP --json` in a fresh process: its summary, the wall seconds from
    launch to exit (start-up included), its CPU seconds (user + sys, all its threads) and the other programs'
    load meanwhile (cores, from tinyseq.threads)."""
    import resource

    from tinyseq.threads import _proc_stat

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="tinyseq-bench-") as out:
        cmd = [*_cli_command(), "train", *args, "--out", out, "--json"]
        before = _proc_stat(), resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            stdout, stderr = proc.communicate()
        finally:
            if proc.poll() is None:             # Ctrl-C or an error while waiting: never leave it running
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - t0
        after = _proc_stat(), resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
        other = _other_load(before, after)
        cpu = sum(getattr(after[1], f) - getattr(before[1], f) for f in ("ru_utime", "ru_stime"))
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["no message"])[-1]
        raise TinyseqError(f"tinyseq {' '.join(cmd[3:])} failed: {last}")
    return {"summary": json.loads(stdout), "wall": wall, "cpu": cpu, "other_load": other}


def train_rate(args: list[str], threads: str, seconds: float) -> dict:
    """Run `tinyseq train ARGS --time seconds --threads threads` in a fresh process: its steps per second,
    the thread counts it used and the other programs' load meanwhile (cores, from tinyseq.threads)."""
    res = run_train([*args, "--time", f"{seconds:g}", "--threads", threads])
    summary = res["summary"]
    return {"steps_per_s": summary["steps"] / summary["seconds"], "threads": summary.get("threads"),
            "other_load": res["other_load"]}


def _other_load(before, after) -> float:
    """Cores busy outside this process and the train child it waited for, between two readings of
    (/proc/stat, children's rusage, own CPU time); 0.0 without /proc/stat."""
    if before[0] is None or after[0] is None:
        return 0.0
    busy, wall = after[0][0] - before[0][0], after[0][1] - before[0][1]
    ours = sum(getattr(after[1], f) - getattr(before[1], f) for f in ("ru_utime", "ru_stime")) + after[2] - before[2]
    return max(0.0, (busy - ours) / wall) if wall > 0 else 0.0


def busy_comparison(seconds: float = 6.0, repeats: int = 3, presets=("default", "paper"), process="mess3",
                    callback=None) -> dict:
    """steps/s of `train --time seconds` with --threads 1, all cores and auto, idle and with a busy core:
    medians over `repeats` interleaved rounds, and auto / the best explicit count."""
    from tinyseq.threads import default_threads

    if seconds <= 0 or repeats < 1:
        raise TinyseqError(f"--busy needs a positive --busy-time and --repeats, got {seconds:g} and {repeats}")
    for p in presets:
        if p not in BUSY_PRESETS:
            raise TinyseqError(f"unknown preset {p!r} for --busy: use {', '.join(BUSY_PRESETS)}")
    settings = ["1"] + ([str(default_threads())] if default_threads() > 1 else []) + ["auto"]
    rows = []
    for load in ("idle", "busy"):
        with BusyCore() if load == "busy" else contextlib.nullcontext():
            for preset in presets:
                runs = {t: [] for t in settings}
                for r in range(repeats):
                    for t in settings:
                        runs[t].append(train_rate(["--process", process, *BUSY_PRESETS[preset]], t, seconds))
                        if callback:
                            callback({**runs[t][-1], "load": load, "preset": preset, "repeat": r, "setting": t})
                rows.append(_busy_row(load, preset, runs))
    return {"process": process, "seconds": seconds, "repeats": repeats, "cores": default_threads(), "rows": rows,
            "command": f"tinyseq train --process {process} [--preset paper] --time {seconds:g} --threads X"}


def _busy_row(load: str, preset: str, runs: dict) -> dict:
    """Medians of one load x preset: steps/s per setting; auto / the best explicit setting (best by median),
    paired like the PyTorch ratio: the median over repeats of that repeat's ratio; what auto ended on."""
    rate = {t: np.array([r["steps_per_s"] for r in rs]) for t, rs in runs.items()}
    med = {t: float(np.median(v)) for t, v in rate.items()}
    best = max((t for t in med if t != "auto"), key=med.get)
    chosen = [r["threads"]["threads"] if r["threads"] else None for r in runs["auto"]]
    return {"load": load, "preset": preset, "steps_per_s": {t: round(v, 2) for t, v in med.items()},
            "runs": {t: [round(r["steps_per_s"], 2) for r in rs] for t, rs in runs.items()},
            "best": best, "auto_vs_best": round(float(np.median(rate["auto"] / rate[best])), 3),
            "auto_final_threads": chosen,
            "other_load": round(float(np.median([r["other_load"] for rs in runs.values() for r in rs])), 2)}


def format_busy(result: dict) -> str:
    """The --busy rows as a Markdown table."""
    settings = list(result["rows"][0]["steps_per_s"])
    head = ["machine", "model", *[f"--threads {t} steps/s" for t in settings], "auto / best",
            "auto ended on", "other load (cores)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        load = "no busy loop" if r["load"] == "idle" else "busy loop on one core"
        model = "default" if r["preset"] == "default" else "--preset paper"
        lines.append(f"| {load} | {model} | " + " | ".join(f"{r['steps_per_s'][t]:.1f}" for t in settings)
                     + f" | {r['auto_vs_best']:.2f}x | {', '.join(str(n) for n in r['auto_final_threads'])} | "
                     f"{r['other_load']:.2f} |")
    lines.append("")
    lines.append(f"{result['command']}; {result['seconds']:g} s per run, medians of {result['repeats']} "
                 f"interleaved repeats (auto / best: median of the per-repeat ratios), {result['cores']} cores; other load = cores busy outside the run "
                 f"(the busy loop included)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# --end-to-end: the `train` command as a user runs it, against PyTorch's training loop
#
# tinyseq: `tinyseq train --preset paper --process P --batch B --threads N --steps S` in a fresh process, at a
# short and a long S. The rate is (long - short) steps / (wall_long - wall_short): start-up, loading the compiled
# kernels, building the held-out set, the first steps and the final evaluation and checkpoint cancel, and what
# is left is the steady state with everything the command does per step: sampling, the progress events and the
# evaluation every eval_every steps. PyTorch: the same model and training loop (AdamW, clipping, the schedule)
# on batches sampled before its clock starts, timed over the same steps short+1..long in its worker process.
# Each repeat runs short, long and PyTorch back to back (interleaved, as the step-only rows); the table shows
# medians and the median of the per-repeat ratios.


def end_to_end(batches=(64, 256), threads=(1, 2), steps=(50, 550), repeats=3, process="mess3",
               callback=None) -> dict:
    """tokens/s of the running train command (rate between a short and a long run) and of PyTorch."""
    from tinyseq.nn.transformer import paper_config

    paper_config(process)                        # one-line error for a process without a published model
    for n in threads:
        check_threads(n)
    short, long = steps
    if not 1 <= short < long or repeats < 1 or min(batches) < 1:
        raise TinyseqError(f"--end-to-end needs positive batches, 1 <= short < long steps and --repeats >= 1, "
                           f"got batches {list(batches)}, steps {short},{long}, repeats {repeats}")
    # one untimed run first: it compiles what the Numba cache lacks, which would otherwise land in one timed run
    run_train(["--preset", "paper", "--process", process, "--steps", "1", "--threads", "1"])
    rows = []
    for n in threads:
        worker = TorchWorker(n) if torch_available() else None
        try:
            for batch in batches:
                rows.append(_e2e_row(process, batch, n, short, long, repeats, worker, callback))
        finally:
            if worker is not None:
                worker.close()
    return {"process": process, "steps": [short, long], "repeats": repeats, "rows": rows,
            "command": f"tinyseq train --preset paper --process {process} --batch B --threads N --steps S"}


def _e2e_row(process, batch, threads, short, long, repeats, worker, callback) -> dict:
    """One batch x threads row: per repeat a short run, a long run and PyTorch; medians and paired ratios.
    Rates are tokens/s by the wall clock, and by CPU time (user + sys of all threads: steadier on a busy
    machine, but with 2 threads it counts the work, not the waiting)."""
    from tinyseq.nn.transformer import paper_config
    from tinyseq.train import PAPER_TRAIN, TrainConfig

    n_ctx, train = paper_config(process).n_ctx, TrainConfig(**PAPER_TRAIN.get(process, {}))
    args = ["--preset", "paper", "--process", process, "--batch", str(batch), "--threads", str(threads)]
    tokens = (long - short) * batch * n_ctx
    rates = {k: [] for k in ("tinyseq", "tinyseq_cpu", "tinyseq_steps_only", "torch", "torch_cpu")}
    for r in range(repeats):
        a, b = run_train([*args, "--steps", str(short)]), run_train([*args, "--steps", str(long)])
        rates["tinyseq"].append(tokens / (b["wall"] - a["wall"]))
        rates["tinyseq_cpu"].append(tokens / (b["cpu"] - a["cpu"]))
        rates["tinyseq_steps_only"].append(b["summary"]["tokens_per_s"])     # time inside train_step only
        if worker is not None:
            t = worker.train(threads, process=process, batch=batch, warm=short, steps=long - short,
                             lr=train.lr, warmup=train.warmup, clip=train.clip)
            rates["torch"].append(tokens / t["seconds"])
            rates["torch_cpu"].append(tokens / t["cpu"])
        if callback:
            callback({"batch": batch, "threads": threads, "repeat": r, "other_load": b["other_load"],
                      **{k: v[-1] for k, v in rates.items() if v}})
    rates = {k: np.array(v) for k, v in rates.items() if v}
    row = {"batch": batch, "threads": threads, **{k: round(float(np.median(v))) for k, v in rates.items()},
           "runs": {k: [round(x) for x in v] for k, v in rates.items()}}
    if "torch" in rates:          # paired: the median over repeats of that repeat's ratio
        row["ratio_vs_torch"] = round(float(np.median(rates["tinyseq"] / rates["torch"])), 2)
        row["ratio_cpu_vs_torch"] = round(float(np.median(rates["tinyseq_cpu"] / rates["torch_cpu"])), 2)
    return row


def format_end_to_end(result: dict) -> str:
    """The --end-to-end rows as a Markdown table."""
    head = ["batch", "threads", "tinyseq train tok/s", "PyTorch tok/s", "tinyseq / PyTorch",
            "by CPU time", "tinyseq train_step alone tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        torch_rate = f"{r['torch']:,}" if "torch" in r else "-"
        ratio = f"{r['ratio_vs_torch']:.2f}x" if "ratio_vs_torch" in r else "-"
        ratio_cpu = f"{r['ratio_cpu_vs_torch']:.2f}x" if "ratio_cpu_vs_torch" in r else "-"
        lines.append(f"| {r['batch']} | {r['threads']} | {r['tinyseq']:,} | {torch_rate} | {ratio} | {ratio_cpu} | "
                     f"{r['tinyseq_steps_only']:,} |")
    short, long = result["steps"]
    lines.append("")
    lines.append(f"{result['command']}: rate between S = {short} and S = {long} (wall clock of the whole "
                 f"command); PyTorch: the same loop on pre-sampled batches, steps {short + 1}..{long}; medians of "
                 f"{result['repeats']} interleaved repeats, ratios paired (median of the per-repeat ratios); "
                 f"by CPU time: the same with user + sys seconds instead of the wall clock")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--torch-worker"]:
        _torch_worker()
