"""Key/value prefixes into LayoutLM's self-attention: the part of prefix tuning PEFT cannot do.

PEFT builds the prefixes (PrefixTuningConfig, its PrefixEncoder, with or without the
reparameterisation MLP), saves and loads them, and in its forward extends the attention mask
by `num_virtual_tokens` ones and hands the backbone a transformers `DynamicCache` holding one
(key, value) pair per layer as `past_key_values`. LayoutLM (transformers 5.23) declares no
`past_key_values` (PEFT refuses such a backbone) and its self-attention reads no cache. So, by
hand, `enable_kv_prefix(model)`:

1. gives the backbone a `past_key_values` argument (a subclass of LayoutLMModel, same weights
   and state-dict names, that passes it on through the `**kwargs` LayoutLM already threads
   down to every attention call);
2. numbers each self-attention module (`layer_idx`, as transformers' decoders do) so it can find
   its layer's pair in the cache;
3. registers, in transformers' AttentionInterface (its documented extension point), an
   attention function that prepends the layer's prefix keys and values, then runs the model's
   own attention (sdpa or eager) unchanged; and switches the model's attention to it.

Nothing else changes: queries, positions, the extended mask (PEFT's, covering prefix + tokens)
and every weight are LayoutLM's own. Without `past_key_values` the attention is the plain one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PREFIX = "layoutpeft_prefix_"


def prefixed(inner_name: str) -> Callable:
    """An attention function: the layer's cached prefix keys/values, then `inner_name`'s attention."""

    def attention(module, query, key, value, attention_mask, past_key_values=None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.layoutlm.modeling_layoutlm import eager_attention_forward

        if past_key_values is not None:
            layer = past_key_values.layers[module.layer_idx]
            key = torch.cat([layer.keys.to(key.dtype), key], dim=2)
            value = torch.cat([layer.values.to(value.dtype), value], dim=2)
        inner = ALL_ATTENTION_FUNCTIONS.get_interface(inner_name, eager_attention_forward)
        return inner(module, query, key, value, attention_mask, **kwargs)

    return attention


def layoutlm_with_prefix_class():
    from transformers import LayoutLMModel

    class LayoutLMModelWithPrefix(LayoutLMModel):
        """LayoutLMModel whose forward names `past_key_values` (PEFT checks the signature for it)."""

        def forward(
            self,
            input_ids=None,
            bbox=None,
            attention_mask=None,
            token_type_ids=None,
            position_ids=None,
            inputs_embeds=None,
            past_key_values=None,
            **kwargs,
        ):
            return super().forward(
                input_ids=input_ids,
                bbox=bbox,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                past_key_values=past_key_values,
                **kwargs,
            )

    return LayoutLMModelWithPrefix


_WITH_PREFIX: dict[str, type] = {}


def enable_kv_prefix(model) -> None:
    """Let a LayoutLMForTokenClassification take PEFT's prefix cache (in place; idempotent).

    Call before `get_peft_model(model, PrefixTuningConfig(...))` or `PeftModel.from_pretrained(model, folder)`."""
    from transformers import AttentionInterface

    backbone = model.layoutlm
    for index, layer in enumerate(backbone.encoder.layer):
        layer.attention.self.layer_idx = index
    current = model.config._attn_implementation or "eager"
    if not current.startswith(PREFIX):
        name = PREFIX + current
        AttentionInterface.register(name, prefixed(current))
        model.set_attn_implementation(name)
    if "cls" not in _WITH_PREFIX:
        _WITH_PREFIX["cls"] = layoutlm_with_prefix_class()
    if not isinstance(backbone, _WITH_PREFIX["cls"]):
        backbone.__class__ = _WITH_PREFIX["cls"]
