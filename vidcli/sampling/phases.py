"""The phases of sampling videos: text -> t2i (first frames) -> sample -> decode.

Each phase brings its models onto the device and sends them home afterwards through the
pipeline's `Placement` (`on_device`); no other code moves a model. Inputs made on the host
(noise from CPU generators, conditions, embeddings) go to the device with `to_device`.

Shapes: videos (N, 3, T, H, W) in [-1, 1]; latents (N, C, T', H', W'); i2v conditions
(C, 1, H', W') per video.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from vidcli import flow
from vidcli.console import log
from vidcli.errors import ShapeError, UsageError
from vidcli.models.content import ContentFrames, needs_content, refuse_conditioned
from vidcli.models.text import TextEmbeddings
from vidcli.offload import decode_with_retry
from vidcli.recipe import SampleSection
from vidcli.sampling.acceleration import sampling_acceleration
from vidcli.sampling.pipeline import Pipeline

OnStep = Callable[[int, torch.Tensor], None]


def encode_text(pipe: Pipeline, *batches: list[str]) -> list[TextEmbeddings]:
    """Text phase: per batch of N prompts, tokens (N, L, D_txt) and pooled (N, D_vec) on the
    device; the encoder comes onto the device once for all batches."""
    with pipe.placement.on_device(text=pipe.text):
        return [pipe.text.encode(prompts) for prompts in batches]


def image_condition(
    pipe: Pipeline, image: Path, size: tuple[int, int, int]
) -> torch.Tensor | ContentFrames:
    """The i2v condition of `--image`: latent frame 0 of the image held still for the video's
    frames (`vidcli.sampling.t2i2v.condition_latent`, the definition training uses): (C, 1, H', W').
    A conditioned AE (Reducio) gets the image as every video's content frame instead.
    """
    from vidcli.media import read_frames
    from vidcli.sampling.t2i2v import condition_latent

    frames, height, width = size
    if not image.is_file():
        raise UsageError(f"--image {image}: file not found")
    frame = read_frames(image, num_frames=1, size=(height, width))
    x = torch.from_numpy(frame).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
    with pipe.placement.on_device(ae=pipe.ae):
        if needs_content(pipe.ae):
            return ContentFrames(x[:, 0][None], [condition_latent(pipe.ae, x[:, 0], frames)])
        return condition_latent(pipe.ae, x[:, 0], frames)


def first_frames(
    pipe: Pipeline,
    sample: SampleSection,
    prompts: list[str],
    seeds: list[int],
    size: tuple[int, int, int],
    on_step: OnStep | None = None,
) -> list[torch.Tensor]:
    """t2i phase of t2i2v: frame 0 of each video drawn by the `[t2i]` model for the raw prompt,
    returned as the video AE's i2v condition latents [(C, 1, H', W')], or for a conditioned AE
    (Reducio) as the videos' content frames."""
    from vidcli.sampling.t2i2v import first_frame_conditions

    place, stage = pipe.placement, pipe.t2i
    with place.autocast():
        # An image DiT without guidance embedding samples with text CFG: it needs the negative.
        negative = None
        if getattr(getattr(stage.dit, "config", None), "guidance_embed", True):
            (emb,) = encode_text(pipe, prompts)
        else:
            emb, neg = encode_text(pipe, prompts, [sample.negative_prompt])
            negative = (place.to_device(neg.tokens), place.to_device(neg.pooled))
        # The plan's t2i phase: the image models, and the video AE that encodes their frames.
        with place.on_device(t2i_dit=stage.dit, t2i_ae=stage.ae, ae=pipe.ae):
            images, refs = first_frame_conditions(
                stage,
                pipe.ae,
                place.to_device(emb.tokens),
                place.to_device(emb.pooled),
                seeds,
                size,
                shift=sample.shift,
                callback=on_step,
                negative=negative,
            )
    return ContentFrames(images, refs) if needs_content(pipe.ae) else refs


def sample_latents(
    pipe: Pipeline,
    sample: SampleSection,
    emb: TextEmbeddings,
    neg: TextEmbeddings,
    seeds: list[int],
    latent_shape: tuple[int, int, int, int],
    reference: torch.Tensor | list[torch.Tensor] | ContentFrames | None = None,
    on_step: OnStep | None = None,
    model_fn: flow.ModelFn | None = None,
    hooks: flow.SamplingHooks | None = None,
) -> torch.Tensor:
    """Sample phase: latents (N, C, T', H', W') for embeddings of N prompts, one seed each.

    latent_shape: (C, T', H', W') of one video; reference: the i2v condition (C, 1, H', W') or
    one per prompt, or a conditioned AE's content frames, whose latents condition every frame.
    A guidance-distilled DiT (Flux-dev, `guidance_embed`) samples without CFG rows, with
    `sample.guidance` as its distilled scale. model_fn: stands in for
    `dit.forward_video` (a caching runner); hooks: the loop's per-evaluation hooks.
    """
    place, dit = pipe.placement, pipe.dit
    p = dit.config.patch_size
    _, t_lat, h_lat, w_lat = latent_shape
    # Each prompt's noise has its own generator: a video depends on its seed, not its batch.
    noise = place.to_device(
        torch.stack(
            [torch.randn(latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
    )
    condition = None
    if isinstance(reference, ContentFrames):
        latent = place.to_device(torch.stack(reference.for_videos(len(seeds)).latents))
        # Every latent frame sees the content latent; kind "content" is never pasted back.
        condition = flow.Condition("content", torch.ones_like(latent[:, :1]), latent)
    elif reference is not None:
        refs = reference if isinstance(reference, list) else [reference] * len(seeds)
        condition = flow.build_condition(
            "i2v_head", noise.shape, refs, causal=False, device=place.device
        )
    # α from the latent size at the DiT's patch (spec §9), unless the recipe fixes flow_shift.
    alpha = sample.flow_shift
    if alpha is None:
        alpha = flow.inference_shift_alpha(h_lat, w_lat, t_lat, p)
    schedule = flow.inference_schedule(
        sample.steps, h_lat * w_lat // (p * p), t_lat, shift=sample.shift, flow_shift=alpha
    )
    guidance = flow.GuidanceConfig(
        text=sample.guidance,
        image=sample.guidance_img,
        text_osci=sample.text_osci,
        image_osci=sample.image_osci,
        scale_temporal_osci=sample.scale_temporal_osci,
    )
    grid = (t_lat, h_lat // p, w_lat // p)
    with place.on_device(dit=dit), sampling_acceleration(sample, grid, hooks) as accel:
        if dit.config.guidance_embed:  # distilled (Flux-dev): the scale enters the model, no CFG
            latents = flow.sample_distilled(
                model_fn or dit.forward_video,
                noise,
                schedule,
                place.to_device(emb.tokens),
                place.to_device(emb.pooled),
                guidance=sample.guidance,
                callback=on_step,
                solver=accel.solver,
                leap=accel.leap,
                hooks=accel.hooks,
            )
        else:
            latents = flow.sample_i2v(
                model_fn or dit.forward_video,
                noise,
                schedule,
                place.to_device(emb.tokens),
                place.to_device(emb.pooled),
                place.to_device(neg.tokens),
                place.to_device(neg.pooled),
                condition=condition,
                guidance=guidance,
                replace_all_items=True,
                callback=on_step,
                solver=accel.solver,
                leap=accel.leap,
                hooks=accel.hooks,
            )
    if accel.plan is not None:
        log.info("attention paths: %s", accel.plan.choices)
    return latents


def decode_videos(
    pipe: Pipeline, latents: torch.Tensor, frames: int, content: torch.Tensor | None = None
) -> torch.Tensor:
    """Decode phase: latents (N, C, T', H', W') -> videos (N, 3, frames, H, W) in [-1, 1] on
    the host, fp32; content: the content frames (N, 3, H, W) a conditioned AE decodes from."""
    with pipe.placement.on_device(ae=pipe.ae):
        video = decode_with_retry(pipe.ae, latents, content).float().cpu()[:, :, :frames]
    return video.clamp(-1, 1)


@torch.no_grad()
def sample_videos(
    pipe: Pipeline,
    sample: SampleSection,
    prompts: list[str],
    seeds: list[int],
    size: tuple[int, int, int],
    reference: torch.Tensor | list[torch.Tensor] | ContentFrames | None = None,
    on_step: OnStep | None = None,
    timings: dict[str, float] | None = None,
    model_fn: flow.ModelFn | None = None,
    hooks: flow.SamplingHooks | None = None,
    decode: bool = True,
) -> torch.Tensor | None:
    """Videos `(N, 3, T, H, W)` in [-1, 1] for prompts with their seeds; size = (T, H, W).

    The text, sample and decode phases under the placement's autocast, each phase's seconds
    added to `timings` ("text", "sample", "decode"); the other arguments as in `sample_latents`.
    `decode` False (the ranks other than 0 of a sequence-parallel run): no decode, None.
    """
    timings = timings if timings is not None else {}
    frames, height, width = size
    latent_shape = pipe.ae.latent_shape(frames, height, width)
    content = None
    if needs_content(pipe.ae):
        if not isinstance(reference, ContentFrames):
            refuse_conditioned(pipe.ae, "text-to-video alone", "pass --image or enable [t2i]")
        content = reference.for_videos(len(seeds)).images
    p = pipe.dit.config.patch_size
    if latent_shape[2] % p or latent_shape[3] % p:
        raise ShapeError(
            f"latent {latent_shape[2]}x{latent_shape[3]} is not divisible by the DiT patch size {p}"
        )

    def timed(phase: str, tick: float) -> None:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - tick

    with pipe.placement.autocast():
        tick = time.perf_counter()
        emb, neg = encode_text(pipe, prompts, [sample.negative_prompt])
        timed("text", tick)
        tick = time.perf_counter()
        latents = sample_latents(
            pipe, sample, emb, neg, seeds, latent_shape, reference, on_step, model_fn, hooks
        )
        timed("sample", tick)
        if not decode:
            return None
        tick = time.perf_counter()
        video = decode_videos(pipe, latents, frames, content)
        timed("decode", tick)
    return video
