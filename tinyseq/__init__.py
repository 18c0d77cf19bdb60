"""tinyseq: train tiny transformers and RNNs on toy hidden Markov processes, measure the belief state.

Notebook entry points:
    tinyseq.process("mess3")           -> Process (exact beliefs, h(L), k-step Bayes accuracy ...)
    tinyseq.process("my_process.json") -> Process from a JSON file
    tinyseq.load("run/model.npz")      -> a trained model with .logits(tokens) and .activations(tokens)
"""
__version__ = "0.1.0"

from tinyseq.errors import TinyseqError  # noqa: E402


def process(spec):
    """A process from a catalogue name with optional parameters ("mess3", "mess3:x=0.15,a=0.6") or a JSON path."""
    from tinyseq.processes import parse_process
    return parse_process(spec)


def load(path):
    """A saved model (checkpoint .npz) ready for .logits(tokens) and .activations(tokens)."""
    from tinyseq.checkpoint import load_model
    return load_model(path)


__all__ = ["__version__", "TinyseqError", "process", "load"]
