"""Synthetic shapes clips: the caption's colour, shape and direction are measurable."""

import json

import numpy as np
import pytest

from vidcli.data.synthetic import (
    BACKGROUND_MAX,
    COLOURS,
    DIRECTIONS,
    RADIUS_RANGE,
    SHAPES,
    make_shapes_dataset,
    render_shapes_clip,
    resolve_synthetic_source,
)
from vidcli.errors import UsageError
from vidcli.media import probe_video, read_frames


def blob(frame: np.ndarray, threshold: int = 2 * BACKGROUND_MAX) -> tuple[np.ndarray, np.ndarray]:
    """(mean colour, centroid (y, x)) of the pixels brighter than the dark background."""
    mask = frame.max(-1) > threshold
    ys, xs = np.nonzero(mask)
    return frame[mask].mean(0), np.array([ys.mean(), xs.mean()])


@pytest.mark.parametrize("colour", list(COLOURS))
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_colour_and_motion_are_measurable(colour, direction):
    clip = render_shapes_clip(colour, "circle", direction, 8, 64, np.random.default_rng(3))
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
    first_colour, first_centre = blob(clip[0])
    last_colour, last_centre = blob(clip[-1])
    assert np.allclose(first_colour, COLOURS[colour]) and np.allclose(last_colour, COLOURS[colour])
    moved = last_centre - first_centre
    dy, dx = DIRECTIONS[direction]
    along = moved @ np.array([dy, dx])
    assert along > 64 * 0.15  # travels at least 15% of the frame
    assert abs(moved @ np.array([dx, dy])) < 1.0  # and not sideways
    assert (
        clip[0].reshape(-1, 3)[clip[0].max(-1).reshape(-1) <= 2 * BACKGROUND_MAX].max()
        <= BACKGROUND_MAX
    )


def test_shapes_differ_in_area():
    areas = {}
    for shape in SHAPES:
        clip = render_shapes_clip("white", shape, "left", 1, 96, np.random.default_rng(0))
        areas[shape] = (clip[0].max(-1) > 2 * BACKGROUND_MAX).sum()
    radius = np.random.default_rng(0).uniform(*RADIUS_RANGE) * 96
    assert areas["circle"] == pytest.approx(np.pi * radius**2, rel=0.05)
    assert areas["square"] == pytest.approx((1.7 * radius) ** 2, rel=0.08)
    assert areas["triangle"] == pytest.approx(2 * radius**2, rel=0.08)


def test_render_rejects_unknown_words():
    with pytest.raises(UsageError, match="unknown shapes clip \\('purple'"):
        render_shapes_clip("purple", "circle", "left", 4, 64, np.random.default_rng(0))


def test_dataset_is_captioned_and_deterministic(shapes_listing, tmp_path):
    rows = [json.loads(line) for line in shapes_listing.read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        clip = shapes_listing.parent / row["path"]
        assert row["caption"] == f"a {row['colour']} {row['shape']} moving {row['direction']}"
        assert clip.with_suffix(".txt").read_text().strip() == row["caption"]
        info = probe_video(clip)
        assert (info.width, info.height, info.num_frames, info.fps) == (64, 64, 8, 8.0)
    # The H.264 copy keeps the colour within compression error.
    colour, _ = blob(read_frames(shapes_listing.parent / rows[0]["path"], num_frames=1)[0])
    assert np.abs(colour - COLOURS[rows[0]["colour"]]).max() < 30
    again = make_shapes_dataset(tmp_path, n=6, size=64, frames=8, fps=8)
    assert again.read_text() == shapes_listing.read_text()
    assert np.array_equal(
        read_frames(again.parent / rows[1]["path"]),
        read_frames(shapes_listing.parent / rows[1]["path"]),
    )


def test_resolve_synthetic_source_caches(tmp_path):
    listing = resolve_synthetic_source("synthetic:shapes:2", tmp_path, frames=4)
    stamp = listing.stat().st_mtime_ns
    assert resolve_synthetic_source("synthetic:shapes:2", tmp_path, frames=4) == listing
    assert listing.stat().st_mtime_ns == stamp
    assert len(listing.read_text().splitlines()) == 2
    with pytest.raises(UsageError, match="expected synthetic:shapes:N"):
        resolve_synthetic_source("synthetic:cubes:2", tmp_path)
