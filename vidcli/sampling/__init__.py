"""Sampling-time machinery around the rectified-flow loop: acceleration policies the loop consults.

`pipeline.py` loads a run's models and places them (`vidcli.placement`); `phases.py` runs them
phase by phase: text -> t2i (first frames) -> sample -> decode.
`cache/` holds the training-free caching policies (one module per method).
`class_conditional.py` samples MIT's class-conditional DC-AE-Diffusion models (DPM-Solver, flow
ODE via `ode.py`'s heun2 / dopri5, learned-variance DDPM).
"""
