"""The compare-ae rows as outputs: the rich table on stderr, a CSV file, and the footnotes both
they and the plot carry (probe-scaled times, rows that checkpointed their blocks)."""

from __future__ import annotations

import csv as csv_module
import dataclasses
from pathlib import Path
from typing import Any

from vidcli.benchmark.compare_ae import AERow
from vidcli.benchmark.options import WARMUP
from vidcli.fileio import atomic_path


def checkpointing_note(rows: list[AERow]) -> str | None:
    """The caveat when some rows' train steps checkpointed their blocks and others did not."""
    if len({r.grad_checkpointing for r in rows}) < 2:
        return None
    on = ", ".join(f"{r.ae}:{r.patch}" for r in rows if r.grad_checkpointing)
    return (
        f"train steps differ: {on} checkpointed every block (recomputing activations), the other "
        "rows did not; their train ratios compare unlike steps (--grad-checkpointing on|off)"
    )


def extrapolation_note(rows: list[AERow]) -> str | None:
    """The footnote for fields marked `*`, or None when every number was measured."""
    probes = sorted({r.ae_timing_probe for r in rows if r.ae_timing_probe})
    if not probes:
        return None
    return (
        f"* extrapolated, not measured: AE encode/decode timed on a {', '.join(probes)} probe "
        "clip and scaled by voxel count (video time and its speedup include the decode)"
    )


CSV_FIELDS = [f.name for f in dataclasses.fields(AERow)]


def write_csv(rows: list[AERow], path: Path) -> Path:
    """One line per row, the AERow fields as columns (latent shape as CxTxHxW, other lists
    space-separated: `extrapolated` names the columns scaled from a probe clip)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv_module.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            values = dataclasses.asdict(row)
            values["latent_shape"] = "x".join(map(str, row.latent_shape))
            for name, value in values.items():
                if isinstance(value, list) and name != "latent_shape":
                    values[name] = " ".join(map(str, value))
            writer.writerow(values)
    return path


def print_table(rows: list[AERow], env: dict[str, Any]) -> None:
    """The compare-ae rows as a rich table on stderr (stdout stays for results)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from vidcli.console import quiet_enabled, stderr

    if quiet_enabled() or not rows:
        return
    table = Table(
        title=f"DiT {env['dit']} on each AE's latents, {env['frames']} frames "
        f"{env['resolution'][0]}x{env['resolution'][1]}, batch {env['batch_size']}, "
        f"{env['device_name']} {env['dtype']}",
        caption=f"median of {env['repeat']} rounds, rows interleaved, after {WARMUP} warm-up; "
        f"MFU against the measured matmul peak {env['matmul_peak_flops'] / 1e12:.3g} TFLOP/s"
        # Escaped: "[launcher] precision" would otherwise be read as a rich style tag.
        f"\ntrain step: {escape(env['train_precision'])}"
        + (
            ""
            if env["compile"] == "off"
            else f"\ncompiled DiT ({env['compile']}): compile time apart, "
            + ", ".join(f"{r.ae}:{r.patch} {r.compile_s:.0f} s" for r in rows)
        )
        + "\nattn: attention's share of the DiT's forward FLOPs at the row's tokens (in "
        "brackets: Open-Sora 2.0's 11B MMDiT at the same tokens)"
        + (f"\n{note}" if (note := extrapolation_note(rows)) else "")
        + (f"\n{ckpt_note}" if (ckpt_note := checkpointing_note(rows)) else ""),
    )
    mark = "*" if note else ""
    columns = [
        "AE:patch",
        "latent",
        "tokens",
        "ckpt",
        "train s",
        "samples/s",
        "step s",
        f"video s{mark}",
    ]
    columns += [f"enc s{mark}", f"dec s{mark}", "peak mem", "TFLOP/step", "attn", "MFU"]
    columns += ["x train"]
    columns += ["x step", f"x video{mark}"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("AE:patch", "latent") else "right")
    for r in rows:
        table.add_row(
            f"{r.ae}:{r.patch}",
            "x".join(map(str, r.latent_shape)),
            str(r.tokens),
            "on" if r.grad_checkpointing else "off",
            f"{r.train_step_s:.3g}",
            f"{r.samples_per_s:.3g}",
            f"{r.infer_step_s:.3g}",
            f"{r.video_s:.4g}",
            f"{r.encode_s:.3g}",
            f"{r.decode_s:.3g}"
            # A conditioned AE's decode includes encoding its content frames: shown apart.
            + ("" if r.content_s is None else f" (content {r.content_s:.3g})"),
            f"{r.peak_mem_bytes / 2**30:.2f} GiB",
            f"{r.flops_per_step / 1e12:.3g}",
            f"{r.attention_share:.0%} ({r.attention_share_11b:.0%})",
            f"{r.mfu:.1%}",
            f"{r.speedup_train:.2f}",
            f"{r.speedup_infer:.2f}",
            f"{r.speedup_video:.2f}",
        )
    if stderr.is_terminal:
        stderr.print(table)
    else:  # a file or pipe: wide enough for every column rather than rich's default 80
        Console(stderr=True, highlight=False, width=200).print(table)
