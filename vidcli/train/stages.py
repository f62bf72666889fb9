"""The training stages by name: what `vidcli train-<name>` and a spawned rank's `--stage` run.

The launcher is handed a stage's function and never imports the stages, which import it.
"""

from __future__ import annotations

from vidcli.train import ae, dit
from vidcli.train.launcher import StageRun

STAGES: dict[str, StageRun] = {"ae": ae.run, "dit": dit.run}
