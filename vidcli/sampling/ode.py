"""ODE integrators with torchdiffeq's numerics: Heun (fixed grid) and Dormand–Prince 5(4).

The flow-matching models were evaluated with torchdiffeq; these reproduce its step sequences
(and so its network-evaluation times) without the dependency. Times are float64, the state keeps
its dtype, and `f(t, y)` receives t as a 0-dim tensor in the state's dtype.
The adaptive step size is shared by the whole state: every sample of a batch takes the same steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

Drift = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""f(t, y) -> dy/dt, same shape as y."""

# Dormand–Prince 5(4): stage nodes, stage weights, 5th-order solution weights (first same as
# last: the seventh stage is evaluated at the solution), error weights (5th − 4th order) and
# Shampine's mid-point weights for dense output.
_NODES = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_SOLUTION = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_STAGES = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    _SOLUTION,
)
_ERROR = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 + 12231 / 42400,
    11 / 84 - 649 / 6300,
    -1 / 60,
)
_MID = tuple(
    w / 2
    for w in (
        6025192743 / 30085553152,
        0.0,
        51252292925 / 65400821598,
        -2691868925 / 45128329728,
        187940372067 / 1594534317056,
        -1776094331 / 19743644256,
        11237099 / 235043384,
    )
)
_SAFETY, _MAX_GROWTH, _MAX_SHRINK = 0.9, 10.0, 0.2
_MAX_STEPS = 100_000


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.abs().pow(2).mean().sqrt()


def _weighted(k: torch.Tensor, weights: tuple[float, ...], dt: torch.Tensor) -> torch.Tensor:
    """Σ_j k_j·(w_j·dt): k (..., stages) stacked slopes, weights cast to k's dtype."""
    w = torch.tensor(weights, dtype=k.dtype, device=k.device)[: k.shape[-1]]
    return k.matmul(w * dt)


def heun2(f: Drift, y0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Heun's method stepping exactly through `times` (float64, increasing).

    Returns (len(times), *y0.shape): the state at every time. Two evaluations per interval.
    """
    times = times.double()
    out, y = [y0], y0
    for t0, t1 in itertools.pairwise(times):
        dt = t1 - t0
        k1 = f(t0.to(y.dtype), y)
        k2 = f((t0 + dt).to(y.dtype), y + k1 * dt)
        y = y + (k1 + k2) * (dt / 2)
        out.append(y)
    return torch.stack(out)


def _initial_step(
    f: Drift, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol: float
) -> torch.Tensor:
    """Hairer–Nørsett–Wanner's starting step for a 4th-order error estimate (one evaluation)."""
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = (
        torch.tensor(1e-6, dtype=y0.dtype, device=y0.device)
        if d0 < 1e-5 or d1 < 1e-5
        else 0.01 * d0 / d1
    )
    f1 = f((t0 + h0).to(y0.dtype), y0 + h0 * f0)
    d2 = (_rms((f1 - f0) / scale) / h0).abs()
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = torch.clamp(h0 * 1e-3, min=1e-6)
    else:
        h1 = (0.01 / torch.maximum(d1, d2)) ** (1 / 5)
    return torch.minimum(100 * h0, h1).double()


def _dense_coefficients(
    y0: torch.Tensor, y1: torch.Tensor, k: torch.Tensor, dt: torch.Tensor
) -> list[torch.Tensor]:
    """4th-order polynomial in x = (t − t0)/dt through the step's ends, slopes and mid-point."""
    y_mid = y0 + _weighted(k, _MID, dt)
    f0, f1 = k[..., 0], k[..., -1]
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    return [y0, dt * f0, c, b, a]


def _evaluate_dense(
    coefficients: list[torch.Tensor], t0: torch.Tensor, t1: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    x = ((t - t0) / (t1 - t0)).to(coefficients[0].dtype)
    total, power = coefficients[0] + x * coefficients[1], x
    for coefficient in coefficients[2:]:
        power = power * x
        total = total + power * coefficient
    return total


def dopri5(
    f: Drift, y0: torch.Tensor, times: torch.Tensor, rtol: float = 1e-3, atol: float = 1e-6
) -> torch.Tensor:
    """Adaptive Dormand–Prince 5(4) from times[0]; returns (len(times), *y0.shape).

    Outputs between accepted steps come from the dense-output polynomial, so the last step
    usually ends past times[-1] and `f` is evaluated there too.
    """
    times = times.double()
    dtype = y0.dtype
    t_prev = t_end = times[0]
    y, fy = y0, f(t_end.to(dtype), y0)
    dt = _initial_step(f, t_end, y, fy, rtol, atol)
    dense: list[torch.Tensor] = []
    out = [y0]
    steps = 0
    for target in times[1:]:
        while target > t_end:
            steps += 1
            if steps > _MAX_STEPS or t_end + dt <= t_end:
                raise RuntimeError(
                    f"dopri5: no progress at t={t_end.item():.6g} after {steps - 1} steps "
                    f"(step size {dt.item():.3g})"
                )
            t1 = t_end + dt
            t0_s, dt_s, t1_s = t_end.to(dtype), dt.to(dtype), t1.to(dtype)
            k = fy[..., None]
            for node, weights in zip(_NODES, _STAGES, strict=True):
                # stages at the step's end see its fp32 end time one ulp down (torchdiffeq)
                ti = torch.nextafter(t1_s, t1_s - 1) if node == 1.0 else t0_s + node * dt_s
                yi = y + _weighted(k, weights, dt_s)
                k = torch.cat((k, f(ti, yi)[..., None]), dim=-1)
            error = _weighted(k, _ERROR, dt_s)
            ratio = _rms(error / (atol + rtol * torch.maximum(y.abs(), yi.abs())))
            if ratio <= 1:
                dense = _dense_coefficients(y, yi, k, dt_s)
                t_prev, t_end, y, fy = t_end, t1, yi, k[..., -1]
            if ratio == 0:
                dt = dt * _MAX_GROWTH
            else:
                shrink = 1.0 if ratio < 1 else _MAX_SHRINK
                factor = min(_MAX_GROWTH, max(_SAFETY / ratio.double() ** 0.2, shrink))
                dt = dt * factor
        out.append(_evaluate_dense(dense, t_prev, t_end, target))
    return torch.stack(out)
