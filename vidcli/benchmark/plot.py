"""`vidcli benchmark --plot`: the compare-ae speedups as a PNG bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidcli.benchmark.compare_ae import EXTRAPOLATED_FIELDS, AERow
from vidcli.benchmark.compare_ae_report import extrapolation_note
from vidcli.errors import UsageError
from vidcli.fileio import atomic_path


def write_plot(rows: list[AERow], env: dict[str, Any], path: Path) -> Path:
    """Grouped bars of the train / denoising-step / full-video speedups, values on the bars."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed", hint="pip install matplotlib"
        ) from None
    fig = Figure(figsize=(7.5, 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    kinds = [("speedup_train", "DiT train step"), ("speedup_infer", "denoising step")]
    note = extrapolation_note(rows)
    mark = "*" if note else ""
    kinds.append(("speedup_video", f"video ({env['steps']} steps + decode){mark}"))
    width = 0.8 / len(kinds)
    for j, (key, label) in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(rows))]
        # Hatched: bars that rest on probe times scaled by voxel count, not on measurements.
        hatch = "//" if mark and key in EXTRAPOLATED_FIELDS else None
        bars = ax.bar(xs, [getattr(r, key) for r in rows], width, label=label, hatch=hatch)
        ax.bar_label(bars, fmt="%.2fx", padding=2, fontsize=8)
    ax.set_xticks(range(len(rows)), [f"{r.ae}:{r.patch}\n{r.tokens} tokens" for r in rows])
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel(f"speedup vs {rows[0].ae}:{rows[0].patch} (x)")
    ax.set_xlabel("autoencoder : DiT patch size")
    h, w = env["resolution"]
    ax.set_title(
        f"{env['dit']} on {env['device_name'][:40]} ({env['dtype']}), "
        f"{env['frames']}x{h}x{w} px, batch {env['batch_size']}",
        fontsize=10,
    )
    if note:
        fig.text(0.01, 0.005, note.replace(" (", "\n("), fontsize=7, va="bottom")
        fig.get_layout_engine().set(rect=(0, 0.08, 1, 0.92))
    ax.margins(y=0.15)
    ax.legend(loc="upper left", fontsize=8)
    # The footnote also travels as PNG text, so tools can tell a measured chart from this one.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Description": note or "all times measured"})
    return path
