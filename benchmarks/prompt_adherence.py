"""Does the model follow its prompts? Colour and direction accuracy on the shapes vocabulary.

For every prompt "a <colour> <shape> moving <direction>" of the synthetic set, generate a clip
and measure its dominant coloured blob (`vidcli.data.synthetic.measure_shapes_clip`): the blob's
colour and its direction of motion are compared with the prompt.

    python benchmarks/prompt_adherence.py                       # the bundled demo model
    python benchmarks/prompt_adherence.py --checkpoint runs/demo-dit/checkpoints/latest --json
    python benchmarks/prompt_adherence.py --recipe recipes/reducio-demo.toml   # t2i -> Reducio

A recipe with `[t2i] enabled` (t2i2v, the Reducio demo) draws each clip's first frame (or, for a
conditioned AE, its content frame) with the image stage for the raw prompt first, as `vidcli
generate` does, and the video model samples from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from vidcli.data.synthetic import COLOURS, DIRECTIONS, SHAPES, measure_shapes_clip, shapes_caption
from vidcli.generate import load_generate_recipe
from vidcli.media import to_uint8_frames
from vidcli.sampling.phases import first_frames, sample_videos
from vidcli.sampling.pipeline import load_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=None, help="default: the bundled demo")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a train-dit checkpoint")
    parser.add_argument("--seeds", type=int, default=1, help="clips per prompt")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    recipe = load_generate_recipe(args.recipe, args.checkpoint, args.overrides)
    pipe = load_pipeline(recipe)
    sample = recipe.sample
    size = (sample.frames, sample.height, sample.width)
    jobs = [
        (shapes_caption(c, s, d), c, d, seed)
        for (c, s, d), seed in itertools.product(
            itertools.product(COLOURS, SHAPES, DIRECTIONS), range(args.seeds)
        )
    ]
    started = time.perf_counter()
    results = []
    for first in range(0, len(jobs), args.batch_size):
        batch = jobs[first : first + args.batch_size]
        prompts, seeds = [j[0] for j in batch], [sample.seed + j[3] for j in batch]
        with torch.no_grad():
            # t2i2v: the image stage's frames (Reducio: content frames) for the raw prompts.
            reference = first_frames(pipe, sample, prompts, seeds, size) if pipe.t2i else None
            videos = sample_videos(pipe, sample, prompts, seeds, size, reference)
        # The image stage's own colour (a still frame has no direction): t2i vs the video model.
        images = getattr(reference, "images", None)
        for i, ((prompt, colour, direction, seed), video) in enumerate(
            zip(batch, videos, strict=True)
        ):
            got_colour, got_direction = measure_shapes_clip(to_uint8_frames(video))
            result = {
                "prompt": prompt,
                "seed": seed,
                "colour": got_colour,
                "direction": got_direction,
                "colour_ok": got_colour == colour,
                "direction_ok": got_direction == direction,
            }
            if images is not None:
                still = to_uint8_frames(images[i][:, None].expand(-1, 2, -1, -1))
                result["first_frame_colour_ok"] = measure_shapes_clip(still)[0] == colour
            results.append(result)
        print(f"{len(results)}/{len(jobs)} clips", file=sys.stderr)
    summary = {
        "clips": len(results),
        "colour_accuracy": sum(r["colour_ok"] for r in results) / len(results),
        "direction_accuracy": sum(r["direction_ok"] for r in results) / len(results),
        "both_accuracy": sum(r["colour_ok"] and r["direction_ok"] for r in results) / len(results),
        "seconds": time.perf_counter() - started,
    }
    if "first_frame_colour_ok" in results[0]:
        summary["first_frame_colour_accuracy"] = sum(
            r["first_frame_colour_ok"] for r in results
        ) / len(results)
    if args.json:
        print(json.dumps({"summary": summary, "results": results}))
    else:
        for r in results:
            mark = ("ok " if r["colour_ok"] else "BAD") + (" ok " if r["direction_ok"] else " BAD")
            print(f"{mark}  {r['prompt']:<32} -> {r['colour']} {r['direction']}")
        print(
            f"colour accuracy {summary['colour_accuracy']:.1%}, "
            f"direction accuracy {summary['direction_accuracy']:.1%}, "
            f"both {summary['both_accuracy']:.1%} over {summary['clips']} clips "
            f"({summary['seconds']:.0f} s)"
        )
        if "first_frame_colour_accuracy" in summary:
            print(f"t2i first frames: colour accuracy {summary['first_frame_colour_accuracy']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
