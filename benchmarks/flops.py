"""Training FLOPs of a (PEFT-wrapped) LayoutLM model, counted per method from its own modules.

Counted (multiply-adds x 2), per window of ℓ real tokens (plus any virtual tokens):
  forward   2·in·out·ℓ for every linear layer (frozen or not, LoRA's A and B included)
            + 4·d·ℓ² per attention layer (scores Q·Kᵀ and the weighted sum of V);
  backward  input gradients 2·in·out·ℓ (and 8·d·ℓ² for attention) for every layer that some
            trainable parameter lies below, in forward order (nothing is back-propagated under
            the lowest trainable parameter: `head` only back-propagates into its classifier);
            weight gradients 2·in·out·ℓ only for linear layers whose weight is trained.
Not counted: elementwise work (LayerNorm, GELU, dropout, softmax), embedding look-ups and their
gradients, the optimizer, and per-step (not per-token) work of methods that rebuild a weight
delta every step (LoHa, LoKr, VeRA, DoRA's norm). Padding is not useful work: FLOPs are counted
on real lengths, so a padded recipe shows as lower achieved FLOP/s.

Approximation: "below" is module registration order, which for a BERT layer lists query, key and
value one after another, so the key/value input gradients of the first trained layer count even
when only the query is trained (a small over-count; LoRA's targets start at layer 0).
"""

from __future__ import annotations

import torch


def _own_trainable(module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def layer_flops(model, length: int, n_virtual: int = 0) -> dict:
    """FLOPs of one training step on one window of `length` real tokens, split by kind."""
    ell = length + n_virtual
    out = {"forward": 0, "backward_input": 0, "backward_weight": 0}
    # Prompt/P-tuning: the trained prompt enters at the bottom, so gradients flow all the way down.
    seen_trainable = n_virtual > 0
    hidden = None
    for name, module in model.named_modules():
        if ".pooler" in f".{name}":  # the pooler sees one token per window, and token classification ignores it
            continue
        kind = type(module).__name__
        if kind.endswith("SelfAttention"):
            hidden = getattr(module, "all_head_size", None) or getattr(module, "embed_dim", None)
        if kind.endswith("SelfOutput") and hidden:  # the attention core ran just before its output projection
            attention = 4 * hidden * ell * ell
            out["forward"] += attention
            if seen_trainable:
                out["backward_input"] += 2 * attention
        if isinstance(module, torch.nn.Linear):
            cost = 2 * module.in_features * module.out_features * ell
            out["forward"] += cost
            if seen_trainable:
                out["backward_input"] += cost
            if module.weight.requires_grad:
                out["backward_weight"] += cost
        if _own_trainable(module):
            seen_trainable = True
    out["total"] = out["forward"] + out["backward_input"] + out["backward_weight"]
    return out


def training_flops(model, lengths: list[int], n_virtual: int = 0) -> dict:
    """Total training FLOPs over windows of the given real lengths, and per real token."""
    totals = {"forward": 0, "backward_input": 0, "backward_weight": 0, "total": 0}
    for length in lengths:
        for key, value in layer_flops(model, length, n_virtual).items():
            totals[key] += value
    tokens = sum(lengths)
    return {
        **totals,
        "tokens": tokens,
        "per_token": totals["total"] / max(tokens, 1),
        "forward_per_token": totals["forward"] / max(tokens, 1),
    }
