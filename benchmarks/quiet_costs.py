"""Quiet, interleaved cost benchmark of a study's variants: train step time, tokens/s and the tensor
memory of one training step, per variant, on the study's own windows, in one process.

    OMP_NUM_THREADS=1 python benchmarks/quiet_costs.py --params results/reference-minilm/params.yaml \
        --steps 3 --rounds 2 --out benchmarks/results/<date>-quiet-costs

In each round every variant's model is built (seed 0, the study's model settings and tables_lr;
one model in memory at a time) and takes one untimed warm-up step, on which its tensor memory is
measured: weights + gradients + AdamW state + the activations autograd saves for backward
(torch.autograd.graph's saved_tensors_hooks, each storage once, weights excluded). That is what
differs between methods; the process RSS (also recorded) holds the allocator's slack, so it cannot.
Then the variant runs `--steps` timed optimizer steps on the same real training batches (the
study's batch size, dynamic padding, length groups, seed 0's first batches), variants in rotating
order, so background load hits all alike. Reported: the median step time and real tokens/s over
all timed steps, with the load average before and after, the CPU flags and the command. `layoutpeft publish
NAME --rerender --quiet-costs <out>/costs.json` puts these figures into a study's table.
"""

from __future__ import annotations

import datetime
import gc
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, argument_parser

import torch

from layoutpeft.atomic import write_json, write_text
from layoutpeft.config import DataConfig, ModelConfig, StudyConfig, TrainConfig, load_params
from layoutpeft.data.batching import batches, load_meta, load_windows
from layoutpeft.provenance import describe
from layoutpeft.train import engine
from layoutpeft.train.methods import Schedule, n_virtual_tokens, validate_variant
from layoutpeft.train.variants import expand_sweeps, resolve

FUNSD_ZIP = ROOT.parent / "shared" / "funsd" / "dataset.zip"


def loadavg() -> list[float]:
    return [round(x, 2) for x in __import__("os").getloadavg()]


def tokenized(params: dict, cache: Path, zip_path: Path) -> Path:
    """The study's windows (its data and checkpoint settings), tokenized once into `cache`."""
    from layoutpeft.data.download import download
    from layoutpeft.data.windows import tokenize
    from stages.tokenize import read_params

    folder = cache / "tokenized"
    if not (folder / "meta.json").is_file():
        import hashlib

        md5 = hashlib.md5(zip_path.read_bytes()).hexdigest()
        download(str(zip_path), md5, cache / "raw")
        tokenize(cache / "raw", folder, cache / "data.json", read_params(params))
    return folder


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Variant:
    """One variant's model, optimizer and batches, and its measurements."""

    def __init__(
        self,
        name: str,
        settings: dict,
        params: dict,
        cfg: TrainConfig,
        windows: list[dict],
        pad: int,
        steps: int,
        device: torch.device,
        labels: list[str],
    ):
        self.name, self.settings, self.cfg, self.device, self.labels = name, settings, cfg, device, labels
        self.model_cfg = ModelConfig.from_params(params)
        self.n_virtual = n_virtual_tokens(settings)
        self.dtype = engine.resolve_precision(cfg.precision, device)
        self.batches = [
            b
            for _, b in batches(
                windows, cfg.batch_size, pad, shuffle=True, group_by_length=cfg.group_by_length, seed=0, n_virtual=self.n_virtual
            )
        ][: steps + 1]
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.memory: dict = {}

    def build(self) -> None:
        """The model (seed 0, so every round starts from the same weights) and its AdamW; one untimed
        warm-up step, on which the tensor memory is measured."""
        engine.seed_everything(0)
        self.model, source = engine.build_model(
            self.model_cfg, self.settings, self.device, Schedule(1000, 8), self.cfg.attention, labels=self.labels
        )
        self.model.train()
        self.optimizer = engine.make_optimizer(
            self.model,
            self.settings["lr"],
            self.cfg.weight_decay,
            self.cfg.adamw,
            engine.new_tables_lr(self.settings, self.model_cfg, source),
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.step(self.batches[0], count_saved=True)

    def drop(self) -> None:
        """One model in memory at a time: several grow the process by gigabytes of freed heap."""
        del self.model, self.optimizer, self.trainable
        gc.collect()
        release_freed_heap()

    def step(self, batch: dict, count_saved: bool = False) -> None:
        saved: dict[int, int] = {}
        weights = {p.untyped_storage().data_ptr() for p in self.model.parameters()}

        def pack(t):  # activations only: weights saved for backward are counted once, as weights
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if count_saved else _nothing()
        with hooks, engine.autocast(self.device, self.dtype):
            loss = engine.token_loss(engine.logits_of(self.model, batch, self.n_virtual), batch["labels"])
        loss.backward()
        grads = tensor_bytes(p.grad for p in self.trainable if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        release_freed_heap()
        if count_saved:
            weight_bytes = tensor_bytes(self.model.parameters())
            state = tensor_bytes(t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t))
            self.memory = {
                "weights_bytes": weight_bytes,
                "gradient_bytes": grads,
                "optimizer_state_bytes": state,
                "saved_activation_bytes": sum(saved.values()),
                "tensor_peak_bytes": weight_bytes + grads + state + sum(saved.values()),
            }

    def timed_steps(self, steps: int) -> None:
        for batch in self.batches[1 : steps + 1]:
            start = time.perf_counter()
            self.step(batch)
            self.times.append(time.perf_counter() - start)
            self.tokens.append(int(batch["attention_mask"].sum()))

    def result(self) -> dict:
        rates = [n / t for n, t in zip(self.tokens, self.times, strict=True)]
        return {
            "step_time_s": statistics.median(self.times),
            "tokens_per_s": statistics.median(rates),
            "step_times_s": [round(t, 4) for t in self.times],
            **self.memory,
        }


def release_freed_heap() -> None:
    """Hand freed heap back to the OS (glibc malloc_trim): several models in one process otherwise
    keep every step's freed activations resident, and the process RSS grows by gigabytes."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def vm_kib(field: str) -> int | None:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def report(result: dict) -> str:
    lines = [
        f"# Quiet interleaved cost benchmark ({result['date']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['method']}. Device: {result['environment']['device_name']}, flags "
        f"{' '.join(result['environment']['cpu_flags'])}, {result['environment']['cpu_threads']} thread(s); "
        f"precision {result['precision']}; load average before {result['load_average']['start']}, after "
        f"{result['load_average']['end']}.",
        "",
        "| Variant | Step time (median) | Tokens/s | Weights | Gradients | AdamW state | Saved activations | "
        "Tensors of one step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {name} | {v['step_time_s']:.3f} s | {v['tokens_per_s']:.0f} | "
            + " | ".join(
                f"{v[k] / 1e6:.1f} MB"
                for k in (
                    "weights_bytes",
                    "gradient_bytes",
                    "optimizer_state_bytes",
                    "saved_activation_bytes",
                    "tensor_peak_bytes",
                )
            )
            + " |"
        )
    lines += ["", f"Process RSS high-water mark (all models together): {result['rss_hwm_bytes'] / 1e9:.2f} GB.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--params", default="results/reference-minilm/params.yaml")
    parser.add_argument("--variants", nargs="*", help="default: the params' study.variants")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", help="override train.precision (e.g. fp32 on a CPU without bf16 units)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/layoutpeft-quiet-costs"))
    parser.add_argument("--zip", type=Path, default=FUNSD_ZIP)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    study = StudyConfig.from_params(params)
    DataConfig.from_params(params)
    cfg = TrainConfig.from_params(params)
    if args.precision:
        cfg = __import__("dataclasses").replace(cfg, precision=args.precision)
    folder = tokenized(params, args.cache, args.zip)
    meta, windows = load_meta(folder), load_windows("train", folder)
    pad = meta["pad_token_id"]
    device = torch.device("cpu")
    all_variants = expand_sweeps(params["variants"], params.get("sweeps") or {})
    names = args.variants or list(study.variants)
    load_start = loadavg()
    built = [
        Variant(
            name,
            validate_variant(name, resolve(name, all_variants), params["data"]["prompt_reserve"]),
            params,
            cfg,
            windows,
            pad,
            args.steps,
            device,
            meta["labels"],
        )
        for name in names
    ]
    for round_index in range(args.rounds):
        order = built[round_index % len(built) :] + built[: round_index % len(built)]
        for variant in order:
            variant.build()
            variant.timed_steps(args.steps)
            variant.drop()
            print(
                f"quiet_costs: round {round_index + 1} {variant.name}: one step "
                f"{variant.memory['tensor_peak_bytes'] / 1e6:.0f} MB of tensors, step times "
                f"{[round(t, 2) for t in variant.times[-args.steps :]]} s, RSS {(vm_kib('VmRSS') or 0) / 1e6:.2f} GB",
                flush=True,
            )
        print(f"quiet_costs: round {round_index + 1}/{args.rounds} done, load {loadavg()}", flush=True)
    env = describe(device)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/quiet_costs.py " + " ".join(argv),
        "method": (
            f"quiet interleaved benchmark: {args.rounds} rounds x {args.steps} optimizer steps per "
            "variant, variants alternated, same training batches; tensor memory of one step = weights + "
            "gradients + AdamW state + activations saved for backward"
        ),
        "steps": args.steps,
        "rounds": args.rounds,
        "precision": cfg.precision,
        "params": args.params,
        "environment": env,
        "load_average": {"start": load_start, "end": loadavg()},
        "rss_hwm_bytes": (vm_kib("VmHWM") or 0) * 1024,
        "variants": {v.name: v.result() for v in built},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "costs.json", result)
    write_text(args.out / "report.md", report(result))
    print(report(result))


if __name__ == "__main__":
    main(sys.argv[1:])
