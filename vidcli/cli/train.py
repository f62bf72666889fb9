"""`vidcli train-ae` and `vidcli train-dit`: one recipe, the same options, one launcher call."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vidcli.cli.common import (
    DebugOpt,
    GpuMemoryOpt,
    JsonOpt,
    NprocOpt,
    PlanOpt,
    PrintRecipeOpt,
    QuietOpt,
    ResolvedRecipe,
    SetOpt,
    run_action,
)
from vidcli.errors import UsageError
from vidcli.recipe import dump_recipe, load_recipe

TRAIN_AE_EXAMPLES = """
Examples:

    vidcli train-ae recipes/demo-ae.toml

    vidcli train-ae recipes/video-dcae.toml --nproc 8 --set train.lr=5e-5

    vidcli train-ae recipes/demo-ae.toml --resume latest
"""

TRAIN_DIT_EXAMPLES = """
Examples:

    vidcli train-dit recipes/demo-dit.toml

    vidcli train-dit recipes/hcae.toml --nproc 8 --set launcher.zero_stage=2

    vidcli train-dit recipes/hcae.toml --hostfile hosts.txt

    vidcli train-dit recipes/demo-dit.toml --resume runs/demo-dit/checkpoints/step-0000100

    vidcli train-dit recipes/demo-dit.toml --compile
"""

RecipeArg = Annotated[Path, typer.Argument(help="TOML recipe (see recipes/).")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", help="Output folder (default: [train] output).")
]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue a run exactly where it stopped: from the checkpoint the output folder's "
        "`checkpoints/latest` names (bare `--resume`, or `--resume latest`) or from a checkpoint "
        "folder vidcli wrote.",
    ),
]
HostfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--hostfile",
        help="DeepSpeed hostfile: run on many nodes (slots set the ranks per node). The output "
        "folder must be on storage every node mounts at the same path.",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Start afresh in an output folder that holds another run, removing it."
    ),
]


CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the DiT before the engine wraps it (the first steps compile; --set "
        'train.compile="blocks" compiles each repeated block class instead).',
    ),
]


def _train(
    stage_name: str,
    recipe_path: Path,
    set_values: list[str] | None,
    output: Path | None,
    resume: str | None,
    nproc: int | None,
    hostfile: Path | None,
    print_recipe: bool,
    plan: bool = False,
    gpu_memory: float | None = None,
    overwrite: bool = False,
    compile_dit: bool = False,
) -> Any:
    overrides = list(set_values or [])
    if compile_dit:
        from vidcli.compile import DEFAULT_MODE

        overrides.append(f"train.compile={json.dumps(DEFAULT_MODE)}")
    if output is not None:
        overrides.append(f"train.output={json.dumps(str(output))}")
    if nproc is not None:
        overrides.append(f"launcher.nproc={nproc}")
    if hostfile is not None:
        overrides.append(f"launcher.hostfile={json.dumps(str(hostfile))}")
    recipe = load_recipe(recipe_path, overrides)
    if print_recipe:
        return ResolvedRecipe(dump_recipe(recipe))
    if plan:
        if stage_name != "dit":
            raise UsageError("--plan is available for train-dit")
        from vidcli import plans

        return plans.train_plan(recipe, gpu_memory)
    from vidcli.train import launcher
    from vidcli.train.stages import STAGES

    return launcher.launch(
        stage_name,
        STAGES[stage_name],
        recipe,
        recipe_path=recipe_path,
        resume=resume,
        overwrite=overwrite,
    )


def _train_command(stage: str, help_text: str) -> Callable[..., None]:
    """One `train-<stage>` command: both trainers take the same options (train-dit also
    `--compile`)."""

    def command(
        recipe: RecipeArg,
        set_values: SetOpt = None,
        output: OutputOpt = None,
        resume: ResumeOpt = None,
        nproc: NprocOpt = None,
        hostfile: HostfileOpt = None,
        overwrite: OverwriteOpt = False,
        print_recipe: PrintRecipeOpt = False,
        plan: PlanOpt = False,
        gpu_memory: GpuMemoryOpt = None,
        json_output: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
        compile_dit: CompileOpt = False,
    ) -> None:
        run_action(
            lambda: _train(
                stage,
                recipe,
                set_values,
                output,
                resume,
                nproc,
                hostfile,
                print_recipe,
                plan,
                gpu_memory,
                overwrite=overwrite,
                compile_dit=compile_dit,
            ),
            as_json=json_output,
            quiet=quiet,
            debug=debug,
        )

    if stage != "dit":  # the DiT is what compiles; train-ae's signature goes without the option
        signature = inspect.signature(command, eval_str=True)
        command.__signature__ = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != "compile_dit"]
        )
    command.__doc__ = help_text
    return command


train_ae = _train_command(
    "ae", "Train a DC-AE video autoencoder (reconstruction + LPIPS, optional GAN) on DeepSpeed."
)
train_dit = _train_command(
    "dit", "Train an MMDiT with rectified flow on AE latents (pre-extracted or on the fly)."
)


def bare_resume_means_latest(args: list[str]) -> list[str]:
    """In `train-ae` / `train-dit`, a `--resume` with no value (last, or before another option)
    becomes `--resume latest`: Typer has no option with an optional value."""
    if not {"train-ae", "train-dit"} & set(args):
        return list(args)
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--resume" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("latest")
    return out
