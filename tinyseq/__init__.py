"""tinyseq: train tiny transformers and RNNs on toy hidden Markov processes, measure the belief state.

Read the code in the order of the pipeline (README, "Read the code"), opening first:
    1. processes.py      mess3, sample                   the process: T[x, i, j], seeded sampling
    2. beliefs.py        belief_states                    exact beliefs, h(L), Bayes k-step predictions
    3. nn/ops.py         layernorm_forward/_backward      every op, forward and backward side by side
    4. nn/transformer.py Transformer.backward             the forward in reverse; nn/recurrent.py gru_cell_backward
    5. train.py          train_step                       sample, forward, loss, backward, clip, AdamW
    6. analysis.py       belief_probe                     what a network holds, stage by stage (analyse)
    7. report.py         belief_table, describe           numbers in, sentences and tables out
Numba twins sort beside their references (nn/ops_numba.py, nn/recurrent_numba.py); experiment tooling is in lab/.

Notebook entry points:
    tinyseq.process("mess3")           -> Process (exact beliefs, h(L), k-step Bayes accuracy ...)
    tinyseq.process("my_process.json") -> Process from a JSON file
    tinyseq.process({"mixture": [["mess3", 0.5], ["mess3:x=0.15,a=0.6", 0.5]]}) -> Mixture (tinyseq/mixture.py)
    tinyseq.process("mess3*z1r")       -> a product of independent processes (product.py: facts from the factors)
    tinyseq.load("run/model.npz")      -> a trained model with .logits(tokens) and .activations(tokens)
"""
__version__ = "0.1.0"

from tinyseq.errors import TinyseqError  # noqa: E402


def process(spec):
    """A process from a catalogue name with optional parameters ("mess3", "mess3:x=0.15,a=0.6"), a JSON path,
    inline JSON, or a dict (e.g. a mixture {"mixture": [[component, weight], ...]})."""
    from tinyseq.processes import parse_process
    return parse_process(spec)


def load(path):
    """A saved model (checkpoint .npz) ready for .logits(tokens) and .activations(tokens)."""
    from tinyseq.checkpoint import load_model
    return load_model(path)


__all__ = ["__version__", "TinyseqError", "process", "load"]
