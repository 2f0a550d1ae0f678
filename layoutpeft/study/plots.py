"""Plot data and images of the study: CSVs for `dvc plots` and PNGs under images/.

`write_plots(folder, summary, runs)` fills one folder (the aggregate stage builds it beside
plots/ and swaps it in once complete). The CSV columns are what dvc.yaml's `plots:` name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from layoutpeft.study.stats import pareto_flags
from layoutpeft.study.summary import MB, number
from layoutpeft.study.tables import csv_text

_RANK_SUFFIX = re.compile(r"_r\d+$")


def scaling_note(settings: dict) -> str:
    """How a ranked variant's update scale follows r, in words (train/methods.py, RANK_SCALINGS): every
    rank curve and table states it, since whether one lr serves every rank depends on it. A variant
    without alpha (resolved before alpha was recorded) had the default, 2r."""
    rule, r = settings.get("rank_scaling", "alpha_2r"), settings["r"]
    alpha = settings.get("alpha")
    alpha = float(2 * r) if alpha is None else alpha
    if rule == "rslora":
        return f"rsLoRA: alpha {alpha:g}, scale alpha/sqrt(r)"
    if rule == "alpha_fixed" or alpha != 2 * r:
        return f"alpha fixed at {alpha:g}, scale alpha/r"
    return "alpha = 2r, scale 2"


def rank_series(variant_params: dict[str, dict | None]) -> dict[str, list[tuple[str, float]]]:
    """Group variants whose resolved params differ only in `r` (and in `alpha` where it is the
    default 2r of rank_scaling alpha_2r); keep groups with >= 2 distinct ranks.

    Returns {series name: [(variant, r), ...] sorted by r}. A series is named after its variants
    with any `_r<N>` suffix removed (lora, lora_r4 -> "lora"), else after its method."""
    groups: dict[str, list[tuple[str, float]]] = {}
    methods: dict[str, str] = {}
    for name, settings in variant_params.items():
        if not isinstance(settings, dict):
            continue
        r = settings.get("r")
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            continue
        # alpha left at its default (2r, filled in by methods.validate_variant) follows r: not a difference.
        follows_r = settings.get("rank_scaling", "alpha_2r") == "alpha_2r"
        key = json.dumps(
            {k: v for k, v in settings.items() if k != "r" and not (k == "alpha" and follows_r and v == 2 * r)},
            sort_keys=True,
            default=str,
        )
        groups.setdefault(key, []).append((name, r))
        methods[key] = str(settings.get("method", "?"))
    series: dict[str, list[tuple[str, float]]] = {}
    for key, members in groups.items():
        if len({r for _, r in members}) < 2:
            continue
        stems = {_RANK_SUFFIX.sub("", name) for name, _ in members}
        label = stems.pop() if len(stems) == 1 else methods[key]
        unique, k = label, 2
        while unique in series:
            unique, k = f"{label}_{k}", k + 1
        series[unique] = sorted(members, key=lambda m: (m[1], m[0]))
    return dict(sorted(series.items()))


def comparable_params(entry: dict) -> dict | None:
    """A variant's params for grouping a rank series: a tuned lr (and its grid) is each variant's own
    best, not a difference of definition, so lora at r 4 and r 16 stay one series."""
    params = entry.get("params")
    if not isinstance(params, dict) or not (entry.get("lr_tuning") or {}).get("tuned"):
        return params
    return {k: v for k, v in params.items() if k not in ("lr", "lr_grid")}


def _mean(stat: dict | None) -> float | None:
    return stat["mean"] if stat else None


def rank_rows(summary: dict) -> list[list]:
    """plots/f1_vs_rank.csv rows: series, variant, r, f1_mean, f1_ci95_low, f1_ci95_high, scaling."""
    with_f1 = {n: comparable_params(e) for n, e in summary["variants"].items() if e["f1"]}
    rows = []
    for series, members in rank_series(with_f1).items():
        for name, r in members:
            f1, params = summary["variants"][name]["f1"], with_f1[name]
            assert params is not None  # rank_series groups only variants with params
            rows.append([series, name, r, f1["mean"], f1["ci95_low"], f1["ci95_high"], scaling_note(params)])
    return rows


def own_params(entry: dict) -> float | None:
    """The method's own trainable weights (what the Pareto front ranks), else every trainable weight."""
    return entry["method_params"] if entry.get("method_params") is not None else entry.get("trainable_params")


def pareto_rows(summary: dict) -> list[list]:
    """plots/pareto.csv rows: variant, method, method_params, trainable_params, f1_mean, f1_ci95_low,
    f1_ci95_high, pareto (on the method's own weights: the head and new 2-D tables every method
    trains alike are left out)."""
    owned = {n: own_params(e) for n, e in summary["variants"].items() if e["f1"]}
    names = [n for n, own in owned.items() if own is not None]
    points = [(float(owned[n] or 0), summary["variants"][n]["f1"]["mean"]) for n in names]
    rows = []
    for name, flag in zip(names, pareto_flags(points), strict=True):
        e = summary["variants"][name]
        rows.append(
            [
                name,
                e["method"],
                own_params(e),
                e["trainable_params"],
                e["f1"]["mean"],
                e["f1"]["ci95_low"],
                e["f1"]["ci95_high"],
                flag,
            ]
        )
    return rows


def cost_rows(summary: dict) -> list[list]:
    """plots/cost.csv rows: variant, method, train_time_s, peak_memory_mb, trainable_params, saved_mb, tokens_per_s."""
    rows = []
    for name, e in summary["variants"].items():
        if not e["n_seeds"]:
            continue
        saved = e["saved_bytes"] / MB if e["saved_bytes"] is not None else None
        rows.append(
            [
                name,
                e["method"],
                _mean(e["train_time_s"]),
                _mean(e["peak_memory_mb"]),
                e["trainable_params"],
                saved,
                _mean(e["inference_tokens_per_s"]),
            ]
        )
    return rows


def curve_rows(runs: dict[str, dict[int, dict]]) -> list[list]:
    """plots/learning_curves.csv rows: variant, seed, epoch, train_loss, val_loss, val_f1."""
    rows = []
    for name, by_seed in runs.items():
        for seed in sorted(by_seed):
            history = by_seed[seed].get("history")
            for point in history if isinstance(history, list) else []:
                epoch = number(point, "epoch")
                if epoch is None:
                    continue
                rows.append(
                    [name, seed, int(epoch), number(point, "train_loss"), number(point, "val_loss"), number(point, "val_f1")]
                )
    return rows


PLOT_CSVS = {
    "f1_vs_rank.csv": (["series", "variant", "r", "f1_mean", "f1_ci95_low", "f1_ci95_high", "scaling"], rank_rows),
    "pareto.csv": (
        ["variant", "method", "method_params", "trainable_params", "f1_mean", "f1_ci95_low", "f1_ci95_high", "pareto"],
        pareto_rows,
    ),
    "cost.csv": (
        ["variant", "method", "train_time_s", "peak_memory_mb", "trainable_params", "saved_mb", "tokens_per_s"],
        cost_rows,
    ),
}


def _ci_err(stats: Sequence[dict | None]) -> list[list[float]]:
    """Asymmetric error bars [[below...], [above...]] (0 where there is no CI)."""
    low = [s["mean"] - s["ci95_low"] if s and s["ci95_low"] is not None else 0.0 for s in stats]
    high = [s["ci95_high"] - s["mean"] if s and s["ci95_high"] is not None else 0.0 for s in stats]
    return [low, high]


def _empty(ax, text: str) -> None:
    """Say plainly that there is nothing to plot, on a blank panel (no axes to misread)."""
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)


def rank_figure(summary: dict):
    """F1 against rank per rank series, the reference as a band; a plain note when no sweep ran."""
    import matplotlib.pyplot as plt

    variants, reference = summary["variants"], summary["reference"]
    ref_f1 = variants[reference]["f1"] if reference in variants else None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[list]] = {}
    for row in rank_rows(summary):
        series.setdefault(row[0], []).append(row)
    if not series:
        _empty(
            ax,
            "No rank sweep ran in this study: no method was trained at two or more ranks\n"
            "(add e.g. lora_r4 and lora to study.variants), so there is no F1-vs-rank curve.",
        )
        return fig
    for label, rows in series.items():
        rs = [r[2] for r in rows]
        (line,) = ax.plot(rs, [100 * r[3] for r in rows], marker="o", label=f"{label} ({rows[0][6]})")
        if all(r[4] is not None for r in rows):
            ax.fill_between(rs, [100 * r[4] for r in rows], [100 * r[5] for r in rows], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log", base=2)
    if ref_f1:
        ax.axhline(100 * ref_f1["mean"], color="black", linestyle="--", label=f"{reference} (reference)")
        if ref_f1["ci95_low"] is not None:
            ax.axhspan(100 * ref_f1["ci95_low"], 100 * ref_f1["ci95_high"], color="grey", alpha=0.15)
    ax.set_xlabel("rank r (log2)")
    ax.set_ylabel("test F1 (%)")
    ax.set_title("F1 vs rank (mean over seeds, 95 % CI)")
    ax.legend(fontsize=8)
    return fig


def pareto_figure(summary: dict):
    """F1 against the method's own trainable weights (head has none: a symmetric log axis shows 0);
    the front drawn (and in the legend) only with 2+ optimal points, labels kept inside the axes."""
    import matplotlib.pyplot as plt

    variants, reference = summary["variants"], summary["reference"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = [r for r in pareto_rows(summary) if r[2] >= 0]
    if not rows:
        _empty(ax, "No variant with a test F1 and a parameter count to plot.")
        return fig
    for row in rows:
        stat, is_ref = variants[row[0]]["f1"], row[0] == reference
        ax.errorbar(
            [row[2]],
            [100 * row[4]],
            yerr=[[100 * e[0]] for e in _ci_err([stat])],
            fmt="*" if is_ref else "o",
            markersize=12 if is_ref else 5,
            color="crimson" if is_ref else ("tab:blue" if row[7] else "tab:grey"),
            capsize=2,
        )
    # Labels right of each point, but left of the right-most ones so that none leaves the axes.
    right_most = max(r[2] for r in rows)
    for row in rows:
        on_left = row[2] == right_most and len(rows) > 1
        ax.annotate(
            row[0],
            (row[2], 100 * row[4]),
            textcoords="offset points",
            xytext=(-6 if on_left else 6, 3),
            ha="right" if on_left else "left",
            annotation_clip=False,
            fontsize=7 if row[7] or row[0] == reference else 6,
            color="black" if row[7] or row[0] == reference else "dimgrey",
        )
    front = sorted((r[2], 100 * r[4]) for r in rows if r[7])
    if len(front) >= 2:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", alpha=0.6, label="Pareto front")
    ax.plot([], [], "o", color="tab:blue", label="Pareto-optimal")
    if any(not r[7] for r in rows):
        ax.plot([], [], "o", color="tab:grey", label="dominated")
    ax.set_xscale("symlog", linthresh=1000)
    top = max(1000, max(r[2] for r in rows))
    ax.set_xticks([0] + [10**k for k in range(3, math.ceil(math.log10(top)) + 1)])
    ax.margins(x=0.15, y=0.1)
    ax.legend(fontsize=8)
    split = all(variants[r[0]].get("method_params") is not None for r in rows)
    ax.set_xlabel(
        "the method's own trainable weights (symlog; head and new 2-D tables left out)"
        if split
        else "trainable parameters (symlog)"
    )
    ax.set_ylabel("test F1 (%)")
    ax.set_title(
        ("F1 vs the method's own weights" if split else "F1 vs trainable parameters")
        + (f" (★ = {reference})" if reference in variants else "")
    )
    return fig


def cost_figure(summary: dict, key: str, xlabel: str):
    """Horizontal bars of a per-variant cost (mean over seeds, 95 % CI)."""
    import matplotlib.pyplot as plt

    variants, reference = summary["variants"], summary["reference"]
    names = sorted((n for n, e in variants.items() if e[key]), key=lambda n: variants[n][key]["mean"])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
    if not names:
        _empty(ax, "No run recorded this cost.")
        return fig
    stats_ = [variants[n][key] for n in names]
    ax.barh(
        names,
        [s["mean"] for s in stats_],
        xerr=_ci_err(stats_),
        capsize=2,
        color=["crimson" if n == reference else "tab:blue" for n in names],
    )
    ax.set_xlabel(xlabel + ", mean over seeds, 95 % CI")
    ax.tick_params(axis="y", labelsize=7)
    return fig


def curves_figure(curves: list[list]):
    """Validation loss per epoch (mean over seeds), one line per variant; whole-number epoch ticks."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    by_variant: dict[str, dict[int, list[float]]] = {}
    for variant, _seed, epoch, _train, val_loss, _f1 in curves:
        if val_loss is not None:
            by_variant.setdefault(variant, {}).setdefault(epoch, []).append(val_loss)
    if not by_variant:
        _empty(ax, "No per-epoch history in the run files.")
        return fig
    cmap = plt.get_cmap("tab20")
    for i, (variant, epochs) in enumerate(by_variant.items()):
        xs = sorted(epochs)
        ax.plot(
            xs,
            [sum(epochs[x]) / len(epochs[x]) for x in xs],
            label=variant,
            marker="o",
            markersize=3,
            color=cmap(i % 20),
            linestyle="-" if i < 20 else "--",
            linewidth=1.2,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (mean over seeds)")
    ax.set_title("Validation loss")
    return fig


def lr_figure(summary: dict):
    """Validation F1 against lr, one line per tuned variant, the chosen lr starred."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    by_variant: dict[str, list[list]] = {}
    for row in lr_rows(summary):
        by_variant.setdefault(row[0], []).append(row)
    if not by_variant:
        _empty(ax, "No lr tuning in this study (study.tune_lr: false).")
        return fig
    for variant, points in by_variant.items():
        points.sort(key=lambda r: r[1])
        (line,) = ax.plot([r[1] for r in points], [100 * r[2] for r in points], marker="o", label=variant)
        chosen = [r for r in points if r[3]]
        ax.plot(
            [r[1] for r in chosen],
            [100 * r[2] for r in chosen],
            marker="*",
            markersize=12,
            color=line.get_color(),
            linestyle="none",
        )
        for row in points:
            if row[4]:  # stopped by successive halving: its best F1 up to the rung, marked with that epoch
                ax.plot(
                    [row[1]],
                    [100 * row[2]],
                    marker="o",
                    markersize=9,
                    markerfacecolor="white",
                    color=line.get_color(),
                    linestyle="none",
                )
                ax.annotate(f"{row[4]}", (row[1], 100 * row[2]), fontsize=6, ha="center", va="center")
    ax.set_xscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("best validation entity F1 (%)")
    ax.set_title("lr tuning on validation (★ = chosen; ○ n = stopped at epoch n by successive halving)")
    return fig


def figures(folder: Path, summary: dict, curves: list[list]) -> None:
    """Every PNG under folder/images/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    made = {
        "f1_vs_rank.png": rank_figure(summary),
        "pareto.png": pareto_figure(summary),
        "train_time.png": cost_figure(summary, "train_time_s", "train time (s)"),
        "peak_memory.png": cost_figure(summary, "peak_memory_mb", "peak memory (MB)"),
        "learning_curves.png": curves_figure(curves),
        "lr_tuning.png": lr_figure(summary),
    }
    for name, fig in made.items():
        fig.tight_layout()
        fig.savefig(images / name, dpi=120)
        plt.close(fig)


def lr_rows(summary: dict) -> list[list]:
    """[variant, lr, best_val_f1, chosen, stopped_at_epoch] for every tuning trial (stopped_at_epoch: the rung
    where successive halving stopped it, best_val_f1 then being its best up to there; None: it ran on)."""
    rows = []
    for name, entry in summary["variants"].items():
        tuned = entry.get("lr_tuning") or {}
        for trial in tuned.get("trials") or []:
            if trial.get("best_val_f1") is not None:
                rows.append(
                    [
                        name,
                        trial["lr"],
                        trial["best_val_f1"],
                        trial["lr"] == tuned.get("chosen_lr"),
                        trial.get("stopped_at_epoch"),
                    ]
                )
    return rows


def write_plots(folder: Path, summary: dict, runs: dict[str, dict[int, dict]]) -> None:
    """Every plot CSV and PNG into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (header, make_rows) in PLOT_CSVS.items():
        (folder / name).write_text(csv_text(header, make_rows(summary)))
    (folder / "lr_tuning.csv").write_text(
        csv_text(["variant", "lr", "best_val_f1", "chosen", "stopped_at_epoch"], lr_rows(summary))
    )
    curves = curve_rows(runs)
    (folder / "learning_curves.csv").write_text(
        csv_text(["variant", "seed", "epoch", "train_loss", "val_loss", "val_f1"], curves)
    )
    figures(folder, summary, curves)
