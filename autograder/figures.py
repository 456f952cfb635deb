"""Pictures drawn from a verdict's `details`: speed-up bars, pipeline timelines, per-rank memory.

The schemas (filled by the checks, drawn here, shown by the widget and the notebooks):
- details["speedup"]  = {"measured": x, "ideal": x, "threshold": x, "label": "2 ranks vs 1",
                         "reference": x (optional: the reference solution's speed-up in the same run)}
- details["timeline"] = {"schedules": {"GPipe": [[rank, "F"|"B", microbatch, start_s, end_s], ...], ...},
                         "bubble": {"GPipe": {"measured": f, "formula": f}, ...}}
- details["memory"]   = {"ranks": [0, 1], "bytes": {"DDP": [b0, b1], "FSDP": [b0, b1]},
                         "unit": "MiB" | "KiB" (optional), "title": str (optional)}
- details["overlap"]  = {"timelines": {"naive": [[row, "forward"|"backward"|"all-reduce", start_s, end_s], ...], ...},
                         "seconds": {"naive": step_s, ...} (optional), "note": str (optional),
                         "speedup": {"yours": x, "reference": x, "no_overlap": x (optional), "threshold": x} (optional)}

02_torchrun's pictures of what its demo scripts recorded under torchrun (`draw_collectives`, `draw_allreduce_cost`)
take their data as arguments; their schemas are at the end of this file.
"""
from __future__ import annotations

import base64
import io



def _figure(width: float, height: float):
    """A Figure outside pyplot: drawing a verdict in the student's kernel must not switch its backend (with Agg
    selected, the notebook's own plt.show() would show nothing from then on) nor add to pyplot's figures."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def draw_speedup(ax, data: dict) -> None:
    names, values, colors = ["measured"], [data["measured"]], ["#2f6fb0"]
    if "reference" in data:   # what the course's own solution reached on this machine, in the same run
        names, values, colors = ["yours", "reference"], values + [data["reference"]], colors + ["#7a9cc6"]
    names, values, colors = names + ["ideal"], values + [data["ideal"]], colors + ["#bbbbbb"]
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:.2f}x" for v in values])
    ax.set_ylim(0, max(values) * 1.15)
    if "threshold" in data:
        ax.axhline(data["threshold"], color="#b42318", linestyle="--", label=f"pass line {data['threshold']:.2f}x")
        ax.legend(loc="lower right")
    ax.set_ylabel("speed-up")
    ax.set_title(data.get("label", "speed-up"))


def draw_timeline(axes, data: dict) -> None:
    """One panel per schedule, one row per rank: forward (F) and backward (B) of each microbatch; gaps are the bubble.

    All panels share one time axis, so that schedules can be compared by length. Optional keys:
    data["bubble"][name] = {"measured", "formula"}, data["seconds"][name] (step time),
    data["speedup"] = {"measured", "ideal"} (shown above the panels).
    """
    colors = {"F": "#2f6fb0", "B": "#e0a030"}
    spans = [max(e[4] for e in ev) - min(e[3] for e in ev) for ev in data["schedules"].values() if ev]
    longest = max(spans, default=1.0) or 1.0
    for ax, (name, events) in zip(axes, data["schedules"].items()):
        t0 = min(e[3] for e in events) if events else 0.0
        for rank, kind, mb, start, end in events:
            ax.barh(rank, end - start, left=start - t0, height=0.7, color=colors.get(kind, "#888"),
                    edgecolor="white", linewidth=0.5)
            if end - start > longest / 60:   # label only the bars wide enough to hold it
                ax.text(start - t0 + (end - start) / 2, rank, f"{kind}{mb}", ha="center", va="center",
                        fontsize=7, color="white")
        ranks = sorted({e[0] for e in events})
        ax.set_yticks(ranks, [f"rank {r}" for r in ranks])
        ax.set_ylim(max(ranks, default=0) + 0.6, -0.6)     # rank 0 on top
        ax.set_xlim(0, longest * 1.02)
        title = name
        bubble = data.get("bubble", {}).get(name)
        if bubble:
            title += f": bubble {bubble['measured']:.0%} measured, {bubble['formula']:.0%} by (p-1)/(m+p-1)"
        seconds = data.get("seconds", {}).get(name)
        if seconds:
            title += f"; step {seconds:.2f} s"
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1].set_xlabel("seconds since the step began (blue: forward, orange: backward, gaps: idle)")
    speedup = data.get("speedup")
    if speedup:
        axes[0].figure.suptitle(f"{data.get('n_microbatches', 'm')} microbatches vs 1: {speedup['measured']:.2f}x "
                                f"faster (ideal p*m/(m+p-1) = {speedup['ideal']:.2f}x)", fontsize=10)


def draw_memory(ax, data: dict) -> None:
    ranks = data["ranks"]
    series = data["bytes"]
    unit = data.get("unit", "MiB")
    scale = {"MiB": 2**20, "KiB": 2**10, "B": 1}.get(unit, 2**20)
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [r + i * width for r in ranks]
        bars = ax.bar(xs, [v / scale for v in values], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([r + width * (len(series) - 1) / 2 for r in ranks], [f"rank {r}" for r in ranks])
    ax.set_ylabel(f"{unit} per rank")
    ax.set_title(data.get("title", "parameters + gradients + optimizer state"), fontsize=9)
    top = max(v for values in series.values() for v in values) / scale
    ax.set_ylim(0, top * 1.35)  # headroom: the legend sits above the bars, not on their labels
    ax.legend(loc="upper center", ncol=len(series), fontsize=8)


def draw_overlap(axes, data: dict) -> None:
    """One panel per run, on one time axis: a "compute" row (forward, backward) above one row per all-reduce
    (or per bucket); an all-reduce bar that sits under the backward bar is communication hidden by compute."""
    colors = {"forward": "#2f6fb0", "backward": "#e0a030", "all-reduce": "#3a9a5b"}
    spans = [max(e[3] for e in ev) - min(e[2] for e in ev) for ev in data["timelines"].values() if ev]
    longest = max(spans, default=1.0) or 1.0
    for ax, (name, events) in zip(axes, data["timelines"].items()):
        rows = list(dict.fromkeys(e[0] for e in events))
        t0 = min((e[2] for e in events), default=0.0)
        for row, kind, start, end in events:
            ax.barh(rows.index(row), max(end - start, longest / 400), left=start - t0, height=0.7,
                    color=colors.get(kind, "#888"), edgecolor="white", linewidth=0.5)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_ylim(len(rows) - 0.4, -0.6)
        ax.set_xlim(0, longest * 1.02)
        seconds = data.get("seconds", {}).get(name)
        ax.set_title(name + (f": step {1000 * seconds:.0f} ms" if seconds else ""), fontsize=9, loc="left")
    axes[-1].set_xlabel("ms since the step began (blue: forward, orange: backward, green: all-reduce in flight)")
    for ax in axes:
        ax.xaxis.set_major_formatter(lambda x, _: f"{1000 * x:.0f}")
    speed = data.get("speedup")
    title = data.get("note", "")
    if speed:
        title = (f"bucketed vs naive: yours {speed['yours']:.2f}x, reference {speed['reference']:.2f}x"
                 + (f", no overlap {speed['no_overlap']:.2f}x" if "no_overlap" in speed else "")
                 + f", pass line {speed['threshold']:.2f}x" + (f"\n{title}" if title else ""))
    if title:
        axes[0].figure.suptitle(title, fontsize=9)


def render(d: dict):
    """A matplotlib Figure for a verdict's details (its "timeline", "overlap", "speedup" or "memory"), or None when
    there is nothing to draw."""
    if "timeline" in d:
        n = len(d["timeline"]["schedules"])
        fig, axes = _figure(8, 1.6 * n + 0.6)
        fig.clf()
        axes = fig.subplots(n, 1, squeeze=False)[:, 0]
        draw_timeline(list(axes), d["timeline"])
    elif "overlap" in d:
        n = len(d["overlap"]["timelines"])
        rows = sum(len({e[0] for e in ev}) for ev in d["overlap"]["timelines"].values())
        fig, axes = _figure(8, 0.9 + 0.6 * n + 0.22 * rows)
        fig.clf()
        axes = fig.subplots(n, 1, squeeze=False,
                            gridspec_kw={"height_ratios": [max(1, len({e[0] for e in ev}))
                                                           for ev in d["overlap"]["timelines"].values()]})[:, 0]
        draw_overlap(list(axes), d["overlap"])
    elif "speedup" in d:
        fig, ax = _figure(4, 3)
        draw_speedup(ax, d["speedup"])
    elif "memory" in d:
        fig, ax = _figure(5, 3)
        draw_memory(ax, d["memory"])
    else:
        return None
    fig.tight_layout()
    return fig


def png_base64(details: dict) -> str | None:
    """render(details) as a base64 PNG (None when there is nothing to draw)."""
    fig = render(details)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode()


# --- 02_torchrun's pictures, drawn from what the notebook's demo scripts recorded under torchrun ----------------
#
# held[rank]    = {"before": [values], "after": {collective name: [values]}}   (collectives_demo.py, one file per rank)
# all-reduce fit: sizes in bytes, the measured seconds, alpha (s) and beta (bytes/s) of T(n) = alpha + n / beta

_SUMMED = "#c4c4c4"   # the colour of a reduction's result: a value combined from every rank


def _origins(held: list[dict]) -> tuple[dict[float, int], list[list[float]]]:
    """Which rank held each value before the collectives (the demo gives every rank values of its own), and the
    columns of the before-tensors (column i: every rank's element i), what a reduction adds up."""
    owner = {v: r for r, h in enumerate(held) for v in h["before"]}
    columns = [list(col) for col in zip(*(h["before"] for h in held))]
    return owner, columns


def _boxes(ax, rows: list[list[float]], colour_of, label_of, width: float, title: str) -> None:
    """One row of boxes per rank (rank 0 on top), each box one element of that rank's tensor."""
    for r, row in enumerate(rows):
        for i, value in enumerate(row):
            ax.add_patch(_rectangle((i + 0.04, -r - 0.92), 0.92, 0.84, colour_of(value)))
            note = label_of(value)
            ax.text(i + 0.5, -r - 0.5 + (0.12 if note else 0), f"{value:g}", ha="center", va="center", fontsize=10)
            if note:
                ax.text(i + 0.5, -r - 0.72, note, ha="center", va="center", fontsize=7, color="#333333")
    ax.set_xlim(0, width)
    ax.set_ylim(-len(rows), 0)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_yticks([-r - 0.5 for r in range(len(rows))], [f"rank {r}" for r in range(len(rows))])
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def _rectangle(xy, width, height, colour):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, width, height, facecolor=colour, edgecolor="white")


def draw_collectives(held: list[dict]):
    """A figure with one row per collective: each rank's tensor before it (left) and after it (right).

    A collective with "reduce" in its name combines values: its boxes are grey, labelled with the sum that the
    value is, found in the data ("1+11": element i of every rank's tensor). The others move values: a box takes
    the colour of the rank that held that value before (every rank starts with values of its own).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    owner, columns = _origins(held)
    palette = plt.get_cmap("tab10").colors
    names = list(held[0]["after"])
    widest = max([len(h["before"]) for h in held] + [len(h["after"][n]) for h in held for n in names])

    def moved(value):
        return palette[owner[value] % 10] if value in owner else _SUMMED

    def summed_from(value):
        terms = next((col for col in columns if sum(col) == value), None)
        return "+".join(f"{t:g}" for t in terms) if terms and len(terms) <= 3 else ""   # 4 terms overflow a box

    columns_drawn = len(held[0]["before"]) + widest
    box = min(0.9, max(0.45, 12 / columns_drawn))          # inches per box: wide rows shrink, up to 16 in in all
    fig, axes = plt.subplots(len(names), 2, squeeze=False,
                             figsize=(1.8 + box * columns_drawn, 0.6 + (0.42 * len(held) + 0.45) * len(names)),
                             gridspec_kw={"width_ratios": [len(held[0]["before"]), widest]})
    for (left, right), name in zip(axes, names):
        reduces = "reduce" in name
        _boxes(left, [h["before"] for h in held], moved, lambda v: "", len(held[0]["before"]), f"{name}: before")
        _boxes(right, [h["after"][name] for h in held], (lambda v: _SUMMED) if reduces else moved,
               summed_from if reduces else (lambda v: ""), widest, f"after {name}")
    handles = [Patch(color=palette[r % 10], label=f"held by rank {r} before") for r in range(len(held))]
    fig.legend(handles=handles + [Patch(color=_SUMMED, label="sum over all ranks")], loc="lower center",
               ncol=len(handles) + 1, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    return fig


def _bytes_label(n: float, _=None) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} B"


def _seconds_label(t: float, _=None) -> str:
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def draw_allreduce_cost(n_bytes, seconds, alpha: float, beta: float, title: str = "all_reduce on this machine"):
    """The measured all-reduce times against the buffer size on log-log axes, with the fitted T(n) = alpha + n/beta,
    its two terms (the latency alpha, flat; the bandwidth term n/beta, a slope of 1) and where they cross, n = alpha*beta."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator

    n, t = np.asarray(n_bytes, dtype=float), np.asarray(seconds, dtype=float)
    grid = np.logspace(np.log10(n.min()), np.log10(n.max()), 200)
    fig, ax = plt.subplots(figsize=(8, 4.4))
    ax.loglog(n, t, "o", color="#2f6fb0", label="measured: fastest call of the slowest rank")
    ax.loglog(grid, alpha + grid / beta, "-", color="#b42318",
              label=f"fit T(n) = α + n/β:  α = {_seconds_label(alpha)},  β = {beta / 1e9:.2f} GB/s")
    ax.loglog(grid, np.full_like(grid, alpha), ":", color="gray", label="latency α")
    ax.loglog(grid, grid / beta, "--", color="gray", label="bandwidth term n/β")
    crossover = alpha * beta
    if n.min() < crossover < n.max():
        ax.axvline(crossover, color="gray", linewidth=0.8, alpha=0.6)
        ax.annotate(f"n = αβ = {_bytes_label(crossover)}", (crossover, alpha), xytext=(6, -16),
                    textcoords="offset points", fontsize=8, color="#444444")
    ax.set_ylim(min(alpha, t.min()) / 3, t.max() * 3)
    ax.xaxis.set_major_locator(LogLocator(base=4.0, numticks=30))
    ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(_seconds_label))
    ax.tick_params(axis="x", labelsize=8, labelrotation=30)
    ax.set(xlabel="all-reduce buffer n (bytes per rank)", ylabel="time per all-reduce", title=title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    return fig
