"""Synthetic "shapes" clips: a coloured shape gliding over a dark background, captioned exactly.

This is the demo model's training set: small, generated offline, and its captions are ground truth
("a red circle moving left"), so a trained model can be checked by measuring colour and motion.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np

from vidcli.errors import UsageError
from vidcli.fileio import atomic_write_text
from vidcli.media import write_video

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 40),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (0, -1),
    "right": (0, 1),
    "up": (-1, 0),
    "down": (1, 0),
}
SHAPES_VOCAB: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "direction": tuple(DIRECTIONS),
}
BACKGROUND_MAX = 40
# Bumped whenever rendering changes, so cached synthetic sets are regenerated.
SHAPES_VERSION = 2
# Shape radius as a fraction of the frame: large enough that a 64 px clip is mostly about the shape.
RADIUS_RANGE = (0.2, 0.26)
"""Background channels stay at or below this value: "dark" and far from every shape colour."""

LISTING_NAME = "listing.jsonl"


def shapes_caption(colour: str, shape: str, direction: str) -> str:
    """The caption of a clip: 'a red circle moving left'."""
    return f"a {colour} {shape} moving {direction}"


def render_shapes_clip(
    colour: str, shape: str, direction: str, frames: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """One clip `(T, H, W, 3)` uint8, `T = frames`, `H = W = size`; the shape stays fully in frame.

    `rng` picks the background shade, the shape's size, its start and its speed.
    """
    if colour not in COLOURS or shape not in SHAPES or direction not in DIRECTIONS:
        raise UsageError(
            f"unknown shapes clip ({colour!r}, {shape!r}, {direction!r}); allowed: {SHAPES_VOCAB}"
        )
    if frames < 1 or size < 16:
        raise UsageError(f"shapes clips need frames >= 1 and size >= 16, got {frames}, {size}")
    radius = rng.uniform(*RADIUS_RANGE) * size
    travel = rng.uniform(0.35, 0.5) * (size - 2 * radius - 2)
    dy, dx = DIRECTIONS[direction]
    lo, hi = radius + 1, size - radius - 1
    # Start so that the whole path [start, start + travel * direction] stays inside the frame.
    cy = rng.uniform(lo + max(0, -dy) * travel, hi - max(0, dy) * travel)
    cx = rng.uniform(lo + max(0, -dx) * travel, hi - max(0, dx) * travel)
    background = rng.integers(0, BACKGROUND_MAX + 1, size=3).astype(np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    clip[:] = background
    for t in range(frames):
        progress = t / max(frames - 1, 1)
        mask = _shape_mask(
            shape, yy - (cy + dy * travel * progress), xx - (cx + dx * travel * progress), radius
        )
        clip[t][mask] = COLOURS[colour]
    return clip


def _shape_mask(shape: str, y: np.ndarray, x: np.ndarray, radius: float) -> np.ndarray:
    """Pixels inside the shape, given coordinates relative to its centre."""
    if shape == "circle":
        return y**2 + x**2 <= radius**2
    if shape == "square":
        half = radius * 0.85
        return (np.abs(y) <= half) & (np.abs(x) <= half)
    # Upward triangle: apex at the top, base at the bottom, width growing linearly downwards.
    inside_rows = (y >= -radius) & (y <= radius)
    return inside_rows & (np.abs(x) <= (y + radius) / 2)


def make_shapes_dataset(
    out_dir: str | Path,
    n: int,
    size: int = 64,
    frames: int = 16,
    fps: float = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write `n` captioned MP4 clips (+ `.txt` sidecars) and `listing.jsonl`; return the listing.

    Deterministic per seed; the combinations are dealt in a shuffled cycle so a small `n` still
    covers many colours, shapes and directions. The listing is written last: it marks completion.
    A folder that already holds a set (its listing or any clip) is replaced only with `overwrite`.
    """
    if n < 1:
        raise UsageError(f"a shapes dataset needs n >= 1 clips, got {n}")
    out_dir = Path(out_dir)
    clips = out_dir / "clips"
    listing = out_dir / LISTING_NAME
    if not overwrite:
        existing = next(iter(clips.glob("shapes-*")), None) if clips.is_dir() else None
        existing = listing if listing.exists() else existing
        if existing is not None:
            raise UsageError(
                f"{out_dir} already holds a synthetic set ({existing}); "
                "pass --overwrite to replace it, or choose another --out"
            )
    clips.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    order = rng.permutation(len(combos))
    rows = []
    for i in range(n):
        colour, shape, direction = combos[order[i % len(combos)]]
        clip = render_shapes_clip(colour, shape, direction, frames, size, rng)
        name = f"shapes-{i:05d}"
        caption = shapes_caption(colour, shape, direction)
        write_video(clips / f"{name}.mp4", clip, fps=fps, overwrite=True)
        atomic_write_text(clips / f"{name}.txt", caption + "\n")
        rows.append(
            {"path": f"clips/{name}.mp4", "caption": caption, "colour": colour, "shape": shape}
            | {"direction": direction}
        )
    return atomic_write_text(listing, "".join(json.dumps(row) + "\n" for row in rows))


_SPEC = re.compile(r"^(?:synthetic:)?shapes:(\d+)$")


def is_synthetic_source(spec: str) -> bool:
    """True for `synthetic:shapes:N` and `shapes:N`."""
    return _SPEC.match(spec) is not None


def resolve_synthetic_source(
    spec: str,
    cache_dir: str | Path,
    size: int = 64,
    frames: int = 16,
    fps: float = 8,
    seed: int = 0,
) -> Path:
    """`synthetic:shapes:N` -> the listing of N cached clips, generated on first use."""
    match = _SPEC.match(spec)
    if match is None:
        raise UsageError(f"unknown synthetic source {spec!r}; expected synthetic:shapes:N")
    n = int(match.group(1))
    folder = (
        Path(cache_dir) / f"shapes-v{SHAPES_VERSION}-n{n}-s{size}-f{frames}-fps{fps:g}-seed{seed}"
    )
    listing = folder / LISTING_NAME
    if listing.is_file():
        return listing
    # No listing: a first use, or an interrupted one whose clips (ours, in the cache) are redone.
    return make_shapes_dataset(
        folder, n, size=size, frames=frames, fps=fps, seed=seed, overwrite=True
    )


def measure_shapes_clip(clip: np.ndarray, min_pixels: int = 4) -> tuple[str | None, str | None]:
    """(colour, direction) of the dominant coloured blob of a clip `(T, H, W, 3)` uint8.

    The inverse of `render_shapes_clip`, used to check a model's prompt adherence: pixels far
    from each frame's median (the background) form the blob; its mean colour names the nearest
    palette colour, and its centroid's path from the first to the last frames names the
    direction along the axis it moved most. None where no blob is found.
    """
    frames = clip.astype(np.float32)
    background = np.median(frames.reshape(len(frames), -1, 3), axis=1)[:, None, None, :]
    distance = np.linalg.norm(frames - background, axis=-1)  # (T, H, W)
    blob = distance > 0.5 * max(float(distance.max()), 1e-6)
    if blob.sum() < min_pixels:
        return None, None
    mean_colour = frames[blob].mean(axis=0)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    colour = list(COLOURS)[int(np.linalg.norm(palette - mean_colour, axis=1).argmin())]
    centroids = []
    for mask in blob:
        ys, xs = np.nonzero(mask)
        centroids.append((ys.mean(), xs.mean()) if len(ys) else (np.nan, np.nan))
    path = np.array(centroids)
    path = path[~np.isnan(path).any(axis=1)]
    if len(path) < 2:
        return colour, None
    quarter = max(1, len(path) // 4)
    dy, dx = path[-quarter:].mean(axis=0) - path[:quarter].mean(axis=0)
    if abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    return colour, direction
