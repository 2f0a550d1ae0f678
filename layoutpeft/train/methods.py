"""The method catalogue: every fine-tuning method is one entry here, and only here.

An entry declares the keys a variant may set (types, defaults, checks), how it derives
defaults and checks keys against each other, and how it makes the model trainable: either a
PEFT config builder (`peft_config`) or a predicate over parameter names (`trains`) for
methods PEFT does not have. Flags say what it can do at inference (merge, 4-bit base,
virtual tokens). Adding a method is one `register(Method(...))` plus its test; nothing else
in the code names methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from layoutpeft.errors import ParamsError
from layoutpeft.train.prefix_attention import enable_kv_prefix

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


# Per backbone: LayoutLM (BERT), LayoutLMv3 (RoBERTa-like) and LiLT's text stream share these paths, so
# `targets: [query, value]` means the same matrices everywhere; LiLT adds its layout stream's.
BACKBONE_TARGETS = {
    "layoutlm": TARGET_MODULES,
    "layoutlmv3": TARGET_MODULES,
    "lilt": {
        **TARGET_MODULES,
        "layout_query": r"attention\.self\.layout_query",
        "layout_key": r"attention\.self\.layout_key",
        "layout_value": r"attention\.self\.layout_value",
        "layout_attention_output": r"attention\.layout_output\.dense",
        "layout_intermediate": r"layout_intermediate\.dense",
        "layout_output": r"layout_output\.dense",
    },
}
ALL_TARGETS = {name: path for targets in BACKBONE_TARGETS.values() for name, path in targets.items()}
# Methods that feed the model virtual-token embeddings: built and measured on LayoutLM only.
LAYOUTLM_ONLY = ("prompt_tuning", "p_tuning")


def target_regex(names: list[str]) -> str:
    """A PEFT `target_modules` regex (matched with re.fullmatch) for readable target names."""
    return r".*\.layer\.\d+\.(" + "|".join(ALL_TARGETS[n] for n in names) + r")"


def check_backbone(name: str, settings: dict, backbone: str) -> None:
    """A variant that cannot apply to `backbone`: a target name it lacks, or a LayoutLM-only method."""
    if settings["method"] in LAYOUTLM_ONLY and backbone != "layoutlm":
        raise ParamsError(
            f"variant {name!r}: method {settings['method']} cannot apply to {backbone} "
            "(virtual tokens are built for LayoutLM only)"
        )
    for key in ("targets", "feedforward"):
        lacking = [t for t in settings.get(key) or [] if t not in BACKBONE_TARGETS[backbone]]
        if lacking:
            raise ParamsError(
                f"variant {name!r}: {key} {lacking[0]!r}: {backbone} has no such module (its targets: "
                f"{', '.join(BACKBONE_TARGETS[backbone])})"
            )


@dataclass(frozen=True)
class Key:
    kind: type | tuple
    default: Any = None
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


def positive(value):
    return None if value > 0 else "must be > 0"


def probability(value):
    return None if 0 <= value < 1 else "must be in [0, 1)"


def known_targets(value):
    if not value:
        return "must list at least one module"
    unknown = [v for v in value if v not in ALL_TARGETS]
    return f"unknown module(s) {unknown}; choose from {sorted(ALL_TARGETS)}" if unknown else None


@dataclass(frozen=True)
class Schedule:
    """What a method may need to know about the training run it is built for."""

    total_steps: int
    steps_per_epoch: int = 1


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    keys: dict = field(default_factory=dict)
    # PEFT methods: (settings, schedule) -> a peft config. Others: param name -> trained?
    peft_config: Callable[[dict, Schedule], Any] | None = None
    trains: Callable[[str], bool] | None = None
    # (filled settings, where) -> None: derive defaults in place, raise ParamsError on bad combinations.
    finish: Callable[[dict, str], None] | None = None
    # model -> (step -> None), called after every optimizer step, before gradients are zeroed.
    after_step: Callable[[Any], Callable[[int], None]] | None = None
    loss_in_model: bool = False  # labels go to the model, whose loss adds the method's own terms
    # trained model -> parameters it effectively trains at the end (AdaLoRA prunes ranks), or None.
    effective_trainable: Callable[[Any], int] | None = None
    mergeable: bool = False  # adapter folds into the base weights for inference
    quantized: bool = False  # base loaded in 4-bit NF4
    virtual_tokens: bool = False  # prepends `virtual_tokens` trained tokens (prompt methods)
    # model -> None: what the method does to the base by hand, before PEFT wraps it (training) or loads the
    # adapter onto it (evaluate, predict, export, the exported card's recipe). Must not change any weight.
    prepare_base: Callable[[Any], None] | None = None
    merge_refused: str | None = None  # why `export --merge` refuses the method (not mergeable, with the reason)
    unsupported: str | None = None  # why the method cannot run on LayoutLM

    @property
    def peft(self) -> bool:
        return self.peft_config is not None


CATALOGUE: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the catalogue (a later entry of the same name replaces the earlier)."""
    if (method.peft_config is None) == (method.trains is None) and method.unsupported is None:
        raise ValueError(f"method {method.name!r}: give exactly one of peft_config or trains")
    CATALOGUE[method.name] = method
    return method


# ----------------------------------------------------------------- shared key sets and helpers
def positive_list(value):
    if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        return "must be a non-empty list of positive numbers"
    return None


# Every method takes its own lr, and may name its own lr grid for tuning (else study.lr_grid x lr).
# tables_lr: the lr of a BERT checkpoint's new 2-D position tables (default model.tables_lr). They are
# 4 x 1024 x hidden fresh weights: at the high lr some adapters need (VeRA, IA3, prompt tuning) they
# overfit (docs/protocol.md, "new 2-D tables"), so one lr for them keeps the method's lr the method's. Not tuned by the lr grid.
LR = {
    "lr": Key(float, required=True, check=positive),
    "lr_grid": Key(list, default=None, check=positive_list),
    "tables_lr": Key(float, default=None, check=positive),
}
TARGETS = {"targets": Key(list, default=["query", "value"], check=known_targets)}
# `dropout` is always dropout on the adapter's input (LoRA's lora_dropout, VeRA's vera_dropout).
# LoHa and LoKr have no input dropout: theirs drops the whole adapter of a layer for a step,
# so it has its own name, `module_dropout`.
RANKED = {
    "r": Key(int, required=True, check=positive),
    "alpha": Key(float, check=positive),
    "dropout": Key(float, default=0.0, check=probability),
}
HADAMARD = {
    "r": Key(int, required=True, check=positive),
    "alpha": Key(float, check=positive),
    "module_dropout": Key(float, default=0.0, check=probability),
}


def alpha_2r(s: dict, where: str) -> None:
    if s.get("alpha") is None:
        s["alpha"] = float(2 * s["r"])  # the common alpha = 2r, so rank sweeps keep the scale


# How LoRA's update scale follows the rank: the `rank_scaling` key of lora, dora and qlora. PEFT
# scales the update B A x by alpha / r, or by alpha / sqrt(r) with use_rslora (rsLoRA). Each
# convention's default alpha gives the scale 2 at r = 16 (ANCHOR_RANK), so they differ only away
# from r 16 (an explicit `alpha` replaces the default under every convention):
#   alpha_2r     alpha = 2r   scale 2 at every rank (the default, unchanged until measured: issue #29)
#   alpha_fixed  alpha = 32   scale 32 / r
#   rslora       alpha = 8    scale 8 / sqrt(r)
RANK_SCALINGS = ("alpha_2r", "alpha_fixed", "rslora")  # plots.scaling_note says each in words
ANCHOR_RANK = 16
FIXED_ALPHA, RSLORA_ALPHA = 2.0 * ANCHOR_RANK, 2.0 * ANCHOR_RANK**0.5


def known_scaling(value):
    return None if value in RANK_SCALINGS else f"must be one of {list(RANK_SCALINGS)}"


LORA_RANKED = {**RANKED, "rank_scaling": Key(str, default="alpha_2r", check=known_scaling)}


def lora_alpha(s: dict, where: str) -> None:
    """Fill alpha by the variant's rank_scaling (see RANK_SCALINGS)."""
    if s.get("alpha") is not None:
        return
    rule = s["rank_scaling"]
    if rule == "alpha_2r":
        alpha_2r(s, where)
    else:
        s["alpha"] = FIXED_ALPHA if rule == "alpha_fixed" else RSLORA_ALPHA


def head(name: str) -> bool:
    return name.startswith("classifier.")


def lora_config(s: dict, schedule: Schedule, use_dora: bool = False):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.TOKEN_CLS,
        r=s["r"],
        lora_alpha=s["alpha"],
        lora_dropout=s["dropout"],
        target_modules=target_regex(s["targets"]),
        use_dora=use_dora,
        use_rslora=s["rank_scaling"] == "rslora",
    )


def _loha(s, schedule):
    from peft import LoHaConfig, TaskType

    return LoHaConfig(
        task_type=TaskType.TOKEN_CLS,
        r=s["r"],
        alpha=s["alpha"],
        module_dropout=s["module_dropout"],
        target_modules=target_regex(s["targets"]),
    )


def _lokr(s, schedule):
    from peft import LoKrConfig, TaskType

    return LoKrConfig(
        task_type=TaskType.TOKEN_CLS,
        r=s["r"],
        alpha=s["alpha"],
        module_dropout=s["module_dropout"],
        target_modules=target_regex(s["targets"]),
    )


def _adalora(s, schedule):
    from peft import AdaLoraConfig, TaskType

    # AdaLoRA prunes ranks on a schedule over total_step; it needs update_and_allocate() every step.
    total = schedule.total_steps
    return AdaLoraConfig(
        task_type=TaskType.TOKEN_CLS,
        init_r=s["init_r"],
        target_r=s["r"],
        lora_alpha=s["alpha"],
        lora_dropout=s["dropout"],
        target_modules=target_regex(s["targets"]),
        total_step=total,
        tinit=int(total * 0.1),
        tfinal=int(total * 0.2),
        deltaT=max(1, total // 100),
    )


def adalora_ranks(model) -> dict[str, int]:
    """Rank each AdaLoRA layer keeps: from the final rank pattern PEFT records once the budget schedule
    has ended, else the initial rank (lora_E starts at zero, so non-zero counts mean nothing before)."""
    pattern = next(iter(model.peft_config.values())).rank_pattern or {}
    ranks = {}
    for name, p in model.named_parameters():
        if "lora_E" in name:
            key = next((k for k in pattern if name == k or name.endswith(f".{k}")), None)
            ranks[name] = int(sum(bool(x) for x in pattern[key])) if key is not None else p.shape[0]
    return ranks


def adalora_kept(model) -> int:
    """Trainable parameters the pruned AdaLoRA adapters still use (per kept rank: a row of A, a column of B, one E)."""
    modules = dict(model.named_modules())
    kept = 0
    for name, rank in adalora_ranks(model).items():
        module = modules[name.rsplit(".lora_E", 1)[0]]
        kept += rank * (module.in_features + module.out_features + 1)
    others = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)
    return kept + others


def _adalora_finish(s: dict, where: str) -> None:
    alpha_2r(s, where)
    s["init_r"] = s["init_r"] or s["r"] + s["r"] // 2
    if s["init_r"] < s["r"]:
        raise ParamsError(f"{where}: key 'init_r' ({s['init_r']}) must be >= r ({s['r']})")


def _vera(s, schedule):
    from peft import TaskType, VeraConfig

    return VeraConfig(
        task_type=TaskType.TOKEN_CLS,
        r=s["r"],
        vera_dropout=s["dropout"],
        d_initial=s["d_initial"],
        target_modules=target_regex(s["targets"]),
    )


def _ia3(s, schedule):
    from peft import IA3Config, TaskType

    return IA3Config(
        task_type=TaskType.TOKEN_CLS,
        target_modules=target_regex(s["targets"]),
        feedforward_modules=target_regex(s["feedforward"]),
    )


def _ia3_finish(s: dict, where: str) -> None:
    if not set(s["feedforward"]) <= set(s["targets"]):
        raise ParamsError(f"{where}: key 'feedforward' {s['feedforward']} must be a subset of 'targets' {s['targets']}")


def _prompt(s, schedule):
    from peft import PromptTuningConfig, TaskType

    return PromptTuningConfig(task_type=TaskType.TOKEN_CLS, num_virtual_tokens=s["virtual_tokens"])


def _p_tuning(s, schedule):
    from peft import PromptEncoderConfig, TaskType

    return PromptEncoderConfig(
        task_type=TaskType.TOKEN_CLS, num_virtual_tokens=s["virtual_tokens"], encoder_hidden_size=s["encoder_hidden"]
    )


VIRTUAL = {"virtual_tokens": Key(int, default=20, check=positive)}


def _prefix(s, schedule):
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(
        task_type=TaskType.TOKEN_CLS,
        num_virtual_tokens=s["virtual_tokens"],
        prefix_projection=s["prefix_projection"],
        encoder_hidden_size=s["encoder_hidden"],
    )


def _prefix_finish(s: dict, where: str) -> None:
    if s["prefix_projection"]:
        s["encoder_hidden"] = s["encoder_hidden"] or 128
    elif s["encoder_hidden"] is not None:
        raise ParamsError(
            f"{where}: key 'encoder_hidden' is the reparameterisation MLP's width: it needs prefix_projection: true"
        )


for _method in [
    Method("full", "all weights", LR, trains=lambda name: True),
    Method("head", "classifier only (linear probe)", LR, trains=head),
    Method(
        "bitfit",
        "all biases + classifier (by hand: PEFT has no BitFit)",
        LR,
        trains=lambda name: head(name) or name.endswith(".bias"),
    ),
    Method(
        "lora", "low-rank adapters", {**LR, **LORA_RANKED, **TARGETS}, peft_config=lora_config, finish=lora_alpha, mergeable=True
    ),
    Method(
        "dora",
        "LoRA with weight decomposition",
        {**LR, **LORA_RANKED, **TARGETS},
        peft_config=lambda s, sch: lora_config(s, sch, use_dora=True),
        finish=lora_alpha,
        mergeable=True,
    ),
    Method(
        "qlora",
        "LoRA on a 4-bit NF4 base (double quantisation)",
        {**LR, **LORA_RANKED, **TARGETS},
        peft_config=lora_config,
        finish=lora_alpha,
        quantized=True,
    ),
    Method(
        "loha", "low-rank Hadamard product", {**LR, **HADAMARD, **TARGETS}, peft_config=_loha, finish=alpha_2r, mergeable=True
    ),
    Method(
        "lokr", "low-rank Kronecker product", {**LR, **HADAMARD, **TARGETS}, peft_config=_lokr, finish=alpha_2r, mergeable=True
    ),
    Method(
        "adalora",
        "LoRA with adaptive rank budget (r is the target rank)",
        {**LR, **RANKED, **TARGETS, "init_r": Key(int, default=None, check=positive)},
        peft_config=_adalora,
        finish=_adalora_finish,
        mergeable=True,
        loss_in_model=True,
        after_step=lambda model: model.base_model.update_and_allocate,
        effective_trainable=lambda m: adalora_kept(m),
    ),
    Method(
        "vera",
        "shared frozen random projections, trained scaling vectors",
        {
            **LR,
            **TARGETS,
            "r": Key(int, required=True, check=positive),
            "dropout": Key(float, default=0.0, check=probability),
            "d_initial": Key(float, default=0.1, check=positive),
        },
        peft_config=_vera,
        mergeable=True,
    ),
    Method(
        "ia3",
        "learned rescaling of keys, values and FFN activations",
        {
            **LR,
            "targets": Key(list, default=["key", "value", "output"], check=known_targets),
            "feedforward": Key(list, default=["output"], check=known_targets),
        },
        peft_config=_ia3,
        finish=_ia3_finish,
        mergeable=True,
    ),
    Method("prompt_tuning", "trained virtual-token embeddings", {**LR, **VIRTUAL}, peft_config=_prompt, virtual_tokens=True),
    Method(
        "p_tuning",
        "virtual tokens from a small prompt encoder",
        {**LR, **VIRTUAL, "encoder_hidden": Key(int, default=128, check=positive)},
        peft_config=_p_tuning,
        virtual_tokens=True,
    ),
    # PEFT: the config, the prefix encoder (and its MLP), the mask extension, the cache of per-layer prefixes,
    # saving and loading. By hand (layoutpeft/train/prefix_attention.py): LayoutLM takes no past_key_values, so its
    # backbone gets that argument and its attention prepends each layer's prefix keys/values. The prefixes
    # take no input positions: no bbox padding, no data.prompt_reserve.
    Method(
        "prefix_tuning",
        "trained key/value prefixes in every self-attention layer (PEFT's prefix encoder; "
        "fed to LayoutLM's attention by layoutpeft)",
        {
            **LR,
            **VIRTUAL,
            "prefix_projection": Key(bool, default=False),
            "encoder_hidden": Key(int, default=None, check=positive),
        },
        peft_config=_prefix,
        finish=_prefix_finish,
        prepare_base=enable_kv_prefix,
        merge_refused="prefixes are extra keys and values every layer attends to, not a change of any weight, "
        "so there is nothing to fold into the base",
    ),
]:
    register(_method)


# ----------------------------------------------------------------- checking a variant
def method_of(settings: dict) -> Method:
    return CATALOGUE[settings["method"]]


def validate_variant(name: str, settings: dict, prompt_reserve: int | None = None, check_runtime: bool = True) -> dict:
    """Check a resolved variant against its method; return it with defaults filled in.

    check_runtime: also check what the method needs at run time (bitsandbytes for QLoRA)."""
    where = f"params.yaml: variant {name!r}"
    method_name = settings.get("method")
    if method_name is None:
        raise ParamsError(f"{where}: missing key 'method' (one of {sorted(CATALOGUE)})")
    method = CATALOGUE.get(method_name)
    if method is None:
        raise ParamsError(f"{where}: unknown method {method_name!r}; choose from {sorted(CATALOGUE)}")
    if method.unsupported:
        raise ParamsError(f"{where}: method {method_name!r} is not supported: {method.unsupported}")
    for key in settings:
        if key != "method" and key not in method.keys:
            raise ParamsError(f"{where}: unknown key {key!r} for method {method_name!r}; it takes {sorted(method.keys)}")
    filled = {"method": method_name}
    for key, spec in method.keys.items():
        if key not in settings:
            if spec.required:
                raise ParamsError(f"{where}: missing key {key!r} for method {method_name!r}")
            filled[key] = spec.default
            continue
        value = settings[key]
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ParamsError(f"{where}: key {key!r} must be {'/'.join(k.__name__ for k in kinds)}, got {value!r}")
        problem = spec.check(value) if spec.check else None
        if problem:
            raise ParamsError(f"{where}: key {key!r} = {value!r} {problem}")
        filled[key] = value
    if method.finish:
        method.finish(filled, where)
    if method.virtual_tokens and prompt_reserve is not None and filled["virtual_tokens"] > prompt_reserve:
        raise ParamsError(
            f"{where}: key 'virtual_tokens' = {filled['virtual_tokens']} exceeds "
            f"data.prompt_reserve = {prompt_reserve} (positions left free in each window)"
        )
    if method.quantized and check_runtime:
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


# ----------------------------------------------------------------- applying a method
def quantization_config(device: str):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        # The new classifier must stay a plain Linear, or PEFT cannot make it trainable.
        llm_int8_skip_modules=["classifier"],
    )


def apply_method(model, settings: dict, schedule: Schedule, new_modules: tuple[str, ...] = ()):
    """Freeze/wrap `model` for the variant's method; returns the model to train.

    new_modules: names of freshly initialised modules besides the head (the 2-D position tables
    of a BERT checkpoint) that every method must train, like the head, and save with its weights."""
    method = method_of(settings)
    if not method.peft:
        assert method.trains is not None  # a method is either PEFT (peft_config) or says what it trains
        for name, p in model.named_parameters():
            p.requires_grad = method.trains(name) or any(f".{m}." in f".{name}" for m in new_modules)
        return model
    from peft import get_peft_model

    if method.quantized:
        from peft import prepare_model_for_kbit_training

        # No gradient checkpointing: it trades time for memory we do not need at this size.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert method.peft_config is not None
    if method.prepare_base:
        method.prepare_base(model)
    config = method.peft_config(settings, schedule)
    if new_modules:  # PEFT adds the head itself (TOKEN_CLS); these train and save alongside it
        config.modules_to_save = sorted(set(config.modules_to_save or []) | set(new_modules))
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        if "not found in the base model" in str(err) or "Target modules" in str(err):
            raise ParamsError(f"variant with targets {settings.get('targets')}: no module of the model matches ({err})") from err
        raise


def after_step_hook(model, settings: dict) -> Callable[[int], None] | None:
    """The method's per-step callback (AdaLoRA's rank allocation), or None."""
    method = method_of(settings)
    return method.after_step(model) if method.after_step else None


def n_virtual_tokens(settings: dict) -> int:
    return settings["virtual_tokens"] if method_of(settings).virtual_tokens else 0
