"""An independent PyTorch float64 transformer, built from our state dict by name, must give the same logits and
the same gradient of the mean cross-entropy for every parameter. Skipped where torch is not installed (CI)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tinyseq.nn import ops  # noqa: E402
from tinyseq.nn.transformer import Transformer, TransformerConfig  # noqa: E402

TOL = 1e-9


def torch_forward(sd, cfg, tokens):
    """The same model written the TransformerLens way (einsum over (B, T, NH, HS)), autograd for the backward."""
    B, T = tokens.shape
    ln = cfg.normalization_type == "LN"

    def norm(x, name):
        return F.layer_norm(x, (cfg.d_model,), sd[f"{name}.w"], sd[f"{name}.b"], eps=1e-5) if ln else x

    act = F.relu if cfg.act_fn == "relu" else (lambda u: F.gelu(u, approximate="tanh"))
    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(cfg.n_layers):
        p = f"blocks.{l}"
        h = norm(x, f"{p}.ln1")
        q = torch.einsum("btc,nch->btnh", h, sd[f"{p}.attn.W_Q"]) + sd[f"{p}.attn.b_Q"]
        k = torch.einsum("btc,nch->btnh", h, sd[f"{p}.attn.W_K"]) + sd[f"{p}.attn.b_K"]
        v = torch.einsum("btc,nch->btnh", h, sd[f"{p}.attn.W_V"]) + sd[f"{p}.attn.b_V"]
        scores = torch.einsum("bqnh,bknh->bnqk", q, k) / cfg.d_head ** 0.5
        pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        z = torch.einsum("bnqk,bknh->bqnh", pattern, v)
        x = x + torch.einsum("btnh,nhc->btc", z, sd[f"{p}.attn.W_O"]) + sd[f"{p}.attn.b_O"]
        h = norm(x, f"{p}.ln2")
        x = x + act(h @ sd[f"{p}.mlp.W_in"] + sd[f"{p}.mlp.b_in"]) @ sd[f"{p}.mlp.W_out"] + sd[f"{p}.mlp.b_out"]
    return norm(x, "ln_final") @ sd["unembed.W_U"] + sd["unembed.b_U"]


@pytest.mark.parametrize("cfg", [
    TransformerConfig(d_vocab=3, n_ctx=6, n_layers=2, d_model=8, n_heads=2, d_head=3, d_mlp=12, act_fn="relu"),
    TransformerConfig(d_vocab=2, n_ctx=6, n_layers=2, d_model=8, n_heads=3, d_head=4, d_mlp=10, act_fn="gelu"),
    TransformerConfig(d_vocab=3, n_ctx=6, n_layers=1, d_model=8, n_heads=1, d_head=8, d_mlp=16,
                      act_fn="gelu", normalization_type=None),
], ids=["ln-relu", "ln-gelu", "noln-gelu"])
def test_matches_torch(cfg):
    rng = np.random.default_rng(0)
    m = Transformer(cfg, dtype=np.float64, seed=0)
    m.params.data[...] = rng.standard_normal(m.params.size) * 0.5     # LN gains and biases random too
    tokens = rng.integers(0, cfg.d_vocab, (3, 5))                     # T = 5 < n_ctx
    targets = rng.integers(0, cfg.d_vocab, (3, 5))

    logits, cache = m.forward(tokens)
    loss, probs = ops.cross_entropy_forward(logits, targets)
    m.params.zero_grad()
    m.backward(ops.cross_entropy_backward(probs, targets), cache)

    sd = {name: torch.tensor(value, dtype=torch.float64, requires_grad=True)
          for name, value in m.params.state_dict().items()}
    t_logits = torch_forward(sd, cfg, torch.tensor(tokens))
    t_loss = F.cross_entropy(t_logits.reshape(-1, cfg.d_vocab), torch.tensor(targets).reshape(-1))
    t_loss.backward()

    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=0, atol=TOL)
    assert abs(loss - t_loss.item()) < TOL
    for name in m.params.names():
        np.testing.assert_allclose(m.params.grads[name], sd[name].grad.numpy(), rtol=0, atol=TOL, err_msg=name)


def test_masked_training_steps_match_torch():
    """Path-star training (masked loss, clipping, AdamW, warmup) step for step against torch.optim.AdamW and
    torch's clip_grad_norm_ from the same weights on the same batches: if tinyseq does not learn a task that a
    PyTorch model learns, the cause is the setup (schedule, budget, init), not the step."""
    from tinyseq import pathstar as ps
    from tinyseq.objectives import objective_from
    from tinyseq.optim import adamw_step, lr_at
    from tinyseq.train import TrainConfig, TrainState, task_for, train_step

    spec = ps.parse_spec("pathstar:d=2,l=3,n=6")
    cfg = TransformerConfig(d_vocab=spec.vocab, n_ctx=spec.n_ctx, n_layers=2, d_model=8, n_heads=2, d_head=4,
                            d_mlp=16)
    m = Transformer(cfg, dtype=np.float64, seed=0)
    sd = {name: torch.nn.Parameter(torch.tensor(value.copy())) for name, value in m.params.state_dict().items()}
    opt = torch.optim.AdamW(list(sd.values()), lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    plan = TrainConfig(lr=1e-2, warmup=3, steps=6, batch=16, objective="reverse").validate()
    objective = objective_from(plan)
    task = task_for(spec, objective)                                        # train()'s own step and task
    state = TrainState(adam_m=np.zeros_like(m.params.data), adam_v=np.zeros_like(m.params.data))
    ours, theirs = np.random.default_rng(5), np.random.default_rng(5)      # the same batches
    for step in range(6):
        lr = lr_at(plan, step, step / 6)
        loss, _, _ = train_step(m, task, objective, plan, state, ours, lr, adamw_step)
        state.step += 1
        inputs, targets, mask = ps.sample_batch(spec, theirs, 16, "reverse")
        ce = F.cross_entropy(torch_forward(sd, cfg, torch.tensor(inputs)).reshape(-1, cfg.d_vocab),
                             torch.tensor(targets).reshape(-1), reduction="none")
        w = torch.tensor(mask, dtype=torch.float64).reshape(-1)
        t_loss = (ce * w).sum() / w.sum()                  # the mean over the path tokens only
        opt.zero_grad()
        t_loss.backward()
        torch.nn.utils.clip_grad_norm_(list(sd.values()), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        assert abs(loss - t_loss.item()) < TOL
    for name in m.params.names():
        np.testing.assert_allclose(m.params[name], sd[name].detach().numpy(), rtol=0, atol=1e-9, err_msg=name)
