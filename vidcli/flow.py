"""Rectified flow as Open-Sora 2.0 trains and samples it (shared/reference/opensora2-mmdit.md).

Convention: t = 1 is pure noise, t = 0 is data. x_t = (1 - t)·x₀ + (1 - (1 - σ_min)(1 - t))·ε and
the model predicts the velocity v = dx_t/dt = (1 - σ_min)·ε - x₀;
sampling integrates from t = 1 to 0.
Samplers take a model call and pre-computed text embeddings, so they work with any text encoder:

    model_fn(latents (B, C, T, H, W), timesteps (B,), txt (B, L, D_txt), y_vec (B, D_vec),
             cond_latent (B, C, T, H, W) | None, cond_mask (B, 1, T, H, W) | None,
             guidance (B,) | None) -> velocity (B, C, T, H, W)

which is `MMDiT.forward_video`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vidcli.errors import ShapeError, UsageError

ModelFn = Callable[..., torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]

SIGMA_MIN = 1e-5
CONDITION_KINDS = (
    "t2v",
    "i2v_head",
    "i2v_tail",
    "i2v_loop",
    "v2v_head",
    "v2v_tail",
    "v2v_head_easy",
    "v2v_tail_easy",
)


# ---------------------------------------------------------------- timestep shift (spec §8, §9)


def resolution_lin(num_tokens: float, x1=256.0, y1=1.0, x2=4096.0, y2=3.0) -> float:
    """lin(x) = 1 + (x - 256)·2/3840: the line through (256, 1) and (4096, 3)."""
    m = (y2 - y1) / (x2 - x1)
    return m * num_tokens + (y1 - m * x1)


def resolution_shift_alpha(tokens_per_frame: float, num_latent_frames: int) -> float:
    """α = lin(N_f)·√T_lat: more tokens per frame and more frames shift toward high noise."""
    return resolution_lin(tokens_per_frame) * math.sqrt(num_latent_frames)


def training_shift_alpha(height: int, width: int, num_latent_frames: int) -> float:
    """Training α from unpatchified latent sizes; the reference hard-codes H·W // 4 (patch 2) even
    for patch-1 models (spec §13.2), kept so the released recipes are reproduced."""
    return resolution_shift_alpha(height * width // 4, num_latent_frames)


def inference_shift_alpha(height: int, width: int, num_latent_frames: int, patch: int) -> float:
    """Sampling α from latent sizes: tokens per frame = H·W // p² (spec §9)."""
    return resolution_shift_alpha(height * width // patch**2, num_latent_frames)


def time_shift(alpha: float, t: torch.Tensor) -> torch.Tensor:
    """t ← α·t / (1 + (α - 1)·t)."""
    return alpha * t / (1 + (alpha - 1) * t)


# ---------------------------------------------------------------- training objective (spec §8)


def logit_normal_timesteps(n: torch.Tensor, alpha: float) -> torch.Tensor:
    """t = shift_α(sigmoid(n)) for standard-normal n."""
    return time_shift(alpha, torch.sigmoid(n))


def sample_training_timesteps(
    batch: int,
    alpha: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logit-normal timesteps, shifted by α: (batch,) float32 in (0, 1)."""
    n = torch.randn(batch, generator=generator, device=device)
    return logit_normal_timesteps(n, alpha)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def noisy_latents(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, sigma_min: float = SIGMA_MIN
) -> torch.Tensor:
    """x_t = (1 - t)·x₀ + (1 - (1 - σ_min)(1 - t))·ε; t: (B,), x0/noise: (B, ...)."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + (1 - (1 - sigma_min) * (1 - t)) * noise


def velocity_target(
    x0: torch.Tensor, noise: torch.Tensor, sigma_min: float = SIGMA_MIN
) -> torch.Tensor:
    """v = (1 - σ_min)·ε - x₀ = dx_t/dt."""
    return (1 - sigma_min) * noise - x0


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean((v̂ - v)²) in float32: `(B, ...)` -> `(B,)`; `.mean()` is the batch loss.

    Per sample so a trainer can also report it by timestep (train-dit's loss_t* metrics).
    """
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


# ---------------------------------------------------------------- sampling schedule (spec §9)


def inference_schedule(
    num_steps: int,
    image_seq_len: int,
    num_latent_frames: int,
    shift: bool = True,
    flow_shift: float | None = None,
) -> list[float]:
    """num_steps + 1 noise levels from 1 to 0.

    linspace(1, 0) is a float32 tensor and the shift is evaluated on it with α a Python float, so
    the first level can be 1.0000001 exactly as in the reference. α = flow_shift if given, else
    `resolution_shift_alpha(image_seq_len, num_latent_frames)`.
    """
    if num_steps < 1:
        raise UsageError(f"num_steps must be >= 1, got {num_steps}")
    t = torch.linspace(1, 0, num_steps + 1)
    if shift:
        alpha = (
            flow_shift
            if flow_shift is not None
            else resolution_shift_alpha(image_seq_len, num_latent_frames)
        )
        t = time_shift(alpha, t)
    return t.tolist()


# ---------------------------------------------------------------- conditioning (spec §7.4)


@dataclass
class Condition:
    """Image/video condition: which latent frames are given, and their values."""

    kind: str
    """One of CONDITION_KINDS."""
    mask: torch.Tensor
    """(B, 1, T, H, W): 1 on conditioned latent frames, 0 elsewhere."""
    latent: torch.Tensor
    """(B, C, T, H, W): the reference latent on conditioned frames, 0 elsewhere."""


def build_condition(
    kind: str,
    latent_shape: Sequence[int],
    refs: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    causal: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Condition:
    """Mask and masked reference latent for a batch (spec §7.4).

    latent_shape: (B, C, T, H, W) of the latent being generated. refs[i]: (C, T', H, W) reference
    latent of item i (None = unconditioned item): i2v_head takes its first frame, i2v_tail its last,
    i2v_loop its first for frame 0 and its last for the last frame, v2v_* its first/last k frames
    (k = 8 or 16, +1 with a causal AE). With a single latent frame nothing is conditioned.
    """
    if kind not in CONDITION_KINDS:
        raise UsageError(f"unknown condition kind {kind!r}; accepted: {', '.join(CONDITION_KINDS)}")
    B, C, T, H, W = latent_shape
    mask = torch.zeros(B, 1, T, H, W, device=device, dtype=dtype)
    latent = torch.zeros(B, C, T, H, W, device=device, dtype=dtype)
    if kind == "t2v" or refs is None or T == 1:
        return Condition(kind, mask, latent)
    if len(refs) != B:
        raise ShapeError(f"{len(refs)} references for a batch of {B}")
    k = (16 if kind.endswith("_easy") else 8) + int(causal)
    for i, ref in enumerate(refs):
        if ref is None:
            continue
        ref = ref.to(device=device, dtype=dtype)
        if ref.shape[0] != C or ref.shape[-2:] != (H, W):
            raise ShapeError(
                f"reference {i} has shape {tuple(ref.shape)}, expected ({C}, T', {H}, {W})"
            )
        if kind in ("i2v_head", "i2v_loop"):
            mask[i, :, 0], latent[i, :, 0] = 1, ref[:, 0]
        if kind in ("i2v_tail", "i2v_loop"):
            mask[i, :, -1], latent[i, :, -1] = 1, ref[:, -1]
        if kind.startswith("v2v_head"):
            mask[i, :, :k], latent[i, :, :k] = 1, ref[:, :k]
        if kind.startswith("v2v_tail"):
            mask[i, :, -k:], latent[i, :, -k:] = 1, ref[:, -k:]
    return Condition(kind, mask, latent)


def paste_reference_frames(
    x: torch.Tensor, condition: Condition, replace_all_items: bool = False
) -> torch.Tensor:
    """After sampling, overwrite conditioned i2v frames with the reference latent.

    The reference does this for batch item 0 only (spec §13.4), which is the default so that its
    trajectories are reproduced; `replace_all_items=True` does it for every item. v2v and t2v
    outputs are left unchanged, as in the reference.
    """
    if not condition.kind.startswith("i2v"):
        return x
    x = x.clone()
    items = slice(None) if replace_all_items else slice(0, 1)
    keep = condition.mask[items].to(torch.bool).expand_as(x[items])
    x[items] = torch.where(keep, condition.latent[items].to(x.dtype), x[items])
    return x


# ---------------------------------------------------------------- samplers (spec §9)


OSCILLATION_START = 0.2
"""Guidance oscillates from this fraction of the schedule on (the reference's step 10 of 50)."""


@dataclass
class GuidanceConfig:
    """Classifier-free guidance of the Open-Sora 2.0 i2v denoiser (used for t2v too)."""

    text: float = 7.5
    """Text guidance scale g_txt."""
    image: float = 3.0
    """Image-condition guidance scale g_img."""
    text_osci: bool = True
    """Oscillation of g_txt from `osci_start` on (see `oscillated_scale`)."""
    image_osci: bool = True
    """Oscillation of g_img from `osci_start` on (see `oscillated_scale`)."""
    scale_temporal_osci: bool = True
    """For i2v conditions: g_img decays over the steps and grows from 1 along latent frames."""
    osci_start: float = OSCILLATION_START
    """Fraction of the schedule (step / steps) from which guidance oscillates."""


def oscillated_scale(
    scale: float,
    step: int,
    num_steps: int,
    enabled: bool,
    solver: str = "euler",
    start: float = OSCILLATION_START,
) -> float:
    """Guidance scale at `step` of `num_steps` when oscillation is `enabled`.

    Open-Sora 2.0 sets the scale to 1 at odd steps from step 10 of its 50. Counted in steps, that
    rule depends on the step count and on the solver: 8 rf2 steps never reach step 10 while 16
    Euler steps (the same DiT evaluations) oscillate from step 10 on, so the two solve different
    ODEs. Here oscillation starts at a fraction of the schedule instead, `step / num_steps >=
    start` (0.2 = the reference's 10 of 50, so 50-step runs are the reference's): Euler then
    alternates g, 1, g, 1, ... and a solver with several evaluations per step (rf2) uses at each of
    them the scale that alternation averages to, (g + 1) / 2; the velocity is affine in g, so over
    a pair of Euler steps (one rf2 step at half the steps) both follow the same mean field.
    """
    if not enabled or step / num_steps < start:
        return scale
    if solver == "euler":
        return 1.0 if step % 2 == 1 else scale
    return (scale + 1.0) / 2


def temporal_image_scale(scale: float, step: int, num_steps: int, num_frames: int) -> torch.Tensor:
    """Per-latent-frame g_img: linspace(1, g_top, T) with g_top = linspace(g_img, 1, S + 1)[step],
    shaped (1, 1, T, 1, 1) to broadcast over (B, C, T, H, W); float32 as in the reference."""
    top = torch.linspace(scale, 1.0, num_steps + 1)[step]
    return torch.linspace(1.0, float(top), num_frames)[None, None, :, None, None]


SOLVERS = ("euler", "rf2")


@dataclass(frozen=True)
class StepInfo:
    """What the sampling loop is about to evaluate; handed to `SamplingHooks.before_evaluation`."""

    step: int
    """0-based solver step."""
    num_steps: int
    """Steps in the schedule (a leap may end the run earlier)."""
    t: float
    """Time of this evaluation (1 = noise)."""
    midpoint: bool
    """True for rf2's second evaluation of a step, at t + h/2."""
    evaluation: int
    """0-based count of model evaluations so far in this run."""
    branches: tuple[str, ...]
    """CFG layout along the batch, N rows each, in order: ("cond", "uncond") for t2v,
    ("cond", "uncond", "uncond_noimg") with an image condition, ("cond",) without CFG."""
    batch: int
    """N: rows per branch."""


class SamplingHooks:
    """Per-evaluation hook of the sampling loop (caches, attention plans, token merging).

    Subclass and override; the loop calls `before_evaluation` right before each model call and
    `end_run` once sampling finished (also after a leap).
    """

    def before_evaluation(self, info: StepInfo) -> None:
        """Called before every model call of the run."""

    def end_run(self) -> None:
        """Called once after the last evaluation."""


@dataclass
class LeapConfig:
    """Linear Proportional Leap (On-device Sora, arXiv 2502.04363, §1.1 of
    shared/reference/attention-tokens-solvers.md): once consecutive velocities stop turning,
    jump to t = 0 along the last velocity."""

    min_step: int = 14
    """First step at which the cosine test runs (the authors' 14 of 30)."""
    eps: float = 1e-3
    """A cosine counts as an improvement when it beats the best by more than eps."""
    patience: int = 3
    """Steps without improvement before the leap fires."""

    @classmethod
    def for_steps(cls, num_steps: int, start: float, patience: int = 3) -> LeapConfig:
        """The rule scaled to a run: the test starts after `start` of the steps."""
        return cls(min_step=max(1, round(start * num_steps)), patience=patience)


def velocity_cosine(v: torch.Tensor, v_prev: torch.Tensor) -> float:
    """The authors' probe: cosine similarity row by row (along W) of item 0, channel 0, frame 0,
    averaged over the rows. v, v_prev: (B, C, T, H, W)."""
    a, b = v[0, 0, 0].float(), v_prev[0, 0, 0].float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()


class _LeapTracker:
    """Patience state of one run: leap when the cosine has not improved for `patience` steps."""

    def __init__(self, config: LeapConfig):
        self.config, self.best, self.tol, self.prev = config, 0.0, config.patience, None

    def should_leap(self, step: int, v: torch.Tensor) -> bool:
        prev, self.prev = self.prev, v
        if prev is None or step < self.config.min_step:
            return False
        cos = velocity_cosine(v, prev)
        if cos > self.best + self.config.eps:
            self.best, self.tol = cos, self.config.patience
            return False
        self.tol -= 1
        return self.tol <= 0


def sample_ode(
    velocity_fn: Callable[[torch.Tensor, float, int], torch.Tensor],
    x: torch.Tensor,
    schedule: Sequence[float],
    solver: str = "euler",
    callback: StepCallback | None = None,
    leap: LeapConfig | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v̂(x, t, step) along the schedule (1 -> 0 samples, 0 -> 1 inverts).

    euler: x ← x + h·v̂(x, t_i), h = t_{i+1} - t_i (one evaluation per step).
    rf2 (RF-Solver-2, arXiv 2411.04746 eq. 8): v₁ = v̂(x, t), v₂ = v̂(x + h/2·v₁, t + h/2) and the
    Taylor update x + h·v₁ + ½h²·(v₂ - v₁)/(h/2), which simplifies to x + h·v₂ (the explicit
    midpoint rule; two evaluations per step, exact for velocities linear in t).
    leap: after v̂(x, t_i) is known, a Linear Proportional Leap may end the run with
    x + (t_end - t_i)·v̂(x, t_i).
    """
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}; accepted: {', '.join(SOLVERS)}")
    tracker = _LeapTracker(leap) if leap is not None else None
    t_end = schedule[-1]
    for i, (t_curr, t_next) in enumerate(itertools.pairwise(schedule)):
        if callback is not None:
            callback(i, x)
        h = t_next - t_curr
        v = velocity_fn(x, t_curr, i)
        if tracker is not None and tracker.should_leap(i, v):
            return x + (t_end - t_curr) * v
        if solver == "rf2":
            v = velocity_fn(x + (h / 2) * v, t_curr + h / 2, i)
        x = x + h * v
    return x


def sample_euler(
    velocity_fn: Callable[[torch.Tensor, float, int], torch.Tensor],
    x: torch.Tensor,
    schedule: Sequence[float],
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler integration x ← x + (t_{i+1} - t_i)·v̂(x, t_i) along the schedule (1 -> 0)."""
    return sample_ode(velocity_fn, x, schedule, "euler", callback)


def sample_i2v(
    model_fn: ModelFn,
    noise: torch.Tensor,
    schedule: Sequence[float],
    txt: torch.Tensor,
    y_vec: torch.Tensor,
    neg_txt: torch.Tensor,
    neg_y_vec: torch.Tensor,
    condition: Condition | None = None,
    guidance: GuidanceConfig | None = None,
    replace_all_items: bool = False,
    callback: StepCallback | None = None,
    solver: str = "euler",
    leap: LeapConfig | None = None,
    hooks: SamplingHooks | None = None,
) -> torch.Tensor:
    """Open-Sora 2.0 sampling with text and image CFG (t2v when `condition` is None or "t2v").

    noise: (N, C, T, H, W); txt: (N, L, D_txt), y_vec: (N, D_vec); neg_txt / neg_y_vec: the
    negative prompt ("" in the reference), batch N or 1. With an image condition each step runs
    the model on 3N rows [prompt + cond, negative + cond, negative + zero cond] giving v_c, v_u,
    v_u2 and uses v̂ = v_u2 + g_img·(v_u - v_u2) + g_txt·(v_c - v_u); t2v and steps whose image
    scale is 1 run 2N rows [prompt, negative] and use v̂ = v_u + g_txt·(v_c - v_u), the same
    value, and N rows where the text scale is 1 too (v̂ = v_c). `solver`: "euler" or "rf2" (see
    `sample_ode`); `leap`: Linear Proportional Leap; `hooks`: told every evaluation's step and
    batch layout (`StepInfo`).
    Returns the final latent (N, C, T, H, W), with reference frames pasted back into item 0 (see
    `paste_reference_frames`).
    """
    guidance = guidance or GuidanceConfig()
    N, _, T = noise.shape[:3]
    if condition is None:
        condition = build_condition("t2v", noise.shape, device=noise.device, dtype=noise.dtype)
    neg_txt = neg_txt.expand(N, *neg_txt.shape[1:])
    neg_y_vec = neg_y_vec.expand(N, *neg_y_vec.shape[1:])
    if neg_txt.shape[1:] != txt.shape[1:]:
        raise ShapeError(
            f"negative text tokens {tuple(neg_txt.shape)} must match prompt tokens "
            f"{tuple(txt.shape)}"
        )
    # t2v: the condition is all zero, so the rows [negative + cond] and [negative + zero cond] are
    # the same input; v_u2 = v_u and v̂ reduces to v_u + g_txt·(v_c - v_u) on 2N rows.
    image_cfg = condition.kind != "t2v"
    txt_rows = torch.cat((txt, neg_txt, neg_txt))
    y_rows = torch.cat((y_vec, neg_y_vec, neg_y_vec))
    cond_mask_rows = cond_latent_rows = None  # t2v: no condition = all-zero condition rows
    if image_cfg:
        mask = condition.mask.to(noise.dtype)
        ref = condition.latent.to(noise.dtype)
        cond_mask_rows = torch.cat((mask, mask, torch.zeros_like(mask)))
        cond_latent_rows = torch.cat((ref, ref, torch.zeros_like(ref)))
    temporal = guidance.scale_temporal_osci and condition.kind.startswith("i2v")
    num_steps = len(schedule) - 1
    evaluations = 0

    def evaluate(x: torch.Tensor, t: float, step: int, branches: tuple[str, ...]) -> torch.Tensor:
        nonlocal evaluations
        if hooks is not None:
            midpoint = t != schedule[step]
            info = StepInfo(step, num_steps, t, midpoint, evaluations, branches, N)
            hooks.before_evaluation(info)
        evaluations += 1
        rows = len(branches) * N
        t_vec = torch.full((rows,), t, dtype=x.dtype, device=x.device)
        cond_latent = cond_latent_rows[:rows] if image_cfg else None
        cond_mask = cond_mask_rows[:rows] if image_cfg else None
        x_rows = torch.cat([x] * len(branches))
        v = model_fn(x_rows, t_vec, txt_rows[:rows], y_rows[:rows], cond_latent, cond_mask, None)
        return v.chunk(len(branches))

    def guided_velocity(x: torch.Tensor, t: float, step: int) -> torch.Tensor:
        g_txt = oscillated_scale(
            guidance.text, step, num_steps, guidance.text_osci, solver, guidance.osci_start
        )
        if not image_cfg:
            if g_txt == 1.0:  # v_u + 1·(v_c - v_u) = v_c: the negative rows would be wasted
                return evaluate(x, t, step, ("cond",))[0]
            v_c, v_u = evaluate(x, t, step, ("cond", "uncond"))
            return v_u + g_txt * (v_c - v_u)
        g_img = oscillated_scale(
            guidance.image, step, num_steps, guidance.image_osci, solver, guidance.osci_start
        )
        if g_img == 1.0:  # v_u2 + 1·(v_u - v_u2) = v_u: the no-image rows would be wasted
            if g_txt == 1.0:
                return evaluate(x, t, step, ("cond",))[0]
            v_c, v_u = evaluate(x, t, step, ("cond", "uncond"))
            return v_u + g_txt * (v_c - v_u)
        v_c, v_u, v_u2 = evaluate(x, t, step, ("cond", "uncond", "uncond_noimg"))
        if temporal and g_img > 1.0:
            g_img = temporal_image_scale(g_img, step, num_steps, T).to(x.device, v_c.dtype)
        return v_u2 + g_img * (v_u - v_u2) + g_txt * (v_c - v_u)

    x = sample_ode(guided_velocity, noise, schedule, solver, callback, leap)
    if hooks is not None:
        hooks.end_run()
    return paste_reference_frames(x, condition, replace_all_items)


def invert(
    model_fn: ModelFn,
    latent: torch.Tensor,
    schedule: Sequence[float],
    txt: torch.Tensor,
    y_vec: torch.Tensor,
    solver: str = "rf2",
    hooks: SamplingHooks | None = None,
) -> torch.Tensor:
    """RF-Solver inversion (video -> noise): integrate the source prompt's velocity backwards, from
    t = 0 to t = 1 along the reversed `schedule`, without CFG (guidance 1, as RF-Edit inverts).

    latent: (N, C, T, H, W) clean latent; txt: (N, L, D_txt), y_vec: (N, D_vec)
    -> (N, C, T, H, W) noise that `sample_i2v(..., guidance=GuidanceConfig(text=1.0),
    solver=solver)` on the same schedule maps back to `latent`.
    """
    unguided = GuidanceConfig(text=1.0, text_osci=False)
    return sample_i2v(
        model_fn, latent, list(reversed(schedule)), txt, y_vec, txt, y_vec,
        guidance=unguided, solver=solver, hooks=hooks,
    )  # fmt: skip


def sample_distilled(
    model_fn: ModelFn,
    noise: torch.Tensor,
    schedule: Sequence[float],
    txt: torch.Tensor,
    y_vec: torch.Tensor,
    guidance: float = 4.0,
    callback: StepCallback | None = None,
    solver: str = "euler",
    leap: LeapConfig | None = None,
    hooks: SamplingHooks | None = None,
) -> torch.Tensor:
    """Guidance-distilled sampling (Flux-dev): no CFG batch, the scale enters `guidance_in`.

    `solver`, `leap` and `hooks` as in `sample_i2v` (one "cond" branch per evaluation).
    noise: (N, C, T, H, W) -> (N, C, T, H, W)
    """
    N = noise.shape[0]
    g_vec = torch.full((N,), guidance, dtype=noise.dtype, device=noise.device)
    num_steps = len(schedule) - 1
    evaluations = 0

    def velocity(x: torch.Tensor, t: float, step: int) -> torch.Tensor:
        nonlocal evaluations
        if hooks is not None:
            midpoint = t != schedule[step]
            hooks.before_evaluation(
                StepInfo(step, num_steps, t, midpoint, evaluations, ("cond",), N)
            )
        evaluations += 1
        t_vec = torch.full((N,), t, dtype=x.dtype, device=x.device)
        return model_fn(x, t_vec, txt, y_vec, None, None, g_vec)

    x = sample_ode(velocity, noise, schedule, solver, callback, leap)
    if hooks is not None:
        hooks.end_run()
    return x
