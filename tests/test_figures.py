"""02_torchrun's pictures (autograder/figures.py): the collectives before/after boxes and the all-reduce cost fit.

Drawn headless (Agg) from data of the shape the notebook's torchrun scripts write; each test reads back what the
figure holds (boxes, their colours and numbers, the fitted line), so a drawing that broke or lied would fail.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from autograder.figures import _SUMMED, draw_allreduce_cost, draw_collectives  # noqa: E402


def held_by(world_size: int) -> list[dict]:
    """What collectives_demo.py saves on each rank: rank r starts with [10r+1, ..., 10r+world_size]."""
    before = [[10.0 * r + i + 1 for i in range(world_size)] for r in range(world_size)]
    sums = [sum(col) for col in zip(*before)]
    return [{"before": before[r], "after": {
        "broadcast (src=0)": before[0], "all_reduce (sum)": sums, "reduce_scatter (sum)": [sums[r]],
        "all_gather": [v for b in before for v in b], "all_to_all": [before[k][r] for k in range(world_size)]}}
        for r in range(world_size)]


def boxes(ax) -> list[tuple[str, str]]:
    """(number written in it, colour) of every box of a panel, in drawing order."""
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    numbers = [t.get_text() for t in ax.texts if t.get_fontsize() >= 9]
    return list(zip(numbers, [to_hex(r.get_facecolor()) for r in rects]))


@pytest.mark.parametrize("world_size", [2, 3])
def test_collectives_picture_shows_every_rank_before_and_after(world_size):
    held = held_by(world_size)
    fig = draw_collectives(held)
    palette = [to_hex(c) for c in plt.get_cmap("tab10").colors]
    rows = {ax.get_title(loc="left").removeprefix("after "): ax for ax in fig.axes[1::2]}
    assert list(rows) == list(held[0]["after"]) and len(fig.axes) == 2 * len(rows)
    for left in fig.axes[0::2]:   # before: each rank's own numbers in its own colour
        assert boxes(left) == [(f"{v:g}", palette[r]) for r, h in enumerate(held) for v in h["before"]]
    # broadcast: everyone holds rank 0's numbers, in rank 0's colour
    assert boxes(rows["broadcast (src=0)"]) == [(f"{v:g}", palette[0]) for _ in held for v in held[0]["before"]]
    # all_gather: rank k's numbers in rank k's colour, in rank order, on every rank
    gathered = [(f"{v:g}", palette[k]) for k, h in enumerate(held) for v in h["before"]]
    assert boxes(rows["all_gather"]) == gathered * world_size
    # all_to_all: rank i holds element i of every rank, coloured by where it came from
    assert boxes(rows["all_to_all"]) == [(f"{held[k]['before'][i]:g}", palette[k])
                                         for i in range(world_size) for k in range(world_size)]
    # reductions: grey, each box labelled with the sum it is
    summed = rows["all_reduce (sum)"]
    assert {c for _, c in boxes(summed)} == {to_hex(_SUMMED)}
    notes = [t.get_text() for t in summed.texts if t.get_fontsize() < 9]
    assert notes[:world_size] == ["+".join(f"{10 * r + i + 1}" for r in range(world_size)) for i in range(world_size)]
    assert len(boxes(rows["reduce_scatter (sum)"])) == world_size     # one element per rank
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def test_allreduce_cost_picture_draws_the_measured_points_and_the_fit():
    alpha, beta = 200e-6, 1e9
    n = 4.0 * 2.0 ** np.arange(23)
    t = (alpha + n / beta) * (1 + 0.1 * np.cos(np.arange(23)))   # measured: the law plus noise
    fig = draw_allreduce_cost(n, t, alpha, beta, title="2 ranks, gloo")
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    points, fit, latency, bandwidth = ax.lines[:4]
    assert np.allclose(points.get_xdata(), n) and np.allclose(points.get_ydata(), t)
    x, y = np.asarray(fit.get_xdata()), np.asarray(fit.get_ydata())
    assert x.min() == pytest.approx(n.min()) and x.max() == pytest.approx(n.max())
    assert np.allclose(y, alpha + x / beta)
    assert np.allclose(latency.get_ydata(), alpha) and np.allclose(bandwidth.get_ydata(), x / beta)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("α = 200 µs" in s and "β = 1.00 GB/s" in s for s in legend), legend
    assert any("n = αβ = 195 KiB" in t.get_text() for t in ax.texts)      # where latency and bandwidth cost alike
    fig.savefig(io.BytesIO(), format="png")
    ticks = [lbl.get_text() for lbl in ax.get_xticklabels()]
    assert {"4 B", "1 KiB", "16 MiB"} <= set(ticks), ticks       # sizes in bytes people read, not 1e+03
    plt.close(fig)
