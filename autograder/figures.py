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
"""
from __future__ import annotations

import base64
import io

from .verdict import Verdict


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


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


def render(verdict: Verdict):
    """A matplotlib Figure for the verdict's details, or None when there is nothing to draw."""
    d = verdict.details
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


def verdict_figure_png_base64(verdict: Verdict) -> str | None:
    fig = render(verdict)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
