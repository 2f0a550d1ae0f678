"""The study's figures say what they show and nothing else: few variants, no rank sweep, whole epochs.

Built from summaries the aggregate stage makes from hand-made run files (tests/test_aggregate.py's
builders); each figure function returns its matplotlib Figure, inspected before it is saved."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from test_aggregate import LORA, Study, make_run  # noqa: E402

from layoutpeft.study import plots  # noqa: E402


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    plt.close("all")


def ci_study(tmp_path, head_f1=(0.17, 0.18), lora_f1=(0.15, 0.16), history_len=3):
    """The ci profile's shape: head (reference) and lora_r4, two seeds, no rank sweep."""
    s = Study(tmp_path, ["head", "lora_r4"], [0, 1], reference="head")
    for seed in (0, 1):
        s.add(make_run("head", seed, head_f1[seed], trainable=1_575_559, history_len=history_len))
        s.add(make_run("lora_r4", seed, lora_f1[seed], params={**LORA, "r": 4}, trainable=150_000, history_len=history_len))
    return s.run()


def texts_inside_figure(fig) -> bool:
    fig.canvas.draw()
    frame = fig.bbox
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            if box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1:
                return False
    return True


def legend_labels(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_no_rank_sweep_says_so_plainly_on_a_blank_panel(tmp_path):
    fig = plots.rank_figure(ci_study(tmp_path))
    (ax,) = fig.axes
    assert not ax.axison  # no 0-1 axes to misread
    assert not ax.lines and not ax.patches  # no reference line striking through the note
    (note,) = ax.texts
    assert note.get_text().startswith("No rank sweep ran in this study")


def test_a_rank_sweep_is_plotted_with_the_reference(tmp_path):
    s = Study(tmp_path, ["full", "lora_r4", "lora"], [0, 1])
    for seed in (0, 1):
        s.add(make_run("full", seed, 0.70 + 0.01 * seed))
        s.add(make_run("lora_r4", seed, 0.66 + 0.01 * seed, params={**LORA, "r": 4}))
        s.add(make_run("lora", seed, 0.68 + 0.01 * seed, params=LORA))
    fig = plots.rank_figure(s.run())
    (ax,) = fig.axes
    assert ax.axison and legend_labels(ax) == ["lora (alpha = 2r, scale 2)", "full (reference)"]  # the rank convention named
    assert list(ax.lines[0].get_xdata()) == [4, 16]


def test_pareto_with_two_variants_one_dominated(tmp_path):
    """head (more parameters, better F1) and lora_r4 (fewer, worse): both on the front, a front of 2 drawn."""
    fig = plots.pareto_figure(ci_study(tmp_path))
    (ax,) = fig.axes
    assert legend_labels(ax) == ["Pareto front", "Pareto-optimal"]
    assert texts_inside_figure(fig)  # the right-most label is not cut off
    assert {t.get_text() for t in ax.texts} == {"head", "lora_r4"}


def test_pareto_with_one_optimal_point_has_no_front_in_the_legend(tmp_path):
    """head dominates lora_r4 only if it has fewer parameters and higher F1: give lora_r4 more parameters."""
    s = Study(tmp_path, ["head", "lora_r4"], [0, 1], reference="head")
    for seed in (0, 1):
        s.add(make_run("head", seed, 0.18, trainable=100_000))
        s.add(make_run("lora_r4", seed, 0.15, params={**LORA, "r": 4}, trainable=900_000))
    fig = plots.pareto_figure(s.run())
    (ax,) = fig.axes
    assert legend_labels(ax) == ["Pareto-optimal", "dominated"]  # a one-point front is not a line
    assert [line.get_label() for line in ax.lines if len(line.get_xdata()) > 1] == []
    assert texts_inside_figure(fig)


def test_learning_curves_have_whole_epoch_ticks(tmp_path):
    fig = plots.curves_figure(plots.curve_rows({"head": {0: make_run("head", 0, 0.2, history_len=3)}}))
    (ax,) = fig.axes
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_every_figure_is_written(tmp_path):
    ci_study(tmp_path)
    for name in ("f1_vs_rank", "pareto", "train_time", "peak_memory", "learning_curves", "lr_tuning"):
        assert (tmp_path / "plots" / "images" / f"{name}.png").stat().st_size > 0
