"""Samplers of MIT's class-conditional DC-AE-Diffusion models, with upstream's numerics.

- `dpm_solver`: UViT (ε-prediction, discrete VP schedule), U-ViT's singlestep DPM-Solver++ with
  its N+1-point uniform time grid (30 NFE in the releases).
- `sit_ode`: USiT (velocity of the path x_t = t·data + (1 − t)·noise, t: 0 noise → 1 data) with
  dopri5 (released) or heun2.
- `ddpm`: DiT, 250-step ancestral sampling with learned-range variance, CFG on ε only.

Shapes: noise and results (B, C, S, S) in the networks' scaled latent space; labels (B,) ints.
`net(x, t, y)` is a UViT or DiT; CFG uses the null label `net.config.num_classes`. Guidance scale
1 runs the conditional branch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from vidcli.errors import UsageError
from vidcli.models.dcae_diffusion import (
    DCAEDiffusion,
    DiTConfig,
    Sampler,
    UViTConfig,
    forward_with_cfg,
)
from vidcli.sampling.ode import dopri5, heun2


class Network(Protocol):
    """A UViT or DiT (or a wrapper with its `config`): net(x, t, y) -> output."""

    config: UViTConfig | DiTConfig

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def _null_labels(net: Network, labels: torch.Tensor) -> torch.Tensor:
    return torch.full_like(labels, net.config.num_classes)


# ---- UViT: discrete VP schedule + DPM-Solver ----


def _interpolate(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through (xp, yp), xp increasing, end segments extended."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1) - 1
    x0, x1, y0, y1 = xp[i], xp[i + 1], yp[i], yp[i + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


@dataclass(frozen=True)
class VPSchedule:
    """Discrete VP schedule in continuous time t ∈ (0, 1]: log α is interpolated between
    t_n = n/N (n = 1..N). All tensors float32, shape (N,)."""

    t: torch.Tensor
    log_alpha: torch.Tensor

    @classmethod
    def stable_diffusion(
        cls, steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> VPSchedule:
        """β = linspace(√start, √end)² (float64, then float32); log α = ½·cumsum log(1 − β)."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        log_alpha = 0.5 * torch.log(1 - betas.float()).cumsum(dim=0)
        return cls(torch.linspace(0.0, 1.0, steps + 1)[1:], log_alpha)

    def log_alpha_at(self, t: torch.Tensor) -> torch.Tensor:
        return _interpolate(t, self.t, self.log_alpha)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha_at(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1 - torch.exp(2 * self.log_alpha_at(t)))

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR: log α − log σ."""
        log_alpha = self.log_alpha_at(t)
        return log_alpha - 0.5 * torch.log(1 - torch.exp(2 * log_alpha))

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2 * lam)
        return _interpolate(log_alpha, self.log_alpha.flip(0), self.t.flip(0))


def dpm_orders(steps: int) -> list[int]:
    """U-ViT's "fast" plan: orders 3,…,3 then 2,1 / 1 / 2 for steps mod 3 = 0 / 1 / 2."""
    k = steps // 3 + 1
    if steps % 3 == 0:
        return [3] * (k - 2) + [2, 1]
    if steps % 3 == 1:
        return [3] * (k - 1) + [1]
    return [3] * (k - 1) + [2]


def dpm_solver(
    net: Network,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float,
    steps: int = 30,
    schedule: VPSchedule | None = None,
    t_end: float = 1e-3,
) -> torch.Tensor:
    """Singlestep DPM-Solver++ (data prediction) from t = 1 to t_end with `steps` network
    evaluations (each cond + uncond when guided); the network sees 1000·t."""
    sched = schedule or VPSchedule.stable_diffusion()
    grid = torch.linspace(1.0, t_end, steps + 1)
    batch = noise.shape[0]
    null = _null_labels(net, labels)

    def data_prediction(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_model = (1000 * t).expand(batch)
        if cfg_scale == 1:
            eps = net(x, t_model, labels)
        else:
            both = net(torch.cat((x, x)), torch.cat((t_model, t_model)), torch.cat((labels, null)))
            cond, uncond = both.chunk(2)
            eps = cond + (cfg_scale - 1) * (cond - uncond)
        return (x - sched.sigma(t) * eps) / sched.alpha(t)

    def coefficients(s: torch.Tensor, t: torch.Tensor, h: torch.Tensor):
        """(σ_t/σ_s, α_t, e^{-h} − 1) for a first-order move from s to t."""
        return sched.sigma(t) / sched.sigma(s), sched.alpha(t), torch.expm1(-h)

    x, i = noise, 0
    for order in dpm_orders(steps):
        s, t = grid[i : i + 1], grid[i + order : i + order + 1]
        lam_s = sched.lambda_(s)
        h = sched.lambda_(t) - lam_s
        ratio_t, alpha_t, phi_1 = coefficients(s, t, h)
        d_s = data_prediction(x, s)
        if order == 1:
            x = ratio_t * x - alpha_t * phi_1 * d_s
        else:
            r1 = (sched.lambda_(grid[i + 1 : i + 2]) - lam_s) / h
            s1 = sched.inverse_lambda(lam_s + r1 * h)
            ratio_1, alpha_1, phi_11 = coefficients(s, s1, r1 * h)
            d_1 = data_prediction(ratio_1 * x - alpha_1 * phi_11 * d_s, s1)
            if order == 2:
                x = ratio_t * x - alpha_t * phi_1 * d_s - (0.5 / r1) * alpha_t * phi_1 * (d_1 - d_s)
            else:
                r2 = (sched.lambda_(grid[i + 2 : i + 3]) - lam_s) / h
                s2 = sched.inverse_lambda(lam_s + r2 * h)
                ratio_2, alpha_2, phi_12 = coefficients(s, s2, r2 * h)
                phi_22 = phi_12 / (r2 * h) + 1
                phi_2 = phi_1 / h + 1
                x_2 = (
                    ratio_2 * x - alpha_2 * phi_12 * d_s + r2 / r1 * alpha_2 * phi_22 * (d_1 - d_s)
                )
                d_2 = data_prediction(x_2, s2)
                x = ratio_t * x - alpha_t * phi_1 * d_s + (1 / r2) * alpha_t * phi_2 * (d_2 - d_s)
        i += order
    return x


# ---- USiT: flow-matching ODE ----


def sit_ode(
    net: Network,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float,
    num_times: int = 250,
    method: str = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-6,
) -> torch.Tensor:
    """Integrate dx/dt = v̂(x, t) over num_times output times linspace(0, 1) (float32 values);
    returns the state at t = 1. dopri5 shares its steps across the batch."""
    batch = noise.shape[0]
    y = torch.cat((labels, _null_labels(net, labels))) if cfg_scale != 1 else labels

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if cfg_scale == 1:
            return net(x, t.expand(batch), labels)
        t2 = t.expand(2 * batch)
        return forward_with_cfg(net, torch.cat((x, x)), t2, y, cfg_scale)[:batch]

    times = torch.linspace(0.0, 1.0, num_times).double()
    if method == "dopri5":
        return dopri5(velocity, noise, times, rtol=rtol, atol=atol)[-1]
    if method == "heun2":
        return heun2(velocity, noise, times)[-1]
    raise ValueError(f"unknown ODE method {method!r} (dopri5, heun2)")


# ---- DiT: respaced ancestral DDPM with learned-range variance ----


@dataclass(frozen=True)
class RespacedDDPM:
    """The respaced tables (float64, shape (steps,)) and the original timesteps fed to the net."""

    timesteps: torch.Tensor
    betas: torch.Tensor
    log_betas: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @classmethod
    def linear(cls, steps: int, train_steps: int = 1000) -> RespacedDDPM:
        """Linear betas 1e-4..0.02 over train_steps, keeping `steps` evenly spaced timesteps."""
        base = torch.linspace(1e-4, 0.02, train_steps, dtype=torch.float64)
        base_cumprod = torch.cumprod(1 - base, dim=0)
        # upstream accumulates the stride and rounds each partial sum (Python round)
        stride = (train_steps - 1) / (steps - 1) if steps > 1 else 0.0
        kept, position = [], 0.0
        for _ in range(steps):
            kept.append(round(position))
            position += stride
        cumprod = base_cumprod[kept]
        previous = torch.cat((torch.ones(1, dtype=torch.float64), cumprod[:-1]))
        betas = 1 - cumprod / previous
        posterior_variance = betas * (1 - previous) / (1 - cumprod)
        clipped = torch.cat((posterior_variance[1:2], posterior_variance[1:]))
        return cls(
            timesteps=torch.tensor(kept, dtype=torch.int64),
            betas=betas,
            log_betas=torch.log(betas),
            posterior_log_variance_clipped=torch.log(clipped),
            sqrt_recip_alphas_cumprod=torch.sqrt(1 / cumprod),
            sqrt_recipm1_alphas_cumprod=torch.sqrt(1 / cumprod - 1),
            posterior_mean_coef1=betas * torch.sqrt(previous) / (1 - cumprod),
            posterior_mean_coef2=(1 - previous) * torch.sqrt(1 - betas) / (1 - cumprod),
        )


def ddpm(
    net: Network,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float,
    steps: int = 250,
    generator: torch.Generator | None = None,
    step_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ancestral sampling from x_T = noise; no clipping of x̂₀.

    Noise protocol of upstream: one draw of the whole (doubled, when guided) batch per step,
    including the last, unused one, from `generator` (None: torch's global RNG, as upstream);
    the samples take its first B rows. `step_noise` (steps, B or 2B, C, S, S) replaces the draws.
    """
    tables = RespacedDDPM.linear(steps)
    batch, channels = noise.shape[0], noise.shape[1]
    guided = cfg_scale != 1
    rows = 2 * batch if guided else batch
    y = torch.cat((labels, _null_labels(net, labels))) if guided else labels

    def at(table: torch.Tensor, k: int) -> torch.Tensor:
        return table[k].to(torch.float32)

    x = noise
    for n, k in enumerate(reversed(range(steps))):
        t = tables.timesteps[k].expand(rows).to(noise.device)
        if guided:
            out = forward_with_cfg(net, torch.cat((x, x)), t, y, cfg_scale)[:batch]
        else:
            out = net(x, t, y)
        eps, var = out[:, :channels], out[:, channels:]
        frac = (var + 1) / 2
        log_variance = frac * at(tables.log_betas, k) + (1 - frac) * at(
            tables.posterior_log_variance_clipped, k
        )
        x0 = (
            at(tables.sqrt_recip_alphas_cumprod, k) * x
            - at(tables.sqrt_recipm1_alphas_cumprod, k) * eps
        )
        mean = at(tables.posterior_mean_coef1, k) * x0 + at(tables.posterior_mean_coef2, k) * x
        if step_noise is not None:
            z = step_noise[n, :batch]
        else:
            z = torch.randn((rows, *x.shape[1:]), generator=generator, dtype=x.dtype)
            z = z[:batch].to(x.device)
        x = mean + torch.exp(0.5 * log_variance) * z if k > 0 else mean
    return x


def sample_latents(
    net: Network,
    sampler: Sampler,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the named sampler; `steps` is its NFE (dpm-solver), ODE output times or DDPM steps."""
    if sampler == "dpm-solver":
        return dpm_solver(net, noise, labels, cfg_scale, steps)
    if sampler in ("sit-dopri5", "sit-heun2"):
        method = sampler.removeprefix("sit-")
        return sit_ode(net, noise, labels, cfg_scale, steps, method=method)
    if sampler == "ddpm":
        return ddpm(net, noise, labels, cfg_scale, steps, generator=generator)
    raise ValueError(f"unknown class-conditional sampler {sampler!r}")


DEFAULT_STEPS: dict[str, int] = {"dpm-solver": 30, "sit-dopri5": 250, "sit-heun2": 250, "ddpm": 250}
"""Steps of each sampler when the model's table row names another one."""

# samplers that fit a training objective: ε on the VP schedule, flow velocity, DDPM + variance
_OBJECTIVES: tuple[tuple[str, ...], ...] = (("dpm-solver",), ("sit-dopri5", "sit-heun2"), ("ddpm",))


@torch.no_grad()
def generate_images(
    model: DCAEDiffusion,
    labels: torch.Tensor,
    seed: int = 0,
    cfg_scale: float | None = None,
    sampler: Sampler | None = None,
    steps: int | None = None,
) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] for ImageNet class ids `labels` (B,).

    Defaults come from the released model's table row. The initial noise is one randn of
    (B, C, S, S) from a CPU generator seeded `seed`; DDPM's per-step noise continues that
    generator (upstream used torch's global RNG there).
    """
    spec = model.spec
    sampler = sampler or spec.sampler
    fitting = next(group for group in _OBJECTIVES if spec.sampler in group)
    if sampler not in fitting:
        raise UsageError(
            f"{model.name} was trained for the {'/'.join(fitting)} sampler, not {sampler}"
        )
    if steps is None:
        steps = spec.steps if sampler == spec.sampler else DEFAULT_STEPS[sampler]
    net = model.diffusion_model
    weight = next(net.parameters())
    config = net.config
    size = config.input_size
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(labels), config.in_channels, size, size), generator=generator)
    latents = sample_latents(
        net,
        sampler,
        noise.to(weight.device, weight.dtype),
        labels.to(weight.device),
        spec.cfg_scale if cfg_scale is None else cfg_scale,
        steps,
        generator=generator,
    )
    return model.decode(latents).clamp(-1, 1)
