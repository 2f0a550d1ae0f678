"""params.yaml, read once and checked once, as typed settings.

`load_params` reads YAML 1.2 with ruamel, the parser DVC itself uses, so a value that
`dvc exp run -S` writes (e.g. 5e-05) reads back as the number it is. Each section has a
frozen dataclass built by `from_params`, which names the key at fault on any bad value.
Stages read exactly the keys their `params:` list in dvc.yaml declares (tests check this).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layoutpeft.errors import ParamsError

PARAMS_FILE = Path("params.yaml")
_MISSING = object()

__all__ = [
    "ParamsError",
    "load_params",
    "get",
    "number_in",
    "choice",
    "SourceConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "EvaluateConfig",
    "StudyConfig",
]


def _plain(node: Any) -> Any:
    """ruamel's commented maps/sequences -> dict/list; its scalar subclasses -> plain Python values."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def load_yaml(path: str | Path, what: str = "file") -> Any:
    from ruamel.yaml import YAML, YAMLError

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: {what} not found (run from the repository root)")
    try:
        return _plain(YAML(typ="safe", pure=False).load(path.read_text()))
    except YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    params = load_yaml(path, "params file")
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def get(params: dict, dotted: str, kind: type | tuple[type, ...], default: Any = _MISSING, where: str = "params.yaml") -> Any:
    """params[dotted] checked against `kind`; ParamsError names the key otherwise."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise ParamsError(f"{where}: missing key '{dotted}'")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(node, bool) and bool not in kinds:  # a `true` where a number is expected
        ok = False
    elif float in kinds and isinstance(node, int):
        ok, node = True, float(node) if int not in kinds else node
    else:
        ok = isinstance(node, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ParamsError(f"{where}: key '{dotted}' must be {names}, got {node!r}")
    return node


def number_in(params: dict, dotted: str, low: float, high: float, kind=float, where: str = "params.yaml", **kw) -> Any:
    value = get(params, dotted, kind, where=where, **kw)
    if not (low <= value <= high):
        raise ParamsError(f"{where}: key '{dotted}' must be in [{low}, {high}], got {value!r}")
    return value


def choice(params: dict, dotted: str, options: tuple, where: str = "params.yaml", **kw) -> Any:
    value = get(params, dotted, type(options[0]), where=where, **kw)
    if value not in options:
        raise ParamsError(f"{where}: key '{dotted}' must be one of {', '.join(map(str, options))}, got {value!r}")
    return value


class _Section:
    def as_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]  # every section is a dataclass


@dataclass(frozen=True)
class SourceConfig(_Section):
    """`data.url`, `data.md5`, `data.dataset.path`, `data.dataset.splits` — read by the download stage.
    A dataset path (a Hugging Face dataset) replaces the FUNSD zip."""

    url: str
    md5: str
    dataset_path: str | None = None
    dataset_splits: dict | None = None

    @classmethod
    def from_params(cls, params: dict) -> SourceConfig:
        path = get(params, "data.dataset.path", (str, type(None)), default=None)
        if path is not None and not path.strip():
            raise ParamsError("params.yaml: key 'data.dataset.path' is empty (null: the FUNSD zip of data.url)")
        splits = get(params, "data.dataset.splits", dict, default={"train": "train", "test": "test"})
        if sorted(splits) != ["test", "train"] or not all(isinstance(v, str) and v for v in splits.values()):
            raise ParamsError(f"params.yaml: key 'data.dataset.splits' must map train and test to split names, got {splits!r}")
        return cls(get(params, "data.url", str), get(params, "data.md5", str), path, splits)


@dataclass(frozen=True)
class DataConfig(_Section):
    """The rest of `data:` — read by the tokenize stage."""

    val_fraction: float
    split_seed: int
    max_length: int
    prompt_reserve: int
    labels: dict | None = None  # data.labels: {dataset type: new type | null}, renamed/merged/dropped types
    dataset_columns: dict | None = None  # data.dataset.columns: words, boxes, tags (+ id, width, height)
    dataset_boxes: str = "normalized"  # data.dataset.boxes: normalized (0-1000) | pixels

    @classmethod
    def from_params(cls, params: dict) -> DataConfig:
        from layoutpeft.labels import check_label_map

        max_length = number_in(params, "data.max_length", 8, 512, kind=int)
        return cls(
            # > 0: model selection needs a validation split; the test split is never used for it.
            val_fraction=number_in(params, "data.val_fraction", 0.01, 0.9),
            split_seed=get(params, "data.split_seed", int),
            max_length=max_length,
            prompt_reserve=number_in(params, "data.prompt_reserve", 0, max_length - 8, kind=int),
            labels=check_label_map(get(params, "data.labels", (dict, type(None)), default=None)) or None,
            dataset_columns=dataset_columns(params),
            dataset_boxes=choice(params, "data.dataset.boxes", ("normalized", "pixels"), default="normalized"),
        )


DEFAULT_COLUMNS = {"words": "words", "boxes": "bboxes", "tags": "ner_tags"}


def dataset_columns(params: dict) -> dict:
    """data.dataset.columns: the dataset's column per role (words, boxes, tags required; id, width, height)."""
    columns = get(params, "data.dataset.columns", dict, default=DEFAULT_COLUMNS)
    roles = ("words", "boxes", "tags", "id", "width", "height")
    for role, name in columns.items():
        if role not in roles:
            raise ParamsError(f"params.yaml: key 'data.dataset.columns.{role}': unknown role (roles: {', '.join(roles)})")
        if not (isinstance(name, str) and name) and name is not None:
            raise ParamsError(f"params.yaml: key 'data.dataset.columns.{role}' must be a column name, got {name!r}")
    missing = [r for r in roles[:3] if not columns.get(r)]
    if missing:
        raise ParamsError(f"params.yaml: key 'data.dataset.columns' has no {missing[0]!r} column")
    return {role: name for role, name in columns.items() if name}


@dataclass(frozen=True)
class ModelConfig(_Section):
    """`model:` — the checkpoint and how new 2-D position tables of a BERT checkpoint start."""

    checkpoint: str
    position_init: str = "zero"
    new_tables: str = "train"
    tables_lr: float | None = None  # None: each method's own lr
    architecture: str = "auto"  # the backbone: auto (from the checkpoint's config) | layoutlm | lilt | layoutlmv3

    @staticmethod
    def checkpoint_from_params(params: dict, check_source: bool = True) -> str:
        from layoutpeft.modeling import check_checkpoint

        checkpoint = get(params, "model.checkpoint", str)
        if not checkpoint.strip():
            raise ParamsError("params.yaml: key 'model.checkpoint' is empty")
        if check_source:
            check_checkpoint(checkpoint)
        return checkpoint

    @classmethod
    def from_params(cls, params: dict, check_source: bool = True) -> ModelConfig:
        from layoutpeft.modeling import ARCHITECTURES, POSITION_INITS

        tables_lr = get(params, "model.tables_lr", (float, type(None)), default=None)
        if tables_lr is not None and tables_lr <= 0:
            raise ParamsError(f"params.yaml: key 'model.tables_lr' must be positive or null, got {tables_lr!r}")
        return cls(
            cls.checkpoint_from_params(params, check_source),
            choice(params, "model.position_init", POSITION_INITS),
            choice(params, "model.new_tables", ("train", "frozen")),
            tables_lr,
            choice(params, "model.architecture", ARCHITECTURES, default="auto"),
        )


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ADAMW_IMPLS = ("fused", "foreach", "for_loop")  # engine.make_optimizer
FROZEN_WEIGHTS = ("fp32", "auto", "bf16")  # engine.frozen_weights_dtype


@dataclass(frozen=True)
class TrainConfig(_Section):
    """`train:` — shared by every train@ stage (and recorded with each run)."""

    max_epochs: int
    patience: int
    select_on: str
    batch_size: int
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    device: str
    precision: str
    group_by_length: bool
    group_size: int
    loss: str
    attention: str
    compile: bool
    threads: int
    adamw: str = "fused"
    collapse_epochs: int = 0
    frozen_weights: str = "fp32"  # engine.frozen_weights_dtype
    length_buckets: tuple[int, ...] = ()  # batching.bucket_length: () = pad each batch to its longest

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        return cls(
            max_epochs=number_in(params, "train.max_epochs", 1, 10_000, kind=int),
            patience=number_in(params, "train.patience", 0, 10_000, kind=int),
            select_on=choice(params, "train.select_on", ("f1", "loss")),
            batch_size=number_in(params, "train.batch_size", 1, 4096, kind=int),
            weight_decay=number_in(params, "train.weight_decay", 0.0, 1.0),
            warmup_ratio=number_in(params, "train.warmup_ratio", 0.0, 1.0),
            max_grad_norm=number_in(params, "train.max_grad_norm", 0.0, 1e6),
            device=choice(params, "train.device", ("auto", "cpu", "cuda")),
            precision=choice(params, "train.precision", PRECISIONS),
            group_by_length=get(params, "train.group_by_length", bool),
            group_size=number_in(params, "train.group_size", 1, 10_000, kind=int),
            loss=choice(params, "train.loss", ("batch_mean", "token_mean")),
            attention=choice(params, "train.attention", ("sdpa", "eager")),
            compile=get(params, "train.compile", bool),
            threads=number_in(params, "train.threads", 0, 1024, kind=int),
            adamw=choice(params, "train.adamw", ADAMW_IMPLS, default="fused"),
            # absent from params written before it existed: those runs never stopped on a collapse
            collapse_epochs=number_in(params, "train.collapse_epochs", 0, 10_000, kind=int, default=0),
            # absent from params written before it existed: those runs held every weight in fp32
            frozen_weights=choice(params, "train.frozen_weights", FROZEN_WEIGHTS, default="fp32"),
            # absent from params written before it existed: those runs padded each batch to its longest
            length_buckets=length_buckets(params),
        )


def length_buckets(params: dict) -> tuple[int, ...]:
    """train.length_buckets: increasing window lengths a training batch is padded up to ([] = off)."""
    buckets = list(get(params, "train.length_buckets", (list, tuple), default=[]))  # a tuple: TrainConfig.as_dict()
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets) or buckets != sorted(set(buckets)):
        raise ParamsError(
            f"params.yaml: train.length_buckets must be increasing lengths >= 1 (e.g. [128, 256, 512]), got {buckets!r}"
        )
    return tuple(buckets)


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    """`evaluate:` — inference settings of the evaluate@ stages (device/precision come from the train record)."""

    batch_size: int
    timing_repeats: int = 3

    @classmethod
    def from_params(cls, params: dict) -> EvaluateConfig:
        return cls(
            batch_size=number_in(params, "evaluate.batch_size", 1, 4096, kind=int),
            timing_repeats=number_in(params, "evaluate.timing_repeats", 1, 100, kind=int, default=3),
        )


@dataclass(frozen=True)
class StudyConfig(_Section):
    """`study:` — which variants x seeds run, and the reference they are compared with."""

    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    reference: str | None
    # study.extra_runs {"<variant>-<seed>": {variant, seed}}: seeds added to some variants only (dvc.yaml's
    # train_extra@ / evaluate_extra@ run them), read as {variant: (seeds, ...)}
    extra_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    margin: float | None = None  # study.margin: equivalence margin in F1 points (two one-sided tests)

    @classmethod
    def from_params(cls, params: dict, summary_keys: bool = False) -> StudyConfig:
        """summary_keys: also read study.extra_runs and study.margin (the aggregate stage's keys, left
        unread elsewhere so that adding a seed to one variant reruns nothing but its runs and aggregate)."""
        names = get(params, "study.variants", list)
        seeds = get(params, "study.seeds", list)
        reference = get(params, "study.reference", str, default=None)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ParamsError(f"params.yaml: study.variants must be a non-empty list of variant names, got {names!r}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ParamsError(f"params.yaml: study.variants lists {', '.join(twice)} more than once")
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ParamsError(f"params.yaml: study.seeds must be a non-empty list of integers, got {seeds!r}")
        twice_seeds = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice_seeds:
            raise ParamsError(
                f"params.yaml: study.seeds lists seed {', '.join(map(str, twice_seeds))} more than once "
                "(DVC would merge the duplicate runs)"
            )
        if reference is not None and reference not in names:
            raise ParamsError(f"params.yaml: study.reference {reference!r} is not in study.variants {names}")
        if not summary_keys:
            return cls(tuple(names), tuple(seeds), reference)
        margin = get(params, "study.margin", (float, type(None)), default=None)
        if margin is not None and not 0 < margin < 100:
            raise ParamsError(f"params.yaml: key 'study.margin' must be F1 points in (0, 100), got {margin!r}")
        return cls(tuple(names), tuple(seeds), reference, extra_seeds(params, names, seeds), margin)


def extra_seeds(params: dict, names: list[str], seeds: list[int]) -> dict[str, tuple[int, ...]]:
    """study.extra_runs ({"lora-3": {variant: lora, seed: 3}}, the shape DVC's foreach can run) as
    {variant: (seeds, ...)}; each key must be "<variant>-<seed>" of a studied variant and a seed
    outside study.seeds (DVC would make two stages write the same run)."""
    runs = get(params, "study.extra_runs", (dict, type(None)), default=None) or {}
    found: dict[str, list[int]] = {}
    for key, run in runs.items():
        where = f"params.yaml: study.extra_runs.{key}"
        if not isinstance(run, dict) or set(run) != {"variant", "seed"}:
            raise ParamsError(f"{where}: must be {{variant: <name>, seed: <int>}}, got {run!r}")
        variant, seed = run["variant"], run["seed"]
        if variant not in names:
            raise ParamsError(f"{where}: variant {variant!r} is not in study.variants")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParamsError(f"{where}: seed must be an integer, got {seed!r}")
        if key != f"{variant}-{seed}":
            raise ParamsError(f"{where}: the key must be {variant}-{seed} (the run's name), got {key!r}")
        if seed in seeds:
            raise ParamsError(f"{where}: seed {seed} is already in study.seeds")
        found.setdefault(variant, []).append(seed)
    return {v: tuple(sorted(s)) for v, s in found.items()}
