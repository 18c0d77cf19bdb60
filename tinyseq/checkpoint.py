"""Checkpoints: one .npz file per model, readable without tinyseq and never unpickled.

Layout of the archive (every entry a plain NumPy array, so `np.load(path, allow_pickle=False)` reads it):

    <tensor name>        every parameter under its ecosystem name: `blocks.0.attn.W_Q` (TransformerLens),
                         `weight_hh_l0` (PyTorch); a state dict that loads there by name. A multi-token
                         model (config n_future = N > 1) also holds its extra heads `mtp.{i}.*`, i = 2..N
    __config__           JSON string: {"kind": "transformer" | "rnn" | "gru" | "lstm", <config fields>}
    __process__          JSON string: the process (Process.to_spec(): name, symbols, T; a mixture stores its
                         JSON form {"mixture": [[component, weight], ...]}, each component whole)
    __meta__             JSON string: dtype, tinyseq version, and whatever the trainer records
                         (train config, step, tokens, seconds, RNG state, last evaluation, finished,
                         and "objective": {"objective": "ntp" | "mtp:N", "heads", "weights", "myopia"})
    __adam_m__/__adam_v__  optional: AdamW first and second moments, flat like params.data, for --resume

Writes are atomic: a temporary file in the same directory, fsync, then os.replace, so a crash or Ctrl-C
mid-write leaves the previous checkpoint intact. Every way a file can be wrong ends in one TinyseqError line.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from tinyseq.errors import TinyseqError

CONFIG_KEY, PROCESS_KEY, META_KEY = "__config__", "__process__", "__meta__"
ADAM_M_KEY, ADAM_V_KEY = "__adam_m__", "__adam_v__"
RESERVED = (CONFIG_KEY, PROCESS_KEY, META_KEY, ADAM_M_KEY, ADAM_V_KEY)
FORMAT_VERSION = 1
CHECKPOINT_NAME = "model.npz"        # the file a training run writes in its --out directory


@dataclass
class Checkpoint:
    """Everything in a checkpoint file, checked: build the model with `model_from_checkpoint`."""
    path: str
    kind: str
    config: object                   # TransformerConfig or RecurrentConfig
    dtype: np.dtype
    tensors: dict                    # name -> array, exactly the model's param_spec
    process_spec: dict | None
    meta: dict = field(default_factory=dict)
    adam_m: np.ndarray | None = None  # (P,) flat, or None when the file holds no optimiser state
    adam_v: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------------
# save
def _json_array(obj, what) -> np.ndarray:
    try:
        text = json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TinyseqError(f"cannot store {what} in a checkpoint: it is not plain JSON ({e})") from None
    return np.array(text)            # a 0-d unicode array: no pickle needed to read it back


def save(path, model, kind: str | None = None, process_spec: dict | None = None, meta: dict | None = None,
         adam_m: np.ndarray | None = None, adam_v: np.ndarray | None = None) -> str:
    """Write `model` (and optionally the AdamW moments) to `path` atomically; returns the path.

    kind defaults to the model's own ('transformer', 'rnn', 'gru', 'lstm'); process_spec is
    Process.to_spec(); meta is any JSON-able dict (the trainer stores its state there)."""
    from tinyseq.models import config_to_dict

    path = os.fspath(path)
    config = config_to_dict(model.config)
    if kind is not None and kind != config["kind"]:
        raise TinyseqError(f"checkpoint kind {kind!r} does not match the model, which is a {config['kind']}")
    arrays = model.params.state_dict()
    meta = {"format": FORMAT_VERSION, "dtype": model.params.dtype.name, **(meta or {})}
    arrays[CONFIG_KEY] = _json_array(config, "the model config")
    arrays[PROCESS_KEY] = _json_array(process_spec, "the process")
    arrays[META_KEY] = _json_array(meta, "the run metadata")
    for key, moment in ((ADAM_M_KEY, adam_m), (ADAM_V_KEY, adam_v)):
        if moment is not None:
            assert moment.shape == model.params.data.shape, f"{key}: {moment.shape} vs {model.params.data.shape}"
            arrays[key] = moment
    write_npz_atomic(path, arrays)
    return path


def _chmod_default(path: str) -> None:
    """mkstemp creates files private (0600); give the final file the usual permissions (0666 minus umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


ZIP_DATE = (1980, 1, 1, 0, 0, 0)     # every entry's timestamp: the same arrays give the same file bytes


def _savez_deterministic(f, arrays: dict) -> None:
    """np.savez (uncompressed, zip64 entries, one `<key>.npy` per array), except that np.savez stamps every
    entry with the current time, so two identical runs would write different bytes; here the date is fixed."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_DATE)
            info.external_attr = 0o600 << 16   # what ZipFile.open(name, "w") sets
            with z.open(info, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(value), allow_pickle=False)


def write_npz_atomic(path: str, arrays: dict) -> None:
    """np.savez into a temporary file next to `path`, fsync it, rename it over `path`, fsync the directory."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    except OSError as e:
        raise TinyseqError(f"cannot write a checkpoint in {folder}: {e.strerror or e}; "
                           f"choose a writable directory with --out") from None
    try:
        _chmod_default(tmp)
        with os.fdopen(fd, "wb") as f:
            _savez_deterministic(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise TinyseqError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
        raise
    try:                             # make the rename itself durable (not possible on every OS: best effort)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------------------
# load
def _one_line(text) -> str:
    return " ".join(str(text).split())


def _read_arrays(path: str) -> dict:
    """All entries of the .npz at `path`, or one TinyseqError line saying why it cannot be read."""
    if not os.path.exists(path):
        raise TinyseqError(f"no checkpoint at {path}: check the path (a training run writes "
                           f"<out>/{CHECKPOINT_NAME})")
    if os.path.isdir(path):
        inside = os.path.join(path, CHECKPOINT_NAME)
        hint = f"load {inside}" if os.path.isfile(inside) else f"pass the .npz file inside it ({CHECKPOINT_NAME})"
        raise TinyseqError(f"{path} is a directory, not a checkpoint file: {hint}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise TinyseqError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not head:
        raise TinyseqError(f"checkpoint {path} is empty (0 bytes): the run that wrote it was cut off; "
                           f"use another checkpoint or train again")
    if head.startswith(b"\x93NUMPY"):
        raise TinyseqError(f"{path} is a single .npy array, not a tinyseq checkpoint (.npz archive)")
    if not head.startswith(b"PK"):
        raise TinyseqError(f"{path} is not a tinyseq checkpoint: not an .npz (zip) archive")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                arrays[key] = z[key]
    except ValueError as e:
        if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
            raise TinyseqError(f"checkpoint {path} contains a Python object (pickled) array; tinyseq never "
                               f"unpickles a file (that could run code): re-save it with plain numeric "
                               f"arrays") from None
        raise TinyseqError(f"checkpoint {path} is corrupted ({_one_line(e)}): use another checkpoint "
                           f"or train again") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError, NotImplementedError) as e:
        raise TinyseqError(f"checkpoint {path} is truncated or corrupted ({_one_line(e) or type(e).__name__}): "
                           f"use another checkpoint or train again") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise TinyseqError(f"checkpoint {path}: entry {key!r} is not a NumPy array; "
                               f"this is not a tinyseq checkpoint")
    return arrays


def _read_json(path, arrays, key, required=True):
    if key not in arrays:
        if required:
            present = ", ".join(sorted(arrays)[:6]) or "nothing"
            raise TinyseqError(f"{path} is not a tinyseq checkpoint: no {key} entry (it holds {present})")
        return None
    value = arrays[key]
    if value.shape != () or value.dtype.kind != "U":
        raise TinyseqError(f"checkpoint {path}: {key} must be a JSON string, got a {value.dtype} array "
                           f"of shape {value.shape}")
    try:
        return json.loads(str(value))
    except ValueError as e:
        raise TinyseqError(f"checkpoint {path}: {key} is not valid JSON ({_one_line(e)})") from None


def load(path) -> Checkpoint:
    """Read and check a checkpoint: config, tensors (names, shapes, dtypes, finite), process, meta, moments."""
    from tinyseq.models import config_from_dict
    from tinyseq.nn import recurrent, transformer

    path = os.fspath(path)
    arrays = _read_arrays(path)
    config_dict = _read_json(path, arrays, CONFIG_KEY)
    process_spec = _read_json(path, arrays, PROCESS_KEY, required=False)
    meta = _read_json(path, arrays, META_KEY, required=False) or {}
    if not isinstance(meta, dict):
        raise TinyseqError(f"checkpoint {path}: {META_KEY} must be a JSON object")
    try:
        config = config_from_dict(config_dict)
    except TinyseqError as e:
        raise TinyseqError(f"checkpoint {path}: {e}") from None
    kind = config_dict["kind"].lower()
    spec = (transformer.param_spec if kind == "transformer" else recurrent.param_spec)(config)

    tensors, dtype = _check_tensors(path, arrays, spec, kind, meta)
    adam_m, adam_v = _check_moments(path, arrays, spec, dtype)
    if process_spec is not None and not isinstance(process_spec, dict):
        raise TinyseqError(f"checkpoint {path}: {PROCESS_KEY} must be a JSON object (name, symbols, T)")
    return Checkpoint(path=path, kind=kind, config=config, dtype=dtype, tensors=tensors,
                      process_spec=process_spec, meta=meta, adam_m=adam_m, adam_v=adam_v)


def _check_tensors(path, arrays, spec, kind, meta):  # -> ({name: tensor}, dtype): every tensor the config needs
    """Names, shapes, dtypes and finiteness of the model's tensors against the config's parameter spec."""
    tensors = {k: v for k, v in arrays.items() if k not in RESERVED}
    expected = dict(spec)
    missing = [name for name, _ in spec if name not in tensors]
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise TinyseqError(f"checkpoint {path} lacks tensor{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} that a {kind} with "
                           f"this config needs: the file is incomplete or its __config__ does not match")
    if extra:
        raise TinyseqError(f"checkpoint {path} has tensor{'s' if len(extra) > 1 else ''} "
                           f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} that a {kind} with this "
                           f"config does not have: its __config__ does not match its tensors")
    dtypes = set()
    for name, shape in spec:
        t = tensors[name]
        if t.shape != shape:
            raise TinyseqError(f"checkpoint {path}: tensor {name} has shape {t.shape}, the config says {shape}")
        if t.dtype.name not in ("float32", "float64"):
            raise TinyseqError(f"checkpoint {path}: tensor {name} is {t.dtype}, expected float32 or float64")
        if not np.isfinite(t).all():
            raise TinyseqError(f"checkpoint {path}: tensor {name} holds NaN or inf values; "
                               f"use an earlier checkpoint")
        dtypes.add(t.dtype.name)
    if len(dtypes) > 1:
        raise TinyseqError(f"checkpoint {path} mixes tensor dtypes {sorted(dtypes)}; expected one")
    dtype = np.dtype(dtypes.pop() if dtypes else meta.get("dtype", "float32"))
    return tensors, dtype


def _check_moments(path, arrays, spec, dtype):  # -> (adam_m, adam_v), both (P,) or both None
    """The optimiser state, when present, must match the model: both moments, flat (P,), same dtype."""
    size = sum(int(np.prod(shape)) for _, shape in spec)
    moments = []
    for key in (ADAM_M_KEY, ADAM_V_KEY):
        m = arrays.get(key)
        if m is not None and (m.shape != (size,) or m.dtype != dtype):
            raise TinyseqError(f"checkpoint {path}: {key} has {m.dtype} shape {m.shape}, expected {dtype} "
                               f"shape ({size},) (the optimiser state does not match the model)")
        moments.append(m)
    if (moments[0] is None) != (moments[1] is None):
        raise TinyseqError(f"checkpoint {path} holds only one of {ADAM_M_KEY}, {ADAM_V_KEY}: the optimiser "
                           f"state is incomplete")
    return moments[0], moments[1]


def model_from_checkpoint(ckpt: Checkpoint, backend: str | None = None):
    """The model a Checkpoint describes, its tensors copied in; `.process` (or None), `.meta`, `.kind` set."""
    from tinyseq.models import model_from_config
    from tinyseq.processes import process_from_dict

    model = model_from_config(ckpt.config, dtype=ckpt.dtype, seed=0, backend=backend)
    model.params.load_state_dict(ckpt.tensors)
    process = None
    if ckpt.process_spec is not None:
        try:
            process = process_from_dict(ckpt.process_spec, where=f"checkpoint {ckpt.path}: {PROCESS_KEY}")
        except TinyseqError as e:
            message = _one_line(e)
            if PROCESS_KEY not in message:
                message = f"checkpoint {ckpt.path}: {PROCESS_KEY}: {message}"
            raise TinyseqError(message) from None
    model.process = process
    model.meta = ckpt.meta
    model.kind = ckpt.kind
    return model


def load_model(path, backend: str | None = None):
    """`tinyseq.load(path)`: the trained model with .logits(tokens) (B, T) -> (B, T, V), .activations(tokens),
    and attributes .process (Process), .meta (dict), .kind."""
    return model_from_checkpoint(load(path), backend=backend)
