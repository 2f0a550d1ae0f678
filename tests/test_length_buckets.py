"""train.length_buckets: batches padded up to a few fixed lengths (so torch.compile builds a few static
graphs), the same training otherwise, and inductor's compiled graphs reused by a later process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from layoutpeft.config import ModelConfig, ParamsError, TrainConfig
from layoutpeft.data.batching import batches, bucket_length, load_windows
from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.train import engine
from layoutpeft.train.methods import Schedule, validate_variant

from fixtures import cpu_train_config, subprocess_env


def test_bucket_length_takes_the_smallest_that_holds_the_batch():
    assert bucket_length(100, (128, 256, 512)) == 128
    assert bucket_length(128, (128, 256, 512)) == 128
    assert bucket_length(129, (128, 256, 512)) == 256
    assert bucket_length(600, (128, 256, 512)) is None  # longer than all: its own length
    assert bucket_length(100, ()) is None


def test_batches_are_padded_to_their_bucket_and_keep_their_windows():
    windows = [
        {k: torch.arange(n) + 1 for k in ("input_ids", "labels", "word_ids")} | {"bbox": torch.zeros(n, 4, dtype=torch.long)}
        for n in (5, 9, 17, 30, 31, 3)
    ]
    got = [(i, b) for i, b in batches(windows, 2, 0, shuffle=True, seed=3, buckets=(8, 16, 32))]
    plain = [(i, b) for i, b in batches(windows, 2, 0, shuffle=True, seed=3)]
    assert [i for i, _ in got] == [i for i, _ in plain]  # the same batches in the same order
    for (indices, batch), (_, unpadded) in zip(got, plain, strict=True):
        longest = max(len(windows[i]["input_ids"]) for i in indices)
        assert batch["input_ids"].shape[1] == bucket_length(longest, (8, 16, 32))
        width = unpadded["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][:, :width], unpadded["input_ids"])
        assert int(batch["attention_mask"].sum()) == int(unpadded["attention_mask"].sum())


@pytest.mark.parametrize("bad", [[256, 128], [0, 128], [128, 128], [128.0], "128", [True]])
def test_bad_buckets_name_the_key(bad):
    params = {"train": {**cpu_train_config().as_dict(), "length_buckets": bad}}
    with pytest.raises(ParamsError, match="train.length_buckets"):
        TrainConfig.from_params(params)


def test_params_without_the_key_pad_each_batch_to_its_longest():
    params = {"train": {k: v for k, v in cpu_train_config().as_dict().items() if k != "length_buckets"}}
    assert TrainConfig.from_params(params).length_buckets == ()


def test_a_bucket_padded_batch_gives_the_same_loss_and_gradients(tiny_checkpoint, tiny_tokenized):
    """Padding is masked out of attention and loss: only the matmul shapes change. (In training the
    dropout masks differ too, because their random draws follow the tensor shapes: buckets change a
    run as a new dropout seed would, which is why they stay off until parity over seeds says otherwise.)"""
    train = load_windows("train", tiny_tokenized / "data" / "tokenized")
    variant = validate_variant("lora", {"method": "lora", "r": 2, "targets": ["query", "value"], "lr": 1e-2})
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint)), variant, torch.device("cpu"), Schedule(10, 5), labels=LEGACY_LABELS
    )
    model.eval()  # no dropout: the same computation on both batches

    def loss_and_grads(buckets: tuple[int, ...]):
        _, batch = next(iter(batches(train, 4, 0, shuffle=True, seed=1, buckets=buckets)))
        model.zero_grad()
        loss = engine.token_loss(engine.model_output(model, batch).logits, batch["labels"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        return batch["input_ids"].shape[1], float(loss), grads

    width, loss, grads = loss_and_grads(())
    bucket_width, bucket_loss, bucket_grads = loss_and_grads((width + 37, 1024))
    assert bucket_width == width + 37
    assert bucket_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == bucket_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(bucket_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


COMPILE_TWICE = """
import json, torch
from torch._dynamo.utils import counters
from layoutpeft.train.engine import compiled
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
step = compiled(model, True, (4, 8))
for length in (4, 8, 4, 8):  # batches padded to two buckets
    step(torch.randn(2, length, 8)).sum().backward()
print(json.dumps({k: dict(v) for k, v in counters.items()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="torch.compile on CPU needs a C++ compiler"
)
def test_a_second_process_loads_the_compiled_graphs_from_the_cache(tmp_path):
    """inductor's on-disk cache under $TORCHINDUCTOR_CACHE_DIR: the first process compiles one graph
    per bucket, the second finds them all (torch.compile needs a C++ compiler on CPU)."""
    env = subprocess_env({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"})

    def counts() -> dict:
        done = subprocess.run([sys.executable, "-c", COMPILE_TWICE], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = counts(), counts()
    assert first["stats"]["unique_graphs"] == 2  # one static graph per bucket, reused by the later batches
    assert first["inductor"].get("fxgraph_cache_miss", 0) >= 2 and first["inductor"].get("fxgraph_cache_hit", 0) == 0
    assert second["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert second["inductor"].get("fxgraph_cache_hit", 0) == first["inductor"]["fxgraph_cache_miss"]
    assert second["aot_autograd"].get("autograd_cache_hit", 0) == first["aot_autograd"].get("autograd_cache_miss")
    assert any((tmp_path / "inductor" / "fxgraph").rglob("*"))
