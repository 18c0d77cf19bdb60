"""One place that turns a model kind and a few options into a network, and a config into JSON and back.

    build_model("transformer", {"n_layers": 2}, vocab=3)    -> Transformer
    build_model("gru", {"hidden": 32}, vocab=3)             -> Recurrent (kind "gru")
    config_to_dict(model.config) / config_from_dict(d)      the `__config__` of a checkpoint

The option names are the config dataclass fields (TransformerConfig, RecurrentConfig), so the command line,
checkpoints and notebooks all use one vocabulary; `model_options()` lists them for the CLI to generate flags.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.nn.recurrent import KINDS as RECURRENT_KINDS
from tinyseq.nn.recurrent import Recurrent, RecurrentConfig
from tinyseq.nn.transformer import Transformer, TransformerConfig

KINDS = ("transformer",) + RECURRENT_KINDS           # what --model accepts
DTYPES = ("float32", "float64")
# fields that are not user options: the vocabulary comes from the process, the cell from the kind
FIXED_FIELDS = ("d_vocab", "kind")
# fields that are options but get no flag of their own: n_future (the number of output heads) is set by the
# training objective, `--objective mtp:N` (tinyseq/objectives.py), so the two cannot disagree
DERIVED_FIELDS = ("n_future",)


def config_class(kind: str):
    """TransformerConfig or RecurrentConfig for a model kind."""
    kind = check_kind(kind)
    return TransformerConfig if kind == "transformer" else RecurrentConfig


def check_kind(kind) -> str:
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise TinyseqError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind.lower()


def model_kind(model) -> str:
    """'transformer', 'rnn', 'gru' or 'lstm' for a built model."""
    cfg = model.config
    return "transformer" if isinstance(cfg, TransformerConfig) else cfg.kind


def field_comments(cls) -> dict[str, str]:
    """The trailing `# comment` of every field in the dataclass source: the one place its meaning is written,
    reused as CLI help so the two cannot drift apart."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+)\s*:\s*[^=]+=\s*[^#]+#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def model_options() -> list[dict]:
    """Every model option of every kind, merged by name, in dataclass order (transformer first):
    [{"name", "type" (int|float|str), "kinds" (tuple), "default" {kind: value}, "help"}]."""
    options: dict[str, dict] = {}
    for kind, cls in (("transformer", TransformerConfig), ("recurrent", RecurrentConfig)):
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name in FIXED_FIELDS + DERIVED_FIELDS:
                continue
            default = f.default
            typ = float if isinstance(default, float) else int if isinstance(default, int) else str
            kinds = ("transformer",) if kind == "transformer" else RECURRENT_KINDS
            opt = options.setdefault(f.name, {"name": f.name, "type": typ, "kinds": (), "default": {}, "help": ""})
            opt["kinds"] = opt["kinds"] + kinds
            for k in kinds:
                opt["default"][k] = default
            text = comments.get(f.name, "")
            if text and opt["help"] and text != opt["help"]:      # a shared option means one thing per family
                opt["help"] = f"transformer: {opt['help']}; rnn/gru/lstm: {text}"
            elif text:
                opt["help"] = text
    return list(options.values())


def _coerce(name, value, default, kind):
    """An override's value in the type of the field's default; one-line error otherwise."""
    if default is None or isinstance(default, str):          # str fields (normalization_type may be None)
        if value is None or isinstance(value, str):
            return value
        raise TinyseqError(f"{kind} option {name} must be a string, got {value!r}")
    if isinstance(default, bool):
        return value
    if isinstance(default, int):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TinyseqError(f"{kind} option {name} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
                and math.isfinite(float(value)):
            return float(value)
        raise TinyseqError(f"{kind} option {name} must be a finite number, got {value!r}")
    return value


def make_config(kind: str, overrides: dict | None = None, vocab: int | None = None):
    """The config dataclass of `kind` with its defaults, `overrides` applied and validated.

    Unknown option names raise TinyseqError naming them and listing the valid ones."""
    kind = check_kind(kind)
    cls = config_class(kind)
    overrides = dict(overrides or {})
    names = [f.name for f in dataclasses.fields(cls) if f.name not in FIXED_FIELDS]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TinyseqError(f"unknown {kind} option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                           f"valid options are {', '.join(names)}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values = {name: _coerce(name, v, defaults[name], kind) for name, v in overrides.items()}
    if vocab is not None:
        values["d_vocab"] = int(vocab)
    if kind != "transformer":
        values["kind"] = kind
    return cls(**values).validate()


def _make_model(config, dtype, seed, backend):
    """Construct the network; pass `backend` only to constructors that take it (the Numba backend lands
    model by model)."""
    cls = Transformer if isinstance(config, TransformerConfig) else Recurrent
    dtype = np.dtype(dtype)
    if dtype.name not in DTYPES:
        raise TinyseqError(f"dtype must be float32 or float64, got {dtype.name}")
    kwargs = {}
    # a model without the keyword runs the NumPy reference whatever was asked (same results, slower)
    if backend is not None and "backend" in inspect.signature(cls.__init__).parameters:
        kwargs["backend"] = backend
    return cls(config, dtype=dtype, seed=int(seed), **kwargs)


def build_model(kind: str, config_overrides: dict | None = None, vocab: int | None = None,
                dtype="float32", seed: int = 0, backend: str | None = None):
    """A freshly initialised model of `kind` ('transformer', 'rnn', 'gru', 'lstm') for a `vocab`-token process.

    config_overrides: {field: value} on top of the dataclass defaults (e.g. {"d_model": 64}); vocab sets d_vocab.
    backend: "numba" or "numpy" where the model supports the choice (ignored, NumPy, where it does not yet).
    """
    return _make_model(make_config(kind, config_overrides, vocab), dtype, seed, backend)


def model_from_config(config, dtype="float32", seed: int = 0, backend: str | None = None):
    """A model from a config dataclass (already holding d_vocab and, for recurrent nets, kind)."""
    return _make_model(config.validate(), dtype, seed, backend)


def config_to_dict(config) -> dict:
    """JSON-able {"kind": ..., field: value, ...} (what a checkpoint stores as `__config__`)."""
    kind = "transformer" if isinstance(config, TransformerConfig) else config.kind
    d = dataclasses.asdict(config)
    d.pop("kind", None)
    return {"kind": kind, **d}


def config_from_dict(d: dict):
    """Inverse of config_to_dict; TinyseqError for an unknown kind or unknown / invalid fields."""
    if not isinstance(d, dict):
        raise TinyseqError(f"a model config must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = check_kind(d.pop("kind", None))
    vocab = d.pop("d_vocab", None)
    if vocab is None:
        raise TinyseqError(f"model config has no d_vocab (the process's number of tokens)")
    if isinstance(vocab, bool) or not isinstance(vocab, int):
        raise TinyseqError(f"model config d_vocab must be an integer, got {vocab!r}")
    return make_config(kind, d, vocab)
