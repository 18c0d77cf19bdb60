"""Bad input everywhere, nothing lost, same bytes twice (issue #7, items 1-3), through the command line.

Every bad-input case runs `tinyseq ...` and must end with exit code 2, exactly one line on stderr starting
with "tinyseq", no traceback, nothing on stdout, and every file that existed before (a `keep.txt` with known
bytes in the case's directory, the run directories it points at, the shared checkpoints) byte-identical
afterwards. The whole battery runs in this process through click's runner (conftest.cli_in_process: a
subprocess per case cost about 3 minutes of Numba imports); a sample of every kind of refusal also runs as a
real `python cli.py` process, where the interpreter itself would print a traceback.

Then: Ctrl-C during `train` / `demo` saves, prints how to continue and exits 130, and the resumed run ends
with the same tensors as an uninterrupted one; the same command twice gives the same bytes.
"""
import concurrent.futures
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pytest

import tinyseq
from tinyseq.checkpoint import CONFIG_KEY, save
from tinyseq.models import build_model
from tinyseq.train import TrainConfig, train

from conftest import cli_in_process
from test_cli import ROOT, assert_one_line_error

TINY = {"d_model": 8, "n_layers": 1, "n_heads": 1, "d_head": 4, "d_mlp": 16, "n_ctx": 5}
TINY_FLAGS = ["--d-model", "8", "--n-layers", "1", "--n-heads", "1", "--d-head", "4", "--d-mlp", "16",
              "--n-ctx", "5"]
KEEP = b"known bytes \x00\x01 that no failed command may touch\n"
HAS_COMPARE = "compare" in cli_in_process(["--help"]).stdout


def _tree(folder):
    """{relative path: sha256} of every file under folder."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ----------------------------------------------------------------------------------------------------------
# the files the cases point at, built once in this process
def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _npz_without(src, dst, drop=(), replace=None):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    arrays.update(replace or {})
    np.savez(dst, **arrays)
    return dst


def _process_json(folder, name, obj, raw=None):
    path = os.path.join(folder, name)
    _write_bytes(path, raw if raw is not None else json.dumps(obj).encode())
    return path


def build_files(art):
    """Every file a case points at, in the folder art: {placeholder: path}."""
    f = {"art": art}
    _checkpoint_files(art, f)
    _process_files(art, f)
    _run_files(art, f)
    return f


def _checkpoint_files(art, f):
    """Checkpoints good and broken, and paths that are not checkpoints, added to f."""
    mess3, z1r = tinyseq.process("mess3"), tinyseq.process("z1r")
    m3 = build_model("transformer", TINY, mess3.vocab, seed=0)
    f["ck3"] = save(os.path.join(art, "ck3.npz"), m3, process_spec=mess3.to_spec(), meta={"process": mess3.label})
    m2 = build_model("transformer", TINY, z1r.vocab, seed=0)
    f["ck2"] = save(os.path.join(art, "ck2.npz"), m2, process_spec=z1r.to_spec(), meta={"process": z1r.label})
    f["noproc"] = save(os.path.join(art, "noproc.npz"), m3)
    good = open(f["ck3"], "rb").read()
    f["truncated"] = _write_bytes(os.path.join(art, "truncated.npz"), good[: len(good) // 2])
    f["empty"] = _write_bytes(os.path.join(art, "empty.npz"), b"")
    f["random"] = _write_bytes(os.path.join(art, "random.npz"), np.random.default_rng(0).bytes(4000))
    f["flipped"] = _write_bytes(os.path.join(art, "flipped.npz"),
                                good[:200] + bytes(b ^ 0xFF for b in good[200:1200]) + good[1200:])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not arrays")
    f["plainzip"] = _write_bytes(os.path.join(art, "plainzip.npz"), buf.getvalue())
    f["pickled"] = _npz_without(f["ck3"], os.path.join(art, "pickled.npz"),
                                replace={"evil": np.array([{"a": 1}, None], dtype=object)})
    f["notensor"] = _npz_without(f["ck3"], os.path.join(art, "notensor.npz"), drop=("blocks.0.attn.W_Q",))
    f["misshaped"] = _npz_without(f["ck3"], os.path.join(art, "misshaped.npz"),
                                  replace={"embed.W_E": np.zeros((3, 9), np.float32)})
    f["nantensor"] = _npz_without(f["ck3"], os.path.join(art, "nantensor.npz"),
                                  replace={"embed.W_E": np.full((3, 8), np.nan, np.float32)})
    config = json.loads(str(np.load(f["ck3"])[CONFIG_KEY]))
    f["otherkind"] = _npz_without(f["ck3"], os.path.join(art, "otherkind.npz"),
                                  replace={CONFIG_KEY: np.array(json.dumps({"kind": "gru", "d_vocab": 3}))})
    f["badconfig"] = _npz_without(f["ck3"], os.path.join(art, "badconfig.npz"),
                                  replace={CONFIG_KEY: np.array("{not json")})
    f["zeroconfig"] = _npz_without(f["ck3"], os.path.join(art, "zeroconfig.npz"),
                                   replace={CONFIG_KEY: np.array(json.dumps({**config, "n_heads": 0}))})
    np.save(os.path.join(art, "single.npy"), np.zeros(3))
    f["npy"] = os.path.join(art, "single.npy")
    f["nodir"] = os.path.join(art, "no", "such", "model.npz")
    f["file"] = _write_bytes(os.path.join(art, "plain.txt"), b"a regular file\n")
    f["underfile"] = os.path.join(f["file"], "sub")          # a path below a regular file: never creatable


def _process_files(art, f):
    """Process JSON files, one per way to be wrong, added to f."""
    T, z1r = tinyseq.process("mess3").T.tolist(), tinyseq.process("z1r")
    pj = lambda name, obj=None, raw=None: _process_json(art, name, obj, raw)  # noqa: E731
    f["pj_missing"] = os.path.join(art, "missing.json")
    f["pj_dir"] = os.path.join(art, "dir.json")
    os.mkdir(f["pj_dir"])
    f["pj_binary"] = pj("binary.json", raw=b"\xff\xfe\x00garbage\x80")
    f["pj_notjson"] = pj("notjson.json", raw=b"{T: [[[1]]]")
    f["pj_empty"] = pj("emptyfile.json", raw=b"")
    f["pj_list"] = pj("list.json", T)
    f["pj_noT"] = pj("noT.json", {"name": "x"})
    f["pj_ragged"] = pj("ragged.json", {"T": [[[0.5, 0.5], [1.0]], [[0, 0], [0, 0]]]})
    f["pj_2d"] = pj("twod.json", {"T": [[0.5, 0.5], [0.5, 0.5]]})
    f["pj_nonsquare"] = pj("nonsquare.json", {"T": [[[0.5, 0.5, 0.0]], [[0.0, 0.0, 0.0]]]})
    f["pj_negative"] = pj("negative.json", {"T": [[[1.5, 0.0], [0.5, 0.0]], [[-0.5, 0.0], [0.0, 0.5]]]})
    f["pj_nan"] = pj("nan.json", raw=b'{"T": [[[NaN, 0.5], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.5]]]}')
    f["pj_inf"] = pj("inf.json", raw=b'{"T": [[[Infinity, 0.5], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.5]]]}')
    f["pj_string"] = pj("string.json", {"T": [[["a", 0.5], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.5]]]})
    f["pj_notstochastic"] = pj("notstochastic.json", {"T": [[[0.5, 0.4], [0.5, 0.5]]]})
    f["pj_notergodic"] = pj("notergodic.json", {"T": [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]})
    f["pj_emptyT"] = pj("emptyT.json", {"T": []})
    f["pj_symbols"] = pj("symbols.json", {"T": T, "symbols": ["a", "b"]})
    f["pj_vocab1"] = pj("vocab1.json", {"T": [[[0.5, 0.5], [0.5, 0.5]]]})
    f["pj_unknownkey"] = pj("unknownkey.json", {"T": T, "colour": "red"})
    f["pj_vocab2"] = pj("vocab2.json", {"T": z1r.T.tolist()})


def _run_files(art, f):
    """Training runs, added to f: one finished, one interrupted after 3 of 6 steps (an unfinished checkpoint),
    and a folder holding a plain model without training state."""
    mess3 = tinyseq.process("mess3")
    cfg = TrainConfig(steps=6, batch=8, eval_every=0, eval_sequences=64, threads=1)
    f["finished"] = os.path.join(art, "finished")
    train(mess3, build_model("transformer", TINY, 3, seed=0), cfg, out=f["finished"])

    def stop_at_3(ev):
        if ev["event"] == "step" and ev["step"] == 3:
            raise KeyboardInterrupt
    f["unfinished"] = os.path.join(art, "unfinished")
    s = train(mess3, build_model("transformer", TINY, 3, seed=0), cfg, out=f["unfinished"], callback=stop_at_3)
    assert s["status"] == "interrupted" and s["steps"] == 3
    f["plain_run"] = os.path.join(art, "plain_run")
    os.mkdir(f["plain_run"])
    shutil.copy(f["ck3"], os.path.join(f["plain_run"], "model.npz"))   # a model without training state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return build_files(str(tmp_path_factory.mktemp("artifacts")))


# ----------------------------------------------------------------------------------------------------------
# the battery: (case id, args with {placeholders}, substring the one line must contain or None)
T = ["train", "--process", "mess3", "--out", "{out}", *TINY_FLAGS, "--steps", "2", "--batch", "4"]
PROBE = ["probe", "{ck3}"]
DEMO = ["demo", "--out", "{out}", *TINY_FLAGS, "--time", "1"]


def _train(*extra, base=T):
    return [*base, *extra]


CASES = [
    # processes, process show
    ("processes-extra-arg", ["processes", "mess3"], None),
    ("processes-bad-flag", ["processes", "--bogus"], None),
    ("show-unknown-process", ["process", "show", "nosuch"], "unknown process"),
    ("show-unknown-param", ["process", "show", "mess3:y=1"], "no parameter"),
    ("show-param-no-value", ["process", "show", "mess3:x="], None),
    ("show-param-no-eq", ["process", "show", "mess3:x"], None),
    ("show-param-no-key", ["process", "show", "mess3:=1"], None),
    ("show-colon-only", ["process", "show", "mess3:"], None),
    ("show-param-nan", ["process", "show", "mess3:x=nan"], None),
    ("show-param-inf", ["process", "show", "mess3:a=inf"], None),
    ("show-param-text", ["process", "show", "mess3:x=abc"], "not a number"),
    ("show-param-range", ["process", "show", "mess3:x=0.9"], "0.5"),
    ("show-param-negative", ["process", "show", "z1r:p=-0.1"], None),
    ("show-param-twice", ["process", "show", "mess3:x=0.1,x=0.2"], None),
    ("show-param-for-nond", ["process", "show", "nond:p=0.1"], "no parameter"),
    ("show-empty-spec", ["process", "show", ""], None),
    ("show-depth-0", ["process", "show", "mess3", "--depth", "0"], "depth"),
    ("show-depth-negative", ["process", "show", "mess3", "--depth", "-3"], "depth"),
    ("show-depth-huge", ["process", "show", "mess3", "--depth", "100000"], "too large"),   # 5 s of MSP levels
    ("show-horizon-0", ["process", "show", "mess3", "--horizon", "0"], "horizon"),
    ("show-horizon-huge", ["process", "show", "mess3", "--horizon", "1000000"], None),
    ("show-context-negative", ["process", "show", "mess3", "--context", "-1"], "context"),
    ("show-context-huge", ["process", "show", "mess3", "--context", "1000000"], None),
    ("show-rank-horizon-0", ["process", "show", "mess3", "--rank-horizon", "0"], None),
    ("show-rank-horizon-huge", ["process", "show", "mess3", "--rank-horizon", "100000"], None),
    ("show-depth-text", ["process", "show", "mess3", "--depth", "ten"], None),
    ("show-json-bad", ["process", "show", "nosuch", "--json"], "unknown process"),
    *[(f"show-{key[3:]}", ["process", "show", "{" + key + "}"], needle) for key, needle in (
        ("pj_missing", "does not exist"), ("pj_dir", "directory"), ("pj_binary", None), ("pj_notjson", "JSON"),
        ("pj_empty", "JSON"), ("pj_list", None), ("pj_noT", "T"), ("pj_ragged", "ragged"), ("pj_2d", None),
        ("pj_nonsquare", None), ("pj_negative", "negative"), ("pj_nan", None), ("pj_inf", None),
        ("pj_string", "not a number"), ("pj_notstochastic", "sums to"), ("pj_notergodic", "ergodic"),
        ("pj_emptyT", None), ("pj_symbols", "symbols"), ("pj_unknownkey", None))],
    # gradcheck
    ("gradcheck-unknown-model", ["gradcheck", "--model", "cnn"], None),
    ("gradcheck-extra-arg", ["gradcheck", "extra"], None),
    # train: missing pieces
    ("train-no-process", ["train", "--out", "{out}"], "--process"),
    ("train-no-out", ["train", "--process", "mess3"], "--out"),
    ("train-unknown-process", _train("--process", "nosuch"), "unknown process"),
    ("train-bad-param", _train("--process", "mess3:x=2"), None),
    ("train-malformed-param", _train("--process", "mess3:x"), None),
    ("train-process-notergodic", _train("--process", "{pj_notergodic}"), "ergodic"),
    ("train-process-vocab1", _train("--process", "{pj_vocab1}"), None),
    ("train-process-nan", _train("--process", "{pj_nan}"), None),
    ("train-unknown-model", _train("--model", "cnn"), None),
    # train: sizes
    ("train-batch-0", _train("--batch", "0"), "batch"),
    ("train-batch-negative", _train("--batch", "-3"), "batch"),
    ("train-batch-huge", _train("--batch", str(10 ** 12)), "memory"),
    ("train-batch-float", _train("--batch", "1.5"), None),
    ("train-n-heads-0", _train("--n-heads", "0"), "n_heads"),
    ("train-d-head-0", _train("--d-head", "0"), "d_head"),
    ("train-d-model-0", _train("--d-model", "0"), "d_model"),
    ("train-d-model-huge", _train("--d-model", str(10 ** 7)), "memory"),
    ("train-d-mlp-negative", _train("--d-mlp", "-4"), "d_mlp"),
    ("train-n-layers-0", _train("--n-layers", "0"), "n_layers"),
    ("train-n-layers-huge", _train("--n-layers", str(10 ** 9)), "memory"),
    ("train-n-ctx-1", _train("--n-ctx", "1"), "n_ctx"),
    ("train-n-ctx-0", _train("--n-ctx", "0"), "n_ctx"),
    ("train-n-ctx-huge", _train("--n-ctx", str(10 ** 8)), "memory"),
    ("train-eval-sequences-huge", _train("--eval-sequences", str(10 ** 11)), "memory"),
    ("train-eval-sequences-0", _train("--eval-sequences", "0"), None),
    ("train-act-fn", _train("--act-fn", "swish"), "act_fn"),
    ("train-normalization", _train("--normalization-type", "BN"), None),
    ("train-init-range-0", _train("--initializer-range", "0"), None),
    ("train-init-range-nan", _train("--initializer-range", "nan"), None),
    ("train-hidden-on-transformer", _train("--hidden", "8"), "--hidden"),
    ("train-gru-hidden-0", ["train", "--process", "mess3", "--out", "{out}", "--model", "gru", "--hidden", "0"],
     "hidden"),
    ("train-rnn-input", ["train", "--process", "mess3", "--out", "{out}", "--model", "rnn", "--input", "bits"],
     "input"),
    ("train-rnn-onehot-embed", ["train", "--process", "mess3", "--out", "{out}", "--model", "rnn",
                                "--input", "onehot", "--d-embed", "4"], "d_embed"),
    ("train-lstm-d-embed-negative", ["train", "--process", "mess3", "--out", "{out}", "--model", "lstm",
                                     "--d-embed", "-1"], "d_embed"),
    # train: optimisation
    ("train-lr-0", _train("--lr", "0"), "lr"),
    ("train-lr-negative", _train("--lr", "-1"), "lr"),
    ("train-lr-nan", _train("--lr", "nan"), "lr"),
    ("train-lr-inf", _train("--lr", "inf"), "lr"),
    ("train-lr-text", _train("--lr", "fast"), None),
    ("train-betas-1", _train("--betas", "1", "0.5"), "betas"),
    ("train-betas-nan", _train("--betas", "nan", "0.9"), "betas"),
    ("train-eps-0", _train("--eps", "0"), "eps"),
    ("train-weight-decay-negative", _train("--weight-decay", "-1"), None),
    ("train-warmup-negative", _train("--warmup", "-1"), "warmup"),
    ("train-clip-nan", _train("--clip", "nan"), "clip"),
    ("train-schedule", _train("--schedule", "linear"), "schedule"),
    ("train-steps-0", _train("--steps", "0"), "steps"),
    ("train-steps-negative", _train("--steps", "-5"), "steps"),
    ("train-tokens-0", ["train", "--process", "mess3", "--out", "{out}", "--tokens", "0"], "tokens"),
    ("train-time-negative", ["train", "--process", "mess3", "--out", "{out}", "--time", "-5"], "time"),
    ("train-time-nan", ["train", "--process", "mess3", "--out", "{out}", "--time", "nan"], "time"),
    ("train-two-budgets", _train("--time", "5"), "budget"),
    ("train-threads-0", _train("--threads", "0"), "threads"),
    ("train-threads-999", _train("--threads", "999"), "threads"),
    ("train-seed-negative", _train("--seed", "-1"), "seed"),
    ("train-eval-every-negative", _train("--eval-every", "-1"), None),
    ("train-checkpoint-every-negative", _train("--checkpoint-every", "-2"), None),
    ("train-dtype", _train("--dtype", "float16"), "dtype"),
    ("train-backend", _train("--backend", "cuda"), "backend"),
    ("train-objective", _train("--objective", "magic"), None),
    ("train-objective-mtp-0", _train("--objective", "mtp:0"), None),
    ("train-mtp-weights", _train("--objective", "mtp:2", "--mtp-weights", "1"), None),
    ("train-myopia-negative", _train("--myopia", "-1"), None),
    ("train-preset-gru", ["train", "--process", "mess3", "--out", "{out}", "--preset", "paper", "--model", "gru"],
     None),
    ("train-preset-z1r", ["train", "--process", "z1r", "--out", "{out}", "--preset", "paper"], None),
    ("train-json-bad", _train("--lr", "0", "--json"), "lr"),
    # train: where it writes
    ("train-out-is-file", _train("--out", "{file}"), None),
    ("train-out-under-file", _train("--out", "{underfile}"), None),
    ("train-out-unwritable", _train("--out", "{locked}"), None),
    ("train-out-existing-run", _train("--out", "{run}"), "--resume"),
    # train --resume
    ("resume-finished", ["train", "--resume", "{finished}"], "finished"),
    ("resume-missing", ["train", "--resume", "{nodir}"], None),
    ("resume-empty-dir", ["train", "--resume", "{out}"], None),
    ("resume-no-state", ["train", "--resume", "{plain_run}"], "resume"),
    ("resume-corrupted", ["train", "--resume", "{flipped}"], None),
    ("resume-other-model", ["train", "--resume", "{run}", "--model", "gru"], "gru"),
    ("resume-other-process", ["train", "--resume", "{run}", "--process", "rrxor"], "rrxor"),
    ("resume-other-size", ["train", "--resume", "{run}", "--d-model", "16"], "d-model"),
    ("resume-other-lr", ["train", "--resume", "{run}", "--lr", "0.5"], "lr"),
    ("resume-bad-lr", ["train", "--resume", "{run}", "--lr", "-1"], "lr"),
    ("resume-other-out", ["train", "--resume", "{run}", "--out", "{out}"], None),
    ("resume-preset", ["train", "--resume", "{run}", "--preset", "paper"], None),
    ("resume-threads-0", ["train", "--resume", "{run}", "--threads", "0"], "threads"),
    # probe: the checkpoint
    *[(f"probe-{key}", ["probe", "{" + key + "}"], needle) for key, needle in (
        ("nodir", "no checkpoint"), ("truncated", None), ("empty", "empty"), ("random", None),
        ("flipped", None), ("plainzip", None), ("pickled", "pickle"), ("notensor", "W_Q"),
        ("misshaped", "shape"), ("nantensor", "NaN"), ("otherkind", None), ("badconfig", "JSON"),
        ("zeroconfig", "n_heads"), ("npy", None), ("file", None), ("art", None), ("noproc", "--process"))],
    ("probe-vocab-mismatch", ["probe", "{ck2}", "--process", "mess3"], "token values"),
    ("probe-bad-process", ["probe", "{ck3}", "--process", "{pj_notstochastic}"], "sums to"),
    ("probe-horizon-0", [*PROBE, "--horizon", "0"], "horizon"),
    ("probe-horizon-ctx", [*PROBE, "--horizon", "5"], "horizon"),
    ("probe-horizon-negative", [*PROBE, "--horizon", "-2"], "horizon"),
    ("probe-threads-0", [*PROBE, "--threads", "0"], "threads"),
    ("probe-threads-999", [*PROBE, "--threads", "999"], "threads"),
    ("probe-seed-negative", [*PROBE, "--seed", "-1"], "seed"),
    ("probe-eval-set", [*PROBE, "--eval-set", "all"], None),
    ("probe-weighting", [*PROBE, "--weighting", "none"], None),
    ("probe-png-no-dir", [*PROBE, "--png", "{nodir}.png"], "png"),
    ("probe-png-under-file", [*PROBE, "--png", "{underfile}/x.png"], "png"),
    ("probe-png-is-dir", [*PROBE, "--png", "{out}"], "png"),
    ("probe-json-bad", ["probe", "{truncated}", "--json"], None),
    ("probe-missing-arg", ["probe"], None),
    # demo
    ("demo-time-0", [*DEMO, "--time", "0"], "time"),
    ("demo-time-negative", [*DEMO, "--time", "-5"], "time"),
    ("demo-time-nan", [*DEMO, "--time", "nan"], "time"),
    ("demo-unknown-process", [*DEMO, "--process", "nosuch"], "unknown process"),
    ("demo-process-json", [*DEMO, "--process", "{pj_ragged}"], "ragged"),
    ("demo-model", [*DEMO, "--model", "cnn"], None),
    ("demo-n-ctx-1", [*DEMO, "--n-ctx", "1"], "n_ctx"),
    ("demo-n-heads-0", [*DEMO, "--n-heads", "0"], "n_heads"),
    ("demo-d-model-huge", [*DEMO, "--d-model", str(10 ** 7)], "memory"),
    ("demo-horizon-ctx", [*DEMO, "--horizon", "5"], "horizon"),
    ("demo-horizon-0", [*DEMO, "--horizon", "0"], "horizon"),
    ("demo-threads-0", [*DEMO, "--threads", "0"], "threads"),
    ("demo-threads-999", [*DEMO, "--threads", "999"], "threads"),
    ("demo-seed-negative", [*DEMO, "--seed", "-1"], "seed"),
    ("demo-hidden-transformer", [*DEMO, "--hidden", "4"], "--hidden"),
    ("demo-out-file", [*DEMO, "--out", "{file}"], None),
    ("demo-out-under-file", [*DEMO, "--out", "{underfile}"], None),
    ("demo-png-no-dir", [*DEMO, "--png", "{nodir}.png"], "png"),
    ("demo-png-is-dir", [*DEMO, "--png", "{out}"], "png"),
    ("demo-json-bad", [*DEMO, "--n-ctx", "1", "--json"], "n_ctx"),
    # bench
    ("bench-models", ["bench", "--models", "huge", "--quick", "--no-torch"], None),
    ("bench-batches-0", ["bench", "--batches", "0", "--quick", "--no-torch"], "batches"),
    ("bench-batches-text", ["bench", "--batches", "x", "--quick", "--no-torch"], "batches"),
    ("bench-batches-huge", ["bench", "--batches", str(10 ** 12), "--quick", "--no-torch"], "memory"),
    ("bench-threads-0", ["bench", "--threads", "0", "--quick", "--no-torch"], "threads"),
    ("bench-threads-999", ["bench", "--threads", "999", "--quick", "--no-torch"], "threads"),
    # the group itself
    ("unknown-command", ["nosuchcommand"], None),
    ("debug-flag-unknown", ["--bogus"], None),
]
if HAS_COMPARE:
    CASES += [
        ("compare-unknown-process", ["compare", "--process", "nosuch", "--out", "{out}"], "unknown process"),
        ("compare-process-json", ["compare", "--process", "{pj_negative}", "--out", "{out}"], "negative"),
        ("compare-out-file", ["compare", "--out", "{file}"], None),
    ]

# cases whose --out must be a directory the current user cannot write (skipped as root, who writes anyway)
LOCKED_CASES = {"train-out-unwritable"}


# a sample of every kind of refusal that also runs as a real process: a click usage error, and a TinyseqError
# from parsing, from a size check, from a corrupted checkpoint and from a resume conflict
REAL_PROCESS_CASES = ["show-depth-text", "show-param-text", "train-batch-huge", "probe-truncated",
                      "resume-other-lr"]
CASE_TIMEOUT = 60       # a bad input is refused in a second or two; more means it started real work


def in_subprocess(argv, cwd):
    """`python cli.py ARGV` as a real process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *argv], capture_output=True,
                              text=True, cwd=cwd, env=env, timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(argv, "timeout", e.stdout or "", f"timed out after {CASE_TIMEOUT} s")


def _run_case(files, case_dir, args, runner):
    """Build the case's directory, run it with runner(argv, cwd): (argv, result, files before, after)."""
    os.makedirs(case_dir)
    out = os.path.join(case_dir, "out")
    os.makedirs(out)
    _write_bytes(os.path.join(out, "keep.txt"), KEEP)
    run = os.path.join(case_dir, "run")
    shutil.copytree(files["unfinished"], run)
    locked = os.path.join(case_dir, "locked")
    os.makedirs(locked)
    _write_bytes(os.path.join(locked, "keep.txt"), KEEP)
    os.chmod(locked, 0o500)
    values = {**files, "out": out, "run": run, "locked": locked}
    argv = [a.format(**values) for a in args]
    before = _tree(case_dir)
    try:
        r = runner(argv, case_dir)
    finally:
        os.chmod(locked, 0o700)
    return argv, r, before, _tree(case_dir)


def run_cases(files, root):
    """{case id: (argv, result, files before, files after)}: every case in this process while the
    REAL_PROCESS_CASES run as subprocesses beside it, one at a time (under "real:" + case id; every path
    is absolute, so the in-process cases' chdir does not reach them)."""
    shared_before = _tree(files["art"])
    real = [(cid, args) for cid, args, _ in CASES if cid in REAL_PROCESS_CASES]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        futures = {cid: pool.submit(_run_case, files, os.path.join(root, "real", cid), args, in_subprocess)
                   for cid, args in real}
        out = {cid: _run_case(files, os.path.join(root, cid), args, cli_in_process) for cid, args, _ in CASES}
        out.update({"real:" + cid: fut.result() for cid, fut in futures.items()})
    out["__shared__"] = (shared_before, _tree(files["art"]))
    return out


@pytest.fixture(scope="module")
def results(files, tmp_path_factory):
    """Run every case once; the tests below only look at the results."""
    return run_cases(files, str(tmp_path_factory.mktemp("cases")))


def _check_case(result, case_id, needle):
    argv, r, before, after = result
    if case_id in LOCKED_CASES and os.geteuid() == 0:
        pytest.skip("running as root: a chmod 500 directory is writable anyway")
    assert_one_line_error(r, needle)
    assert after == before, f"{argv}: files changed: {set(before.items()) ^ set(after.items())}"


@pytest.mark.parametrize("case_id, args, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(results, case_id, args, needle):
    _check_case(results[case_id], case_id, needle)


@pytest.mark.parametrize("case_id", REAL_PROCESS_CASES)
def test_bad_input_in_a_real_process(results, case_id):
    needle = {cid: n for cid, _, n in CASES}[case_id]
    _check_case(results["real:" + case_id], case_id, needle)


def test_shared_files_untouched(results):
    before, after = results["__shared__"]
    assert after == before


# ----------------------------------------------------------------------------------------------------------
# nothing lost: Ctrl-C saves, says how to continue, and the continued run ends where an uninterrupted one does
def _npz_entries(path):
    """{entry name: raw bytes of the .npy inside the archive} of a checkpoint."""
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


WALL_CLOCK = ("seconds", "step_seconds")      # the only checkpoint fields that depend on the clock


def _meta_without_clock(path):
    meta = json.loads(str(np.load(path, allow_pickle=False)["__meta__"]))
    for key in WALL_CLOCK:
        meta["state"].pop(key, None)
    return meta


def _same_run(a, b):
    """Two checkpoints of the same run: every tensor, the AdamW moments, config and process byte-identical;
    the metadata identical except the wall-clock fields."""
    ea, eb = _npz_entries(a), _npz_entries(b)
    assert sorted(ea) == sorted(eb)
    differ = [name for name in ea if name != "__meta__.npy" and ea[name] != eb[name]]
    assert not differ, differ
    assert _meta_without_clock(a) == _meta_without_clock(b)


def _start(args, cwd):
    """Start `python cli.py ARGS` in the background, stdout and stderr going to files in cwd: (process, paths)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    paths = tempfile.mkstemp(dir=cwd, suffix=".out")[1], tempfile.mkstemp(dir=cwd, suffix=".err")[1]
    with open(paths[0], "w") as out, open(paths[1], "w") as err:
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), *args], cwd=cwd, env=env,
                             stdout=out, stderr=err, text=True)
    return p, paths


def _finish(p, paths, timeout=300):
    """Wait for a _start-ed process: CompletedProcess(args, returncode, stdout, stderr)."""
    p.wait(timeout=timeout)
    out, err = (open(path).read() for path in paths)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _interrupt(args, cwd, ready, after=60, timeout=120):
    """Start `cli.py args`, send SIGINT once ready(stderr so far) is true (or after `after` s), return the
    CompletedProcess."""
    p, paths = _start(args, cwd)
    t0 = time.perf_counter()
    while not ready(open(paths[1]).read()) and time.perf_counter() - t0 < after and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    return _finish(p, paths, timeout)


RUN = ["--process", "mess3", *TINY_FLAGS, "--batch", "16", "--steps", "1500", "--eval-every", "500",
       "--checkpoint-every", "100", "--threads", "1", "--seed", "3"]


def test_train_interrupt_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    """Interrupted in a real process (a real SIGINT); the resume and the uninterrupted run run in this one."""
    stopped, straight = str(tmp_path / "stopped"), str(tmp_path / "straight")
    ckpt = os.path.join(stopped, "model.npz")
    r = _interrupt(["train", *RUN, "--out", stopped], str(tmp_path), lambda err: os.path.exists(ckpt))
    assert r.returncode == 130, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tinyseq: interrupted") and f"tinyseq train --resume {stopped}" in last, r.stderr
    assert "Traceback" not in r.stderr
    model = tinyseq.load(ckpt)                                    # a valid checkpoint, mid-run
    steps = json.loads(str(np.load(ckpt)["__meta__"]))["state"]["step"]
    assert 0 < steps < 1500, steps
    assert model.params.data.size > 0

    r = cli_in_process(["train", "--resume", stopped], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    r = cli_in_process(["train", *RUN, "--out", straight], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    _same_run(ckpt, os.path.join(straight, "model.npz"))
    # and a finished run refuses a second --resume, leaving its files as they were
    before = _tree(stopped)
    assert_one_line_error(cli_in_process(["train", "--resume", stopped], cwd=str(tmp_path)), "finished")
    assert _tree(stopped) == before


def test_demo_interrupt_saves_and_says_how_to_continue(tmp_path):
    out = str(tmp_path / "demo")
    ckpt = os.path.join(out, "model.npz")
    started = []

    def training(err):       # SIGINT 1 s after the "training a ..." line: inside the training loop by then
        if "training a " in err and not started:
            started.append(time.perf_counter())
        return bool(started) and time.perf_counter() - started[0] > 1.0
    r = _interrupt(["demo", *TINY_FLAGS, "--time", "60", "--out", out, "--seed", "1"], str(tmp_path), training,
                   after=30)
    assert r.returncode == 130, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    assert last.startswith("tinyseq: interrupted") and f"tinyseq train --resume {out}" in last, r.stderr
    assert f"tinyseq probe {out}" in last
    tinyseq.load(ckpt)


# ----------------------------------------------------------------------------------------------------------
# determinism: the same command, seed and thread count give the same bytes and the same numbers
def _twice(args_a, args_b, cwd):
    """The same command twice, at the same time: args_a in a fresh process, args_b in this one (so a result that
    depends on the process, e.g. on hash randomisation or on what ran before, shows up)."""
    p, paths = _start(args_a, cwd)
    rb = cli_in_process(args_b, cwd=cwd)
    return _finish(p, paths), rb


def test_train_twice_gives_identical_checkpoints_and_summaries(tmp_path):
    args = ["--process", "mess3", *TINY_FLAGS, "--batch", "16", "--steps", "60", "--eval-every", "30",
            "--threads", "1", "--seed", "5", "--json"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ra, rb = _twice(["train", *args, "--out", a], ["train", *args, "--out", b], str(tmp_path))
    assert ra.returncode == 0 and rb.returncode == 0, (ra.stderr, rb.stderr)
    _same_run(os.path.join(a, "model.npz"), os.path.join(b, "model.npz"))
    clock = ("seconds", "tokens_per_s", "checkpoint")
    sa, sb = json.loads(ra.stdout), json.loads(rb.stdout)
    assert {k: v for k, v in sa.items() if k not in clock} == {k: v for k, v in sb.items() if k not in clock}


def test_train_twice_gives_identical_file_bytes(tmp_path):
    """Same command, seed and threads: the same checkpoint file, byte for byte (a --steps run stores no clock)."""
    args = ["--process", "mess3", *TINY_FLAGS, "--batch", "8", "--steps", "5", "--threads", "1", "--seed", "5"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ra, rb = _twice(["train", *args, "--out", a], ["train", *args, "--out", b], str(tmp_path))
    assert ra.returncode == 0 and rb.returncode == 0, (ra.stderr, rb.stderr)
    assert open(os.path.join(a, "model.npz"), "rb").read() == open(os.path.join(b, "model.npz"), "rb").read()


def test_probe_json_twice_is_identical_but_for_timings(files, tmp_path):
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if "timing" not in k and "seconds" not in k}
        if isinstance(d, list):
            return [strip(v) for v in d]
        return d
    args = ["probe", files["ck3"], "--json", "--threads", "1"]
    runs = _twice(args, args, str(tmp_path))
    assert all(r.returncode == 0 for r in runs), (runs[0].stderr, runs[1].stderr)
    a, b = (strip(json.loads(r.stdout)) for r in runs)
    assert a == b
