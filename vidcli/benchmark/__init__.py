"""`vidcli benchmark`: measured, side-by-side comparisons, one module per question.

- `compare_ae`: DiT train/inference/generation speed on the latents of each autoencoder
  (`compare_ae_report`: its table, CSV and footnotes)
- `quality`: reconstruction PSNR/SSIM of trained autoencoders on real clips
- `attention`, `kernels`: attention backends, and each kernel against its reference
- `plot`: the compare-ae speedups as a PNG
- `options`: the options, device defaults and resolved settings they share

Method: one warm-up call, then `repeat` calls each timed alone between device synchronisations;
the median is reported with the spread (max - min) / median. Seeds are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidcli.benchmark import attention, compare_ae, compare_ae_report, kernels, plot, quality
from vidcli.benchmark.compare_ae import AERow
from vidcli.benchmark.options import BenchmarkOptions, environment, resolve_settings
from vidcli.errors import UsageError
from vidcli.fileio import refuse_stdout

__all__ = ["AERow", "BenchmarkOptions", "BenchmarkResult", "run"]


@dataclass
class BenchmarkResult:
    """Everything one `vidcli benchmark` call measured; sections not asked for stay empty."""

    env: dict[str, Any]
    rows: list[AERow] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    attention: list[dict[str, Any]] = field(default_factory=list)
    kernels: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def stdout_lines(self) -> list[str]:
        note = compare_ae_report.extrapolation_note(self.rows)
        lines = [
            f"{r.ae}:{r.patch}\ttokens {r.tokens}\ttrain {r.train_step_s:.4g} s "
            f"({r.speedup_train:.2f}x)\tinfer step {r.infer_step_s:.4g} s "
            f"({r.speedup_infer:.2f}x)\tvideo {r.video_s:.4g} s ({r.speedup_video:.2f}x)"
            + ("*" if "video_s" in r.extrapolated else "")
            for r in self.rows
        ]
        lines += [note] if note else []
        lines += [f"{q['ae']}\tPSNR {q['psnr']:.2f} dB\tSSIM {q['ssim']:.4f}" for q in self.quality]
        lines += [
            f"attention {a['backend']}\t{a['tokens']} tokens\tfwd {_ms(a['forward_s'])}\t"
            f"fwd+bwd {_ms(a['fwd_bwd_s'])}"
            for a in self.attention
        ]
        lines += [
            f"kernel {k['kernel']} ({k['backend']}, {k['dtype']})\t{_ms(k['kernel_s'])} vs "
            f"reference {_ms(k['reference_s'])}\t{k['speedup']:.2f}x\t"
            f"max err {k['max_abs_err']:.2e}" + (f"\t({k['differs']})" if k["differs"] else "")
            for k in self.kernels
        ]
        return lines + [f"wrote {p}" for p in self.files]


def _ms(seconds: float | None) -> str:
    return "skipped" if seconds is None else f"{seconds * 1e3:.3g} ms"


def run(options: BenchmarkOptions) -> BenchmarkResult:
    """Check every option, then run the benchmarks asked for and write the requested files."""
    specs = [compare_ae.parse_ae_spec(a) for a in (options.ae or compare_ae.DEFAULT_AES)]
    if options.ae_weights and options.quality is None:
        raise UsageError("--ae-weights is used by --quality DATASET_DIR; add it or drop them")
    weights = quality.parse_weights(options.ae_weights)
    if options.quality is not None and not weights:
        raise UsageError("--quality needs --ae-weights PRESET=PATH for at least one AE")
    if (options.csv or options.plot) and not options.compare_ae:
        raise UsageError("--csv and --plot write the --compare-ae rows; add --compare-ae")
    for path in (options.csv, options.plot):
        if path:
            refuse_stdout(path)  # before the measurements, not after them
    # Every AE that will see the video size decides which sizes are valid.
    sized = (specs if options.compare_ae else []) + [compare_ae.AESpec(p, 1) for p in weights]
    settings = resolve_settings(options, compare_ae.pixel_alignment(sized))
    result = BenchmarkResult(env=environment(settings))
    if options.compare_ae:
        result.rows, env = compare_ae.compare_autoencoders(specs, settings)
        result.env.update(env)
    if options.quality is not None:
        result.quality = quality.reconstruction_quality(options, settings)
        by_preset = {q["ae"]: q for q in result.quality}
        for row in result.rows:
            if row.ae in by_preset:
                row.psnr, row.ssim = by_preset[row.ae]["psnr"], by_preset[row.ae]["ssim"]
    if options.attention:
        result.attention = attention.attention_bench(settings)
    if options.kernels:
        result.kernels = kernels.kernels_bench(settings)
    if options.csv:
        result.files.append(compare_ae_report.write_csv(result.rows, Path(options.csv)))
    if options.plot:
        result.files.append(plot.write_plot(result.rows, result.env, Path(options.plot)))
    compare_ae_report.print_table(result.rows, result.env)
    return result
