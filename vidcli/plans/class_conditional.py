"""The plan of a class-conditional run (DC-AE-Diffusion): labels, tokens and device memory.

Nothing is loaded: the released model is built on `meta` (`build_released`), its parameters are
counted at the compute dtype, and the activation peaks are measured by running the network on
`rows × tokens` meta inputs (`rows` = 2 × batch with CFG: conditional and null label) and the
DC-AE decoder on one batch of latents (`vidcli.plans.meta`). The sampler's own state is a few
latents per sample (DPM-Solver keeps x and up to three data predictions; dopri5 its seven
stages), counted as 8 latents per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidcli.plans.meta import measure_peak, param_count
from vidcli.plans.sizes import ACTIVATION_MARGIN, GB, RESERVED_GB, device_memory_gb, dtype_size

SAMPLER_LATENTS = 8
"""Latent-sized tensors a sampler keeps per row between network calls (dopri5: 7 stages + x)."""


@dataclass
class ClassConditionalPlan:
    """What `vidcli generate` will hold on the device for a DC-AE-Diffusion model."""

    model: str
    device: str
    dtype: str
    gpu_memory_gb: float | None
    labels: list[int]
    classes: list[str]
    sampler: str
    steps: int
    cfg_scale: float
    latent_shape: list[int]
    """(C, S, S) of one sample's latent."""
    tokens: int
    """Tokens the network attends over per row: (S/p)² patches (+ label and time for UViT)."""
    cfg_rows: int
    """Rows of one network call: 2 × batch with guidance, batch without."""
    network_params: int
    ae_params: int
    weights_gb: dict[str, float]
    network_activation_gb: float
    decode_activation_gb: float
    sampler_state_gb: float
    peak_gb: float
    fits: bool
    notes: list[str] = field(default_factory=list)

    def stdout_lines(self) -> list[str]:
        limit = "no limit" if self.gpu_memory_gb is None else f"{self.gpu_memory_gb:g} GB"
        classes = ", ".join(f"{i} {n}" for i, n in zip(self.labels, self.classes, strict=True))
        return [
            f"plan for {self.model} on {self.device} ({self.dtype}), {limit}",
            f"classes: {classes}",
            f"sampler {self.sampler}, {self.steps} steps, guidance {self.cfg_scale:g}",
            f"latent {self.latent_shape}: {self.tokens} tokens, {self.cfg_rows} rows per "
            "network call",
            f"  network {self.network_params / 1e9:7.3f} B params  "
            f"{self.weights_gb['network']:7.2f} GB",
            f"  ae      {self.ae_params / 1e9:7.3f} B params  {self.weights_gb['ae']:7.2f} GB",
            f"network activations {self.network_activation_gb:.2f} GB; sampler state "
            f"{self.sampler_state_gb:.2f} GB; AE decode {self.decode_activation_gb:.2f} GB",
            f"peak {self.peak_gb:.2f} GB: " + ("fits" if self.fits else "does not fit"),
        ] + [f"note: {n}" for n in self.notes]


def plan_class_conditional(
    name: str,
    labels: list[int],
    device: torch.device,
    dtype: torch.dtype,
    gpu_memory_gb: float | None,
    batch_size: int,
    cfg_scale: float,
    steps: int,
) -> ClassConditionalPlan:
    """The plan of sampling `labels` in batches of `batch_size` with released model `name`."""
    from vidcli.devices import dtype_name
    from vidcli.models.dcae_diffusion import build_released, class_name

    model = build_released(name, device="meta").eval().to(dtype)
    net, ae = model.diffusion_model, model.autoencoder
    config = net.config
    size, batch = dtype_size(dtype), min(batch_size, len(labels))
    rows = batch * (1 if cfg_scale == 1 else 2)
    s, p = config.input_size, config.patch_size
    tokens = (s // p) ** 2 + getattr(net, "extra_tokens", 0)

    def empty(*shape: int, kind: torch.dtype = dtype) -> torch.Tensor:
        return torch.empty(shape, device="meta", dtype=kind)

    x, t = empty(rows, config.in_channels, s, s), empty(rows, kind=torch.float32)
    y = empty(rows, kind=torch.long)
    network_act = measure_peak(lambda: net(x, t, y)) * ACTIVATION_MARGIN / GB
    z = empty(batch, config.in_channels, s, s)
    decode_act = measure_peak(lambda: model.decode(z)) * ACTIVATION_MARGIN / GB
    state = SAMPLER_LATENTS * rows * config.in_channels * s * s * size / GB
    weights = {"network": param_count(net) * size / GB, "ae": param_count(ae) * size / GB}
    reserved = RESERVED_GB if device.type == "cuda" else 0.0
    peak = sum(weights.values()) + max(network_act + state, decode_act) + reserved
    fits = gpu_memory_gb is None or peak <= gpu_memory_gb
    notes = []
    if not fits:
        notes.append(
            f"{model.name} needs {peak:.1f} GB at batch {batch} and the device has "
            f"{gpu_memory_gb:g} GB; lower --batch-size or use --dtype bf16"
        )
    return ClassConditionalPlan(
        model=model.name,
        device=str(device),
        dtype=dtype_name(dtype),
        gpu_memory_gb=gpu_memory_gb,
        labels=list(labels),
        classes=[class_name(label) for label in labels],
        sampler=model.spec.sampler,
        steps=steps,
        cfg_scale=cfg_scale,
        latent_shape=[config.in_channels, s, s],
        tokens=tokens,
        cfg_rows=rows,
        network_params=param_count(net),
        ae_params=param_count(ae),
        weights_gb=weights,
        network_activation_gb=network_act,
        decode_activation_gb=decode_act,
        sampler_state_gb=state,
        peak_gb=peak,
        fits=fits,
        notes=notes,
    )


def class_conditional_plan(
    name: str,
    labels: list[int],
    device: str | None,
    dtype: str | None,
    gpu_memory_gb: float | None,
    batch_size: int,
    cfg_scale: float,
    steps: int,
) -> ClassConditionalPlan:
    """`vidcli generate --plan` for a class-conditional recipe: resolve the device options."""
    from vidcli.devices import resolve_device, resolve_dtype

    where = resolve_device(device, require_available=False)
    return plan_class_conditional(
        name,
        labels,
        where,
        resolve_dtype(dtype, where),
        device_memory_gb(where, gpu_memory_gb),
        batch_size,
        cfg_scale,
        steps,
    )
