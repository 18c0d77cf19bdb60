"""Checkpoints: bit-exact round trips, and one clear line (never a traceback, never an unpickle) for bad files."""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import tinyseq
from tinyseq import checkpoint
from tinyseq.errors import TinyseqError
from tinyseq.models import build_model, config_from_dict, config_to_dict, make_config
from tinyseq.processes import parse_process

SMALL = {
    "transformer": {"n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "n_ctx": 6},
    "rnn": {"hidden": 8, "n_ctx": 6},
    "gru": {"hidden": 8, "n_layers": 2, "n_ctx": 6},
    "lstm": {"hidden": 8, "input": "onehot", "n_ctx": 6},
}


@pytest.fixture(scope="module")
def proc():
    return parse_process("mess3")


def small_model(kind, dtype="float32", seed=3):
    return build_model(kind, SMALL[kind], vocab=3, dtype=dtype, seed=seed, backend="numpy")


def saved(tmp_path, proc, kind="transformer", **kw):
    model = small_model(kind)
    path = str(tmp_path / "model.npz")
    checkpoint.save(path, model, process_spec=proc.to_spec(), meta={"note": "x"}, **kw)
    return path, model


def rewrite(path, arrays, **savez_kw):
    with open(path, "wb") as f:
        np.savez(f, **arrays, **savez_kw)


def arrays_of(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def refused(path, *words):
    """load(path) raises one TinyseqError line that contains every word."""
    with pytest.raises(TinyseqError) as e:
        checkpoint.load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


# ----------------------------------------------------------------------------------------------------------
# models.py: configs
def test_unknown_option_and_kind_are_one_line_errors():
    with pytest.raises(TinyseqError, match="unknown transformer option hiden"):
        build_model("transformer", {"hiden": 3}, vocab=3)
    with pytest.raises(TinyseqError, match="unknown model kind"):
        build_model("mamba", {}, vocab=3)
    with pytest.raises(TinyseqError, match="must be an integer"):
        make_config("gru", {"hidden": "big"}, vocab=3)


@pytest.mark.parametrize("kind", list(SMALL))
def test_config_dict_round_trip(kind):
    cfg = make_config(kind, SMALL[kind], vocab=3)
    d = config_to_dict(cfg)
    assert d["kind"] == kind
    assert json.loads(json.dumps(d)) == d
    assert config_from_dict(d) == cfg


# ----------------------------------------------------------------------------------------------------------
# round trips
@pytest.mark.parametrize("kind", list(SMALL))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_bit_identical(tmp_path, proc, kind, dtype):
    model = small_model(kind, dtype)
    rng = np.random.default_rng(0)
    model.params.data[...] = rng.standard_normal(model.params.size)   # not just the init values
    m = rng.standard_normal(model.params.size).astype(dtype)
    v = rng.random(model.params.size).astype(dtype)
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, model, kind=kind, process_spec=proc.to_spec(), meta={"step": 7}, adam_m=m, adam_v=v)
    loaded = checkpoint.load_model(path, backend="numpy")    # the backend the original ran on
    assert loaded.kind == kind and loaded.config == model.config
    assert loaded.params.dtype == np.dtype(dtype)
    for name, value in model.params.state_dict().items():
        assert loaded.params[name].tobytes() == value.tobytes(), name
    tokens = proc.sample(4, 6, np.random.default_rng(1))
    assert loaded.logits(tokens).tobytes() == model.logits(tokens).tobytes()
    assert list(loaded.activations(tokens)) == list(model.activations(tokens))
    fast = tinyseq.load(path)                        # default backend: same numbers up to rounding
    np.testing.assert_allclose(fast.logits(tokens), model.logits(tokens), rtol=1e-4, atol=1e-4)
    assert np.array_equal(loaded.process.T, proc.T) and loaded.process.label == proc.label
    assert loaded.meta["step"] == 7 and loaded.meta["dtype"] == dtype
    ck = checkpoint.load(path)
    assert ck.adam_m.tobytes() == m.tobytes() and ck.adam_v.tobytes() == v.tobytes()


def test_file_is_plain_npz_with_ecosystem_names(tmp_path, proc):
    path, model = saved(tmp_path, proc)
    arrays = arrays_of(path)                         # readable by NumPy alone, no pickle
    assert "blocks.0.attn.W_Q" in arrays and "unembed.W_U" in arrays
    assert json.loads(str(arrays["__config__"]))["kind"] == "transformer"
    assert json.loads(str(arrays["__process__"]))["T"] == proc.T.tolist()
    assert json.loads(str(arrays["__meta__"]))["note"] == "x"
    assert "__adam_m__" not in arrays


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, proc, monkeypatch):
    path, model = saved(tmp_path, proc)
    before = open(path, "rb").read()

    def boom(*a, **k):
        raise KeyboardInterrupt                      # the write is cut off half way
    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, small_model("transformer", seed=9), process_spec=proc.to_spec())
    assert open(path, "rb").read() == before         # the old checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


# ----------------------------------------------------------------------------------------------------------
# bad files: one line each
def test_missing_file(tmp_path):
    refused(str(tmp_path / "nope.npz"), "no checkpoint at")


def test_directory(tmp_path, proc):
    refused(str(tmp_path), "is a directory")
    saved(tmp_path, proc)
    msg = refused(str(tmp_path), "is a directory")
    assert "model.npz" in msg


def test_empty_text_npy_and_pickle_files(tmp_path):
    p = tmp_path / "empty.npz"
    p.write_bytes(b"")
    refused(str(p), "empty")
    p = tmp_path / "text.npz"
    p.write_text("hello, not a checkpoint\n")
    refused(str(p), "not a tinyseq checkpoint")
    p = tmp_path / "one.npy"
    np.save(p, np.zeros(3))
    refused(str(p), ".npy")
    p = tmp_path / "pickle.npz"
    p.write_bytes(pickle.dumps({"a": 1}))
    refused(str(p), "not a tinyseq checkpoint")


def test_truncated_and_corrupted(tmp_path, proc):
    path, _ = saved(tmp_path, proc)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    refused(str(cut), "truncated or corrupted")
    # flip bytes inside a tensor's data: the zip CRC catches it
    bad = bytearray(data)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("unembed.W_U.npy")
    at = info.header_offset + 30 + len(info.filename) + info.compress_size - 4
    bad[at:at + 4] = b"\xff\xfe\xfd\xfc"
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(bad))
    refused(str(corrupt), "corrupted")


def test_object_array_is_refused_without_unpickling(tmp_path, proc, monkeypatch):
    path, _ = saved(tmp_path, proc)
    arrays = arrays_of(path)
    arrays["unembed.b_U"] = np.array([{"evil": 1}, None, 3], dtype=object)
    rewrite(path, arrays, allow_pickle=True)

    def never(*a, **k):
        raise AssertionError("a pickle was loaded")
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    refused(path, "pickle")


def test_missing_extra_and_misshaped_tensors_are_named(tmp_path, proc):
    path, _ = saved(tmp_path, proc)
    good = arrays_of(path)
    arrays = dict(good)
    del arrays["blocks.0.mlp.W_in"]
    rewrite(path, arrays)
    refused(path, "lacks tensor", "blocks.0.mlp.W_in")
    arrays = dict(good, **{"blocks.7.attn.W_Q": np.zeros((1, 2, 3), np.float32)})
    rewrite(path, arrays)
    refused(path, "blocks.7.attn.W_Q")
    arrays = dict(good, **{"embed.W_E": np.zeros((4, 8), np.float32)})
    rewrite(path, arrays)
    refused(path, "embed.W_E", "(4, 8)")
    arrays = dict(good, **{"embed.W_E": np.full((3, 8), np.nan, np.float32)})
    rewrite(path, arrays)
    refused(path, "embed.W_E", "nan")
    arrays = dict(good, __adam_m__=np.zeros(5, np.float32), __adam_v__=np.zeros(5, np.float32))
    rewrite(path, arrays)
    refused(path, "__adam_m__")


def test_bad_config_json_and_kind(tmp_path, proc):
    path, _ = saved(tmp_path, proc)
    good = arrays_of(path)
    rewrite(path, dict(good, __config__=np.array("{not json")))
    refused(path, "__config__", "not valid JSON")
    cfg = json.loads(str(good["__config__"]))
    rewrite(path, dict(good, __config__=np.array(json.dumps(dict(cfg, kind="mamba")))))
    refused(path, "unknown model kind")
    rewrite(path, dict(good, __config__=np.array(json.dumps(dict(cfg, d_model="wide")))))
    refused(path, "d_model")
    rewrite(path, dict(good, __config__=np.zeros(3)))
    refused(path, "__config__", "JSON string")
    rewrite(path, {k: v for k, v in good.items() if k != "__config__"})
    refused(path, "no __config__")
    rewrite(path, dict(good, __meta__=np.array("[1, 2]")))
    refused(path, "__meta__")
    rewrite(path, dict(good, __process__=np.array(json.dumps({"name": "x", "T": [[[2.0]]]}))))
    refused(path, "__process__")
