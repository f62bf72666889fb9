"""The shapes-clip measurement recovers the ground truth of every rendered combination."""

import itertools

import numpy as np

from vidcli.data.synthetic import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    measure_shapes_clip,
    render_shapes_clip,
)


def test_measure_recovers_colour_and_direction_of_rendered_clips():
    rng = np.random.default_rng(0)
    for colour, shape, direction in itertools.product(COLOURS, SHAPES, DIRECTIONS):
        clip = render_shapes_clip(colour, shape, direction, frames=16, size=64, rng=rng)
        assert measure_shapes_clip(clip) == (colour, direction), (colour, shape, direction)


def test_measure_survives_noise_and_blur_like_a_decoder_output():
    rng = np.random.default_rng(1)
    clip = render_shapes_clip("yellow", "square", "up", frames=16, size=64, rng=rng).astype(float)
    clip = 0.7 * clip + 0.3 * clip.mean() + rng.normal(0, 6, clip.shape)
    assert measure_shapes_clip(np.clip(clip, 0, 255).astype(np.uint8)) == ("yellow", "up")


def test_empty_clip_has_no_blob():
    assert measure_shapes_clip(np.zeros((8, 32, 32, 3), np.uint8)) == (None, None)
