"""The method catalogue: every fine-tuning method is one small declarative entry here.

An entry names the keys a variant may set (with their types and defaults), how to turn the
frozen/quantised base model into the trainable one, and what the method can do at
inference (merge its adapter or not). Variants in params.yaml pick a method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from stages.params import ParamsError

# Readable target names -> the exact LayoutLM module paths. Anchored at `layer.N.` so that
# attention_output (attention.output.dense) and output (the FFN's output.dense) never overlap.
TARGET_MODULES = {
    "query": r"attention\.self\.query",
    "key": r"attention\.self\.key",
    "value": r"attention\.self\.value",
    "attention_output": r"attention\.output\.dense",
    "intermediate": r"intermediate\.dense",
    "output": r"output\.dense",
}


def target_regex(names: list[str]) -> str:
    """A PEFT `target_modules` regex (matched with re.fullmatch) for readable target names."""
    return r".*\.layer\.\d+\.(" + "|".join(TARGET_MODULES[n] for n in names) + r")"


@dataclass(frozen=True)
class Key:
    kind: type | tuple
    default: Any = None
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


def _positive(value):
    return None if value > 0 else "must be > 0"


def _non_negative(value):
    return None if value >= 0 else "must be >= 0"


def _probability(value):
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _targets(value):
    if not value:
        return "must list at least one module"
    unknown = [v for v in value if v not in TARGET_MODULES]
    if unknown:
        return f"unknown module(s) {unknown}; choose from {sorted(TARGET_MODULES)}"
    return None


LR = {"lr": Key(float, required=True, check=_positive)}
TARGETS = {"targets": Key(list, default=["query", "value"], check=_targets)}
RANKED = {"r": Key(int, required=True, check=_positive), "alpha": Key(float, check=_positive),
          "dropout": Key(float, default=0.0, check=_probability)}


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    keys: dict = field(default_factory=dict)
    peft: bool = False
    mergeable: bool = False          # adapter folds into the base weights for inference
    quantized: bool = False          # base loaded in 4-bit NF4
    virtual_tokens: bool = False     # prepends virtual tokens (prompt methods)
    unsupported: str | None = None   # why the method cannot run on LayoutLM


def _lora_config(s, use_dora=False):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.TOKEN_CLS, r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                      target_modules=target_regex(s["targets"]), use_dora=use_dora)


def peft_config(s: dict, total_steps: int):
    """The PEFT config object for a resolved variant `s` (defaults filled in)."""
    import peft
    from peft import TaskType

    method = s["method"]
    cls = TaskType.TOKEN_CLS
    if method in ("lora", "qlora"):
        return _lora_config(s)
    if method == "dora":
        return _lora_config(s, use_dora=True)
    if method == "loha":
        return peft.LoHaConfig(task_type=cls, r=s["r"], alpha=s["alpha"], module_dropout=s["dropout"],
                               target_modules=target_regex(s["targets"]))
    if method == "lokr":
        return peft.LoKrConfig(task_type=cls, r=s["r"], alpha=s["alpha"], module_dropout=s["dropout"],
                               target_modules=target_regex(s["targets"]))
    if method == "adalora":
        # AdaLoRA prunes ranks on a schedule over total_step; it needs update_and_allocate() every step.
        tinit, tfinal = int(total_steps * 0.1), int(total_steps * 0.2)
        return peft.AdaLoraConfig(task_type=cls, init_r=s["init_r"], target_r=s["r"], lora_alpha=s["alpha"],
                                  lora_dropout=s["dropout"], target_modules=target_regex(s["targets"]),
                                  total_step=total_steps, tinit=tinit, tfinal=tfinal, deltaT=max(1, total_steps // 100))
    if method == "vera":
        return peft.VeraConfig(task_type=cls, r=s["r"], vera_dropout=s["dropout"], d_initial=s["d_initial"],
                               target_modules=target_regex(s["targets"]))
    if method == "ia3":
        return peft.IA3Config(task_type=cls, target_modules=target_regex(s["targets"]),
                              feedforward_modules=target_regex(s["feedforward"]))
    if method == "prompt_tuning":
        return peft.PromptTuningConfig(task_type=cls, num_virtual_tokens=s["virtual_tokens"])
    if method == "p_tuning":
        return peft.PromptEncoderConfig(task_type=cls, num_virtual_tokens=s["virtual_tokens"],
                                        encoder_hidden_size=s["encoder_hidden"])
    raise ParamsError(f"method {method!r} has no PEFT config")


CATALOGUE: dict[str, Method] = {m.name: m for m in [
    Method("full", "all weights", LR),
    Method("head", "classifier only (linear probe)", LR),
    Method("bitfit", "all biases + classifier (by hand: PEFT has no BitFit)", LR),
    Method("lora", "low-rank adapters", {**LR, **RANKED, **TARGETS}, peft=True, mergeable=True),
    Method("dora", "LoRA with weight decomposition", {**LR, **RANKED, **TARGETS}, peft=True, mergeable=True),
    Method("qlora", "LoRA on a 4-bit NF4 base (double quantisation)", {**LR, **RANKED, **TARGETS},
           peft=True, quantized=True),
    Method("loha", "low-rank Hadamard product", {**LR, **RANKED, **TARGETS}, peft=True, mergeable=True),
    Method("lokr", "low-rank Kronecker product", {**LR, **RANKED, **TARGETS}, peft=True, mergeable=True),
    Method("adalora", "LoRA with adaptive rank budget (r is the target rank)",
           {**LR, **RANKED, **TARGETS, "init_r": Key(int, default=None, check=_positive)}, peft=True, mergeable=True),
    Method("vera", "shared frozen random projections, trained scaling vectors",
           {**LR, **TARGETS, "r": Key(int, required=True, check=_positive),
            "dropout": Key(float, default=0.0, check=_probability),
            "d_initial": Key(float, default=0.1, check=_positive)}, peft=True, mergeable=True),
    Method("ia3", "learned rescaling of keys, values and FFN activations",
           {**LR, "targets": Key(list, default=["key", "value", "output"], check=_targets),
            "feedforward": Key(list, default=["output"], check=_targets)}, peft=True, mergeable=True),
    Method("prompt_tuning", "trained virtual-token embeddings",
           {**LR, "virtual_tokens": Key(int, default=20, check=_positive)}, peft=True, virtual_tokens=True),
    Method("p_tuning", "virtual tokens from a small prompt encoder",
           {**LR, "virtual_tokens": Key(int, default=20, check=_positive),
            "encoder_hidden": Key(int, default=128, check=_positive)}, peft=True, virtual_tokens=True),
    Method("prefix_tuning", "trained key/value prefixes", LR, peft=True,
           unsupported="LayoutLM's forward takes no past_key_values, so PEFT cannot inject the prefixes "
                       "(prefix tuning needs a model whose attention accepts a KV cache)"),
]}


def validate_variant(name: str, settings: dict, prompt_reserve: int | None = None) -> dict:
    """Check a resolved variant against its method; return it with defaults filled in."""
    where = f"params.yaml: variant {name!r}"
    method_name = settings.get("method")
    if method_name is None:
        raise ParamsError(f"{where}: missing key 'method' (one of {sorted(CATALOGUE)})")
    method = CATALOGUE.get(method_name)
    if method is None:
        raise ParamsError(f"{where}: unknown method {method_name!r}; choose from {sorted(CATALOGUE)}")
    if method.unsupported:
        raise ParamsError(f"{where}: method {method_name!r} is not supported: {method.unsupported}")
    filled = {"method": method_name}
    for key, value in settings.items():
        if key != "method" and key not in method.keys:
            raise ParamsError(f"{where}: unknown key {key!r} for method {method_name!r}; "
                              f"it takes {sorted(method.keys)}")
    for key, spec in method.keys.items():
        if key not in settings:
            if spec.required:
                raise ParamsError(f"{where}: missing key {key!r} for method {method_name!r}")
            filled[key] = spec.default
            continue
        value = settings[key]
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        ok = isinstance(value, kinds) and not isinstance(value, bool)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ParamsError(f"{where}: key {key!r} must be {'/'.join(k.__name__ for k in kinds)}, got {value!r}")
        problem = spec.check(value) if spec.check else None
        if problem:
            raise ParamsError(f"{where}: key {key!r} = {value!r} {problem}")
        filled[key] = value
    if "alpha" in method.keys and filled.get("alpha") is None:
        filled["alpha"] = float(2 * filled["r"])  # the common alpha = 2r, so sweeps keep the scale
    if method_name == "adalora":
        filled["init_r"] = filled["init_r"] or filled["r"] + filled["r"] // 2
        if filled["init_r"] < filled["r"]:
            raise ParamsError(f"{where}: key 'init_r' ({filled['init_r']}) must be >= r ({filled['r']})")
    if method_name == "ia3" and not set(filled["feedforward"]) <= set(filled["targets"]):
        raise ParamsError(f"{where}: key 'feedforward' {filled['feedforward']} must be a subset of "
                          f"'targets' {filled['targets']}")
    if method.virtual_tokens and prompt_reserve is not None and filled["virtual_tokens"] > prompt_reserve:
        raise ParamsError(f"{where}: key 'virtual_tokens' = {filled['virtual_tokens']} exceeds "
                          f"data.prompt_reserve = {prompt_reserve} (positions left free in each window)")
    if method.quantized:
        check_bitsandbytes(where)
    return filled


def check_bitsandbytes(where: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
        from bitsandbytes.functional import quantize_4bit
    except Exception as err:  # noqa: BLE001 - any import failure means no QLoRA
        raise ParamsError(f"{where}: QLoRA needs a working bitsandbytes (>= 0.47 for CPU): {err}") from err
    try:
        quantize_4bit(torch.ones(64, 64), quant_type="nf4")
    except Exception as err:  # noqa: BLE001
        raise ParamsError(f"{where}: bitsandbytes cannot quantise to 4-bit here: {err}") from err


def quantization_config(device: str):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        # The new classifier must stay a plain Linear, or PEFT cannot make it trainable.
        llm_int8_skip_modules=["classifier"])


def apply_method(model, settings: dict, total_steps: int):
    """Freeze/wrap `model` for the method; returns the model to train."""
    method = CATALOGUE[settings["method"]]
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad = True
        return model
    if method.name in ("head", "bitfit"):
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier.") or (method.name == "bitfit" and name.endswith(".bias"))
        return model
    from peft import get_peft_model

    if method.quantized:
        from peft import prepare_model_for_kbit_training

        # No gradient checkpointing: it trades time for memory we do not need at this size.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft_config(settings, total_steps)
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        if "not found in the base model" in str(err) or "Target modules" in str(err):
            raise ParamsError(f"variant with targets {settings.get('targets')}: no module of the model "
                              f"matches ({err})") from err
        raise
    return model


def step_hook(model, settings: dict) -> Callable[[int], None] | None:
    """Called after every backward, before gradients are zeroed (AdaLoRA's rank allocation)."""
    if settings["method"] == "adalora":
        return lambda step: model.base_model.update_and_allocate(step)
    return None


def n_virtual_tokens(settings: dict) -> int:
    return settings["virtual_tokens"] if CATALOGUE[settings["method"]].virtual_tokens else 0
