"""Networks: tokens -> logits, and the logits' gradient -> parameter gradients.

This package knows nothing about processes, beliefs or printing. Every model follows one small protocol:

    model.config                      a dataclass (TransformerConfig, RecurrentConfig) with commented defaults
    model.params                      Params: one flat buffer `data` + twin `grad`, named views (params.py)
    model.forward(tokens, x0=None)    tokens (B, T) int -> logits (B, T, V), cache
                                      x0, if given, replaces the input embedding (B, T, C) (for gradient checks)
    model.backward(dlogits, cache)    accumulates (+=) into model.params.grad; returns dx0 (B, T, C)
    model.activations(tokens)         dict hook name -> (B, T, width), in pipeline order

The forward cache is explicit (a dict of arrays) so the backward reads as the forward in reverse.
"""
