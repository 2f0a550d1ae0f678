"""Windows -> padded tensor batches.

Dynamic padding pads each batch to its longest window; length grouping puts windows of
similar length together so that little is padded. On FUNSD a pad-to-512 batch is over half
padding (metrics/data.json: pad_share_at_max_length). `pad_to` restores the naive recipe
for the benchmark.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from layoutpeft.paths import TOKENIZED_DIR

FIELDS = ("input_ids", "bbox", "labels", "word_ids")


def load_windows(split: str, folder: Path = TOKENIZED_DIR) -> list[dict]:
    """One split as a list of windows with tensors prebuilt (no per-step conversion)."""
    from datasets import load_from_disk

    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"{folder}: no tokenized data (run the `tokenize` stage)")
    dataset = load_from_disk(str(folder))[split]
    windows = []
    for row in dataset:
        window = {"doc_id": row["doc_id"], "window": row["window"]}
        for key in FIELDS:
            window[key] = torch.tensor(row[key], dtype=torch.long)
        windows.append(window)
    return windows


def load_meta(folder: Path = TOKENIZED_DIR) -> dict:
    return json.loads((folder / "meta.json").read_text())


def batch_order(
    lengths: list[int], batch_size: int, shuffle: bool, group_by_length: bool, seed: int, group_size: int = 4
) -> list[list[int]]:
    """Indices per batch. Grouping sorts within shuffled mega-batches of `group_size` batches, then
    shuffles the batches. Small mega-batches keep batch members changing across epochs and seeds
    (one mega-batch over the whole training set would give the same batches every epoch)."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if group_by_length:
        mega = batch_size * group_size
        order = [
            i for start in range(0, len(order), mega) for i in sorted(order[start : start + mega], key=lambda i: -lengths[i])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    return batches


def collate(windows: list[dict], pad_token_id: int, pad_to: int | None = None, n_virtual: int = 0) -> dict:
    """Pad to the longest window (or to `pad_to`); prepend room for `n_virtual` prompt tokens.

    PEFT prepends virtual tokens to the embeddings and the attention mask but not to `bbox`:
    we prepend zero boxes so shapes match, and the caller drops those positions from the logits.
    """
    length = pad_to or max(len(w["input_ids"]) for w in windows)
    n = len(windows)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    bbox = torch.zeros((n, length + n_virtual, 4), dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    for row, window in enumerate(windows):
        size = len(window["input_ids"])
        input_ids[row, :size] = window["input_ids"]
        bbox[row, n_virtual : n_virtual + size] = window["bbox"]
        attention_mask[row, :size] = 1
        labels[row, :size] = window["labels"]
    return {
        "input_ids": input_ids,
        "bbox": bbox,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "labels": labels,
    }


def bucket_length(longest: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket that holds a batch's longest window (None: no buckets, or longer than all,
    so the batch keeps its own length). A few fixed lengths let torch.compile build a few static
    graphs instead of one per padded length."""
    return next((b for b in buckets if b >= longest), None)


def batches(
    windows: list[dict],
    batch_size: int,
    pad_token_id: int,
    *,
    shuffle: bool = False,
    group_by_length: bool = True,
    group_size: int = 4,
    seed: int = 0,
    pad_to: int | None = None,
    n_virtual: int = 0,
    buckets: tuple[int, ...] = (),
):
    """Yield (indices, batch) pairs over `windows`. Without shuffling (inference), windows are
    sorted by length over the whole split: order does not matter there, padding does. `buckets`:
    each batch padded up to the smallest that holds it (bucket_length)."""
    lengths = [len(w["input_ids"]) for w in windows]
    size = group_size if shuffle else max(1, math.ceil(len(windows) / batch_size))
    for indices in batch_order(lengths, batch_size, shuffle, group_by_length, seed, size):
        length = pad_to or bucket_length(max(lengths[i] for i in indices), buckets)
        yield indices, collate([windows[i] for i in indices], pad_token_id, length, n_virtual)


def to_device(batch: dict, device: torch.device, non_blocking: bool = False) -> dict:
    """Copy a batch to `device`; on CUDA with non_blocking, from pinned memory so the copy is
    truly asynchronous (from pageable memory a non-blocking copy still waits)."""
    if non_blocking and device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
