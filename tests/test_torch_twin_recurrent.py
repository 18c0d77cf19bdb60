"""Our recurrent nets against real PyTorch modules, float64: load our tensors by name into nn.RNN / nn.GRU /
nn.LSTM (batch_first) + nn.Embedding + nn.Linear, compare logits and every gradient of the mean cross-entropy.
Skipped when torch is not installed (it is not a dependency)."""
import numpy as np
import pytest

from tinyseq.nn.ops import cross_entropy_backward, cross_entropy_forward
from tinyseq.nn.recurrent import INPUTS, KINDS, Recurrent, RecurrentConfig

torch = pytest.importorskip("torch")

TOL = 1e-9


def torch_twin(model):
    """Real PyTorch modules holding our tensors, looked up by their (shared) names."""
    cfg, p = model.config, model.params
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cfg.kind]
    rnn = cls(cfg.input_width, cfg.hidden, num_layers=cfg.n_layers, batch_first=True, dtype=torch.float64)
    readout = torch.nn.Linear(cfg.hidden, cfg.d_vocab, dtype=torch.float64)
    embed = torch.nn.Embedding(cfg.d_vocab, cfg.input_width, dtype=torch.float64) if "embed.weight" in p else None
    modules = {"": rnn, "readout.": readout, "embed.": embed}
    with torch.no_grad():
        for prefix, module in modules.items():
            if module is None:
                continue
            for name, tensor in module.named_parameters():
                assert tensor.shape == p[prefix + name].shape, prefix + name
                tensor.copy_(torch.from_numpy(p[prefix + name]))
    # every one of our tensors went somewhere
    theirs = {prefix + n for prefix, m in modules.items() if m is not None for n, _ in m.named_parameters()}
    assert theirs == set(p.names())
    return modules


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch(kind, n_layers, input):
    cfg = RecurrentConfig(kind=kind, d_vocab=4, hidden=5, n_layers=n_layers, input=input,
                          d_embed=3 if input == "embedding" else 0)
    model = Recurrent(cfg, dtype=np.float64, seed=11)
    rng = np.random.default_rng(12)
    tokens = rng.integers(0, 4, size=(3, 7))
    targets = rng.integers(0, 4, size=(3, 7))

    logits, cache = model.forward(tokens)
    loss, probs = cross_entropy_forward(logits, targets)
    model.params.zero_grad()
    model.backward(cross_entropy_backward(probs, targets), cache)

    modules = torch_twin(model)
    tok = torch.from_numpy(tokens)
    if modules["embed."] is not None:
        x = modules["embed."](tok)
    else:
        x = torch.nn.functional.one_hot(tok, cfg.d_vocab).to(torch.float64)
    out, _ = modules[""](x)                       # zero initial state, as ours
    t_logits = modules["readout."](out)
    t_loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, cfg.d_vocab),
                                               torch.from_numpy(targets).reshape(-1))   # mean, as ours
    t_loss.backward()

    assert np.abs(t_logits.detach().numpy() - logits).max() < TOL
    assert abs(t_loss.item() - loss) < TOL
    for prefix, module in modules.items():
        if module is None:
            continue
        for name, tensor in module.named_parameters():
            diff = np.abs(tensor.grad.numpy() - model.params.grads[prefix + name]).max()
            assert diff < TOL, f"{prefix + name}: max abs diff {diff:.2e}"
