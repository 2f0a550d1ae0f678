"""Builders for the test fixtures: a tiny BERT checkpoint, tiny FUNSD zips, a tiny DVC project.

Importable from any test (pytest puts tests/ on sys.path): `from fixtures import make_funsd_zip`.
Everything here is deterministic and needs no network.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import shutil
import stat
import string
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Environment for anything that could reach the network (transformers, datasets, dvc).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# --------------------------------------------------------------------------------------------
# Tiny tokenizer + BERT checkpoint
# --------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
_CHARS = list(string.ascii_lowercase + string.digits + string.punctuation)
# Whole words of the fixture forms: each is a single token. Anything else is spelled out in
# single characters (`smith` -> s ##m ##i ##t ##h, `2024` -> 2 ##0 ##2 ##4); `☃` is [UNK].
WHOLE_WORDS = [
    "company",
    "report",
    "date",
    "name",
    "john",
    "page",
    "amount",
    "total",
    "due",
    "paid",
    "tax",
    "yes",
    "no",
    "ok",
    "form",
]
VOCAB = SPECIAL_TOKENS + _CHARS + [f"##{c}" for c in _CHARS] + WHOLE_WORDS
TOKEN_ID = {token: index for index, token in enumerate(VOCAB)}

TINY_BERT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    type_vocab_size=2,
)


def build_tokenizer(vocab: list[str] | None = None):
    """A BertTokenizerFast over `vocab` (default VOCAB), built from a `tokenizers` object.

    Not BertTokenizerFast(vocab_file=...): in transformers 5 that silently builds a 5-token
    vocabulary (the trap in NOTES.md).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = list(VOCAB if vocab is None else vocab)
    ids = {token: index for index, token in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )


def make_checkpoint(folder: Path, vocab: list[str] | None = None, seed: int = 0) -> Path:
    """Save a tiny random BertModel (model_type bert) and its tokenizer in `folder`."""
    import torch
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=0, **TINY_BERT)
    torch.manual_seed(seed)
    model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------
# Tiny FUNSD forms
# --------------------------------------------------------------------------------------------

PAGE = (200, 100)  # width, height of every default page image: x * 5, y * 10 on the 0..1000 grid

# The standard form: 6 entities, 9 words, 16 tokens with the tiny vocabulary:
#   company report | date | 2 ##0 ##2 ##4 | name | john s ##m ##i ##t ##h | page 1
STANDARD = [
    ("header", [("company", [10, 5, 60, 15]), ("report", [62, 5, 100, 15])]),
    ("question", [("date", [10, 20, 30, 30])]),
    ("answer", [("2024", [40, 20, 70, 30])]),
    ("question", [("name", [10, 40, 30, 50])]),
    ("answer", [("john", [40, 40, 60, 50]), ("smith", [62, 40, 90, 50])]),
    ("other", [("page", [150, 90, 170, 98]), ("1", [172, 90, 180, 98])]),
]
LONG_FILLER = ["amount", "total", "due", "paid", "tax"] * 10  # 50 single-token words


def entity(index: int, label: str, words: list[tuple[str, list]]) -> dict:
    """One FUNSD `form` record."""
    boxes = [box for _, box in words] or [[0, 0, 0, 0]]
    box = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return {
        "id": index,
        "text": " ".join(text for text, _ in words),
        "box": box,
        "label": label,
        "words": [{"text": text, "box": list(wbox)} for text, wbox in words],
        "linking": [],
    }


def form_of(entities: list[tuple[str, list]], size: tuple[int, int] = PAGE) -> dict:
    return {"size": size, "form": [entity(i, label, words) for i, (label, words) in enumerate(entities)]}


def _filler(words: list[str], y: int) -> list[tuple[str, list]]:
    return [(w, [5 + (i % 10) * 19, y + (i // 10) * 6, 20 + (i % 10) * 19, y + 5 + (i // 10) * 6]) for i, w in enumerate(words)]


def default_forms() -> dict:
    """{split folder: {form name: {"size": (w, h), "form": [records]}}}: 8 training and 3 test forms.

    Hand counts (see tests/test_tokenize.py): training 8 documents, 123 words (125 raw),
    51 entities, 9 windows at 54 content tokens; testing 3 documents, 77 words, 19 entities,
    4 windows. One `☃` ([UNK]) in train_04.
    """
    std = copy.deepcopy(STANDARD)
    training = {f"train_{i:02d}": form_of(std) for i in range(8)}
    # train_01: an entity whose first word is empty, and one of whitespace only.
    training["train_01"] = form_of(
        std + [("answer", [("", [100, 60, 110, 70]), ("ok", [112, 60, 130, 70])]), ("other", [(" ", [0, 80, 5, 85])])]
    )
    # train_02: a word box beyond the page and with negative coordinates (clamped to 0..1000).
    off_page = copy.deepcopy(std)
    off_page[0] = ("header", [("company", [-10, -5, 250, 130]), ("report", [62, 5, 100, 15])])
    training["train_02"] = form_of(off_page)
    # train_03: 50 one-token question words, then the standard form: 66 tokens, two windows;
    # `2024` (4 tokens) does not fit after token 53 and opens the second window.
    training["train_03"] = form_of([("question", _filler(LONG_FILLER, 55))] + std)
    # train_04: an [UNK] word.
    unk = copy.deepcopy(std)
    unk[5] = ("other", [("page", [150, 90, 170, 98]), ("☃", [172, 90, 180, 98])])
    training["train_04"] = form_of(unk)

    testing = {f"test_{i:02d}": form_of(std) for i in range(3)}
    # test_01: the standard form, then 50 answer words: windows of 54 and 12 content tokens.
    testing["test_01"] = form_of(std + [("answer", _filler(["yes", "no"] * 25, 55))])
    testing["test_02"] = form_of(std, size=(400, 200))
    return {"training_data": training, "testing_data": testing}


def forms_with_signature() -> dict:
    """default_forms() with a fourth entity type: a `signature` entity ("john smith") on every form."""
    forms = default_forms()
    for split_forms in forms.values():
        for spec in split_forms.values():
            entities = spec["form"]
            entities.append(entity(len(entities), "signature", [("john", [100, 80, 130, 90]), ("smith", [132, 80, 160, 90])]))
    return forms


def png_bytes(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", size, color=255).save(buffer, format="PNG")
    return buffer.getvalue()


def md5_file(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def make_funsd_zip(
    path: Path,
    forms: dict | None = None,
    *,
    root: str = "dataset/",
    annotation_text: dict[str, str | bytes] | None = None,
    skip_images: tuple[str, ...] = (),
    extra_entries: tuple = (),
    link_entries: tuple = (),
    truncate_to: int | None = None,
    corrupt_entry: str | None = None,
) -> tuple[Path, str]:
    """Write a FUNSD-layout zip and return (path, md5).

    forms: as default_forms() (the default). Broken variants:
      annotation_text: {"training_data/train_00": "raw text"} replaces that annotation file's content;
      skip_images: ("testing_data/test_01", ...) leaves those PNGs out;
      extra_entries: (("../x", b"data"), ...) adds raw entries under exactly those names;
      link_entries: (("dataset/link", "/etc/passwd"), ...) adds symlink entries;
      truncate_to: cut the finished zip to this many bytes (negative: drop that many);
      corrupt_entry: flip bytes inside this entry's stored data (the central directory stays valid).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    forms = default_forms() if forms is None else forms
    annotation_text = annotation_text or {}
    import json

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for split, split_forms in forms.items():
            archive.writestr(zipfile.ZipInfo(f"{root}{split}/"), b"")
            for name, spec in split_forms.items():
                key = f"{split}/{name}"
                text = annotation_text.get(key)
                if text is None:
                    text = json.dumps({"form": spec["form"]}, ensure_ascii=False, indent=1)
                archive.writestr(f"{root}{split}/annotations/{name}.json", text)
                if key not in skip_images:
                    archive.writestr(f"{root}{split}/images/{name}.png", png_bytes(tuple(spec["size"])))
        for name, data in extra_entries:
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in link_entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix, so external_attr carries the file type
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    if corrupt_entry is not None:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(corrupt_entry)
        data = bytearray(path.read_bytes())
        # Local header: 30 bytes + name + extra; flip the entry's first data bytes.
        name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
        extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        for i in range(start, start + min(8, info.compress_size)):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    if truncate_to is not None:
        data = path.read_bytes()
        path.write_bytes(data[:truncate_to])
    return path, md5_file(path)


# --------------------------------------------------------------------------------------------
# A tiny DVC project
# --------------------------------------------------------------------------------------------

PROJECT_FILES = ("dvc.yaml", "params.yaml", "profiles.yaml", ".dvcignore", ".gitignore")
PROJECT_DIRS = ("layoutpeft", "stages", "docs")


def subprocess_env(extra: dict | None = None) -> dict:
    """os.environ + offline settings, with this interpreter's bin folder first on PATH
    (DVC runs `python -m stages.<name>` through the shell)."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


def run(
    cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command; on failure raise AssertionError showing its stdout and stderr."""
    process = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=subprocess_env(env), text=True, capture_output=True, timeout=timeout
    )
    if check and process.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {process.returncode} in {cwd}\n"
            f"--- stdout ---\n{process.stdout}\n--- stderr ---\n{process.stderr}"
        )
    return process


def run_dvc(
    project: Path, *args: str, env: dict | None = None, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`dvc <args>` (this venv's dvc) in `project`, offline; raises with its output on failure."""
    return run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, check=check, timeout=timeout)


def git(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", *args], cwd=project)


def set_dotted(mapping: dict, dotted: str, value) -> None:
    node = mapping
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def edit_params(params_file: Path, overrides: dict) -> None:
    """Set dotted keys in a params.yaml, keeping its comments (ruamel round-trip)."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096
    data = yaml.load(params_file.read_text())
    for key, value in overrides.items():
        set_dotted(data, key, value)
    with open(params_file, "w") as handle:
        yaml.dump(data, handle)


# tokenize settings of the tiny fixtures: windows of 64 - 2 - 8 = 54 content tokens (56 in all).
TINY_DATA_SETTINGS = {"val_fraction": 0.15, "split_seed": 0, "max_length": 64, "prompt_reserve": 8}


def tiny_overrides(zip_path: Path, md5: str, checkpoint: Path) -> dict:
    return {
        "data.url": str(zip_path),
        "data.md5": md5,
        "model.checkpoint": str(checkpoint),
        "data.val_fraction": TINY_DATA_SETTINGS["val_fraction"],
        "data.split_seed": TINY_DATA_SETTINGS["split_seed"],
        "data.max_length": TINY_DATA_SETTINGS["max_length"],
        "data.prompt_reserve": TINY_DATA_SETTINGS["prompt_reserve"],
        "train.max_epochs": 2,
        "train.batch_size": 4,
        "study.seeds": [0],
        "study.variants": ["full", "lora"],
        "study.reference": "full",
        "study.tune_lr": False,  # one training per run; tests of tuning turn it on
    }


def make_project(
    folder: Path,
    zip_path: Path,
    md5: str,
    checkpoint: Path,
    overrides: dict | None = None,
    source: Path = REPO_ROOT,
    commit: bool = True,
) -> Path:
    """A fresh git + DVC repository holding this repo's stages/, dvc.yaml and params.yaml,
    with params set for the tiny fixtures (tiny_overrides) and then `overrides` (dotted keys)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    for name in PROJECT_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    edit_params(folder / "params.yaml", {**tiny_overrides(zip_path, md5, checkpoint), **(overrides or {})})
    git(folder, "init", "-q")
    git(folder, "config", "user.email", "tests@example.invalid")
    git(folder, "config", "user.name", "layoutpeft tests")
    git(folder, "config", "commit.gpgsign", "false")
    run_dvc(folder, "init", "-q")
    run_dvc(folder, "config", "core.analytics", "false")
    if commit:
        git(folder, "add", "-A")
        git(folder, "commit", "-q", "-m", "tiny project")
    return folder


def cpu_train_config(**overrides):
    """A TrainConfig for fast CPU tests (fp32, SDPA, length groups); keyword overrides replace fields."""
    from layoutpeft.config import TrainConfig

    fields = dict(
        max_epochs=2,
        patience=0,
        select_on="f1",
        batch_size=4,
        weight_decay=0.0,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        device="cpu",
        precision="fp32",
        group_by_length=True,
        group_size=4,
        loss="batch_mean",
        attention="sdpa",
        compile=False,
        threads=0,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def step_budget(windows, batch_size: int, pad_token_id: int, steps: int, n_virtual: int = 0):
    """An `epoch_batches` for engine.fit that stops after `steps` batches in all (a fixed step budget)."""
    from layoutpeft.data.batching import batches

    seen = {"steps": 0}

    def epoch_batches(epoch: int):
        for _, batch in batches(windows, batch_size, pad_token_id, shuffle=True, seed=epoch, n_virtual=n_virtual):
            if seen["steps"] >= steps:
                return
            seen["steps"] += 1
            yield batch

    return epoch_batches


# --------------------------------------------------------------------------------------------
# The same forms as a Hugging Face dataset
# --------------------------------------------------------------------------------------------

FUNSD_TAGS = ["O", "B-HEADER", "I-HEADER", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER"]


def funsd_rows(split_dir: Path, boxes: str = "pixels") -> list[dict]:
    """Rows (id, words, bboxes, ner_tags as BIO strings, width, height) read straight from a FUNSD split
    folder (annotations/*.json + images/*.png), as the published FUNSD datasets are built: every word
    of every entity, `other` as O. boxes: pixels as annotated, or normalized to 0-1000 (clamped)."""
    import json

    from PIL import Image

    rows = []
    for path in sorted((Path(split_dir) / "annotations").glob("*.json")):
        with Image.open(Path(split_dir) / "images" / f"{path.stem}.png") as image:
            width, height = image.size
        row = {"id": path.stem, "words": [], "bboxes": [], "ner_tags": [], "width": width, "height": height}
        for item in json.loads(path.read_text(encoding="utf-8"))["form"]:
            for index, word in enumerate(item["words"]):
                kind = item["label"].upper()
                row["words"].append(word["text"])
                box = [float(v) for v in word["box"]]
                if boxes == "normalized":
                    x0, x1 = sorted((box[0], box[2]))
                    y0, y1 = sorted((box[1], box[3]))
                    box = [
                        int(min(1000, max(0, round(1000 * v / size))))
                        for v, size in ((x0, width), (y0, height), (x1, width), (y1, height))
                    ]
                row["bboxes"].append(box)
                row["ner_tags"].append("O" if kind == "OTHER" else f"{'B' if index == 0 else 'I'}-{kind}")
        rows.append(row)
    return rows


def save_funsd_dataset(
    raw_dir: Path, out: Path, kind: str = "disk", boxes: str = "pixels", split_names: tuple[str, str] = ("train", "test")
) -> Path:
    """The FUNSD splits under raw_dir (training_data, testing_data) as a dataset at `out`:
    kind disk (save_to_disk, ner_tags a Sequence(ClassLabel)), parquet or jsonl (BIO strings)."""
    import json

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    out = Path(out)
    splits = {}
    for name, folder in zip(split_names, ("training_data", "testing_data"), strict=False):
        rows = funsd_rows(Path(raw_dir) / folder, boxes)
        if kind == "disk":
            number = Value("float32") if boxes == "pixels" else Value("int64")
            features = Features(
                {
                    "id": Value("string"),
                    "words": Sequence(Value("string")),
                    "bboxes": Sequence(Sequence(number, length=4)),
                    "ner_tags": Sequence(ClassLabel(names=FUNSD_TAGS)),
                    "width": Value("int64"),
                    "height": Value("int64"),
                }
            )
            for row in rows:
                row["ner_tags"] = [FUNSD_TAGS.index(t) for t in row["ner_tags"]]
            splits[name] = Dataset.from_list(rows, features=features)
        elif kind == "parquet":
            out.mkdir(parents=True, exist_ok=True)
            Dataset.from_list(rows).to_parquet(str(out / f"{name}.parquet"))
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if kind == "disk":
        DatasetDict(splits).save_to_disk(str(out))
    return out


def make_backbone_checkpoint(folder: Path, architecture: str, seed: int = 0) -> Path:
    """A tiny random LiLT or LayoutLMv3 (text + layout) model with the tiny tokenizer, saved in `folder`."""
    import torch
    from transformers import LayoutLMv3Config, LayoutLMv3Model, LiltConfig, LiltModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    shared = dict(
        vocab_size=len(tokenizer),
        pad_token_id=0,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=514,
        max_2d_position_embeddings=1024,
    )
    torch.manual_seed(seed)
    if architecture == "lilt":
        # LiLT splits its layout embedding in 6 (4 coordinates + 2 sizes): a hidden size divisible by 6
        model = LiltModel(LiltConfig(**{**shared, "hidden_size": 96}, channel_shrink_ratio=4), add_pooling_layer=False)
    else:  # 4 coordinates x 8 + 2 sizes x 16 = the hidden size
        model = LayoutLMv3Model(LayoutLMv3Config(**shared, coordinate_size=8, shape_size=16, visual_embed=False))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
