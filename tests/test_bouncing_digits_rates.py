"""Bouncing Digits at `frame_rate` times the frame rate and `scale` times the canvas: the ground truth of each
stage of a cascade (base -> temporal interpolation -> super-resolution) drawn from the same clip."""

import functools

import numpy as np
import pytest
from sklearn.datasets import load_digits

from t2v_jax.data import bouncing_digits as bd

NUM_FRAMES, CANVAS, NUM_VIDEOS, SEED = 8, 16, 12, 5
SPEC_CHANNELS = dict(red=(1, 0, 0), green=(0, 1, 0), blue=(0, 0, 1), yellow=(1, 1, 0), cyan=(0, 1, 1),
                     magenta=(1, 0, 1), white=(1, 1, 1))
SPEC_STEP_XY = dict(left=(-1, 0), right=(1, 0), up=(0, -1), down=(0, 1))  # image y grows downwards


@functools.lru_cache(maxsize=1)
def _sklearn_images():
    return load_digits().images


def _videos(frame_rate, scale):
    return bd.sample_videos(NUM_VIDEOS, "train", seed=SEED, num_frames=NUM_FRAMES, canvas=CANVAS,
                            frame_rate=frame_rate, scale=scale)


def _supersampled_spec(glyph_index, colour, direction, start_xy, frame_rate, scale):
    """The spec by brute force: output frame k shows base time k / frame_rate, 1 base px = `scale` px. Draw each
    frame nearest-neighbour on a grid `frame_rate` times finer than the output, where every corner is a whole
    fine pixel, and average each frame_rate x frame_rate block; on-channels rint(255 * mean intensity)."""
    glyph_88 = _sklearn_images()[glyph_index] / 16.0
    fine = frame_rate * scale  # fine pixels per base pixel; a base step of 1/frame_rate px is `scale` of them
    cell = CANVAS // 16 * fine
    (dx, dy), channels = SPEC_STEP_XY[direction], np.array(SPEC_CHANNELS[colour], bool)
    num_out = (NUM_FRAMES - 1) * frame_rate + 1
    fine_thw = np.zeros((num_out, CANVAS * fine, CANVAS * fine))
    for t in range(num_out):
        left, top = start_xy[0] * fine + t * dx * scale, start_xy[1] * fine + t * dy * scale
        for row in range(8):
            for col in range(8):
                fine_thw[t, top + row * cell:top + (row + 1) * cell, left + col * cell:left + (col + 1) * cell] = (
                    glyph_88[row, col])
    side = CANVAS * scale
    mean_thw = fine_thw.reshape(num_out, side, frame_rate, side, frame_rate).mean(axis=(2, 4))
    video_thwc = np.zeros((num_out, side, side, 3), np.uint8)
    video_thwc[..., channels] = np.rint(mean_thw * 255)[..., None]
    return video_thwc


@pytest.mark.parametrize("frame_rate, scale", [(1, 1), (4, 1), (2, 1), (1, 2), (4, 2)])
def test_videos_at_every_rate_and_size_are_exactly_the_supersampled_spec(frame_rate, scale):
    """(1, 1) goes through the default arguments: the existing render, unchanged."""
    rates = {} if (frame_rate, scale) == (1, 1) else dict(frame_rate=frame_rate, scale=scale)
    videos_nthwc, captions = bd.sample_videos(NUM_VIDEOS, "train", seed=SEED, num_frames=NUM_FRAMES, canvas=CANVAS,
                                              **rates)
    assert videos_nthwc.shape == (NUM_VIDEOS, (NUM_FRAMES - 1) * frame_rate + 1, CANVAS * scale, CANVAS * scale, 3)
    for index in range(NUM_VIDEOS):
        attributes = bd.sample_attributes(bd.example_rng(SEED, "train", index), "train", num_frames=NUM_FRAMES,
                                          canvas=CANVAS)
        colour, direction = bd.COLOURS[attributes["colour"]], bd.DIRECTIONS[attributes["direction"]]
        want_thwc = _supersampled_spec(attributes["glyph_index"], colour, direction, attributes["start_xy"],
                                       frame_rate, scale)
        np.testing.assert_array_equal(videos_nthwc[index], want_thwc)
        assert captions[index] == f"a {colour} {attributes['digit']} moving {direction}"


@pytest.mark.parametrize("scale", [1, 2])
def test_every_frame_rate_th_frame_is_the_base_clip(scale):
    base_nthwc, base_captions = _videos(1, scale)
    for frame_rate in (2, 3, 4):
        fast_nthwc, captions = _videos(frame_rate, scale)
        assert fast_nthwc.shape[1] == (NUM_FRAMES - 1) * frame_rate + 1 and captions == base_captions
        np.testing.assert_array_equal(fast_nthwc[:, ::frame_rate], base_nthwc)


def test_the_doubled_clip_box_downsampled_is_the_base_clip():
    """Exact at whole-pixel motion; with in-between frames the area coverage still adds up, to within the
    rounding to uint8 of both sides."""
    for frame_rate in (1, 4):
        base_nthwc, base_captions = _videos(frame_rate, 1)
        big_nthwc, captions = _videos(frame_rate, 2)
        assert captions == base_captions
        down_nthwc = big_nthwc.reshape(*base_nthwc.shape[:2], CANVAS, 2, CANVAS, 2, 3).mean(axis=(3, 5))
        np.testing.assert_allclose(down_nthwc, base_nthwc, rtol=0, atol=0 if frame_rate == 1 else 1)


@pytest.mark.parametrize("frame_rate, scale", [(4, 1), (4, 2), (3, 1)])
def test_in_between_frames_glide_between_the_base_frames(frame_rate, scale):
    """The glyph's centre of mass moves scale / frame_rate px every frame, in the caption's direction, and the
    amount of ink stays that of the glyph; every frame's ink lies inside the boxes of the base frames around it."""
    videos_nthwc, captions = _videos(frame_rate, scale)
    step_px = scale / frame_rate
    for video_thwc, text in zip(videos_nthwc, captions):
        ink_thw = video_thwc.max(axis=-1).astype(np.float64)
        total_t = ink_thw.sum(axis=(1, 2))
        np.testing.assert_allclose(total_t, total_t[0], rtol=2e-3)
        centre_x_t = (ink_thw.sum(axis=1) * np.arange(ink_thw.shape[2])).sum(axis=1) / total_t
        centre_y_t = (ink_thw.sum(axis=2) * np.arange(ink_thw.shape[1])).sum(axis=1) / total_t
        velocity_xy = np.array(SPEC_STEP_XY[text.split()[-1]]) * step_px
        for centre_t, velocity in zip((centre_x_t, centre_y_t), velocity_xy):  # uint8 rounding: <= 0.005 px
            np.testing.assert_allclose(np.diff(centre_t), velocity, atol=0.01)
        for t in range(len(video_thwc)):
            before, after = t // frame_rate * frame_rate, -(-t // frame_rate) * frame_rate
            rows_y, cols_x = np.nonzero(ink_thw[t])
            box_rows, box_cols = np.nonzero(ink_thw[before] + ink_thw[after])
            assert box_rows.min() <= rows_y.min() and rows_y.max() <= box_rows.max()
            assert box_cols.min() <= cols_x.min() and cols_x.max() <= box_cols.max()


def test_rate_and_scale_must_be_positive_integers():
    glyph_88 = np.ones((8, 8))
    for bad in (dict(frame_rate=0), dict(scale=0), dict(frame_rate=1.5), dict(scale=2.0)):
        with pytest.raises(ValueError, match="positive integer"):
            bd.render_video(glyph_88, "red", "left", (8, 0), num_frames=NUM_FRAMES, canvas=CANVAS, **bad)
