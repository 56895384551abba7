"""mp4/gif writing and reading, grids and float -> uint8 conversion."""

import base64

import numpy as np
import pytest

from t2v_jax.data import bouncing_digits as bd
from t2v_jax.eval.metrics import psnr
from t2v_jax.io import video as video_io


def _smooth_video_thwc(num_frames=8, height=40, width=56):
    """Moving colour waves: natural-image-like content that H.264 at CRF 18 keeps above 30 dB."""
    time_t = np.linspace(0, 1, num_frames)[:, None, None, None]
    y_hw, x_hw = np.mgrid[:height, :width] / 40.0
    wave_thw1 = np.sin(6 * x_hw + 3 * y_hw + 4 * time_t[..., 0])[..., None]
    return (127 + 100 * wave_thw1 * np.array([1.0, 0.5, -0.7])).astype(np.uint8)


def test_gif_round_trip_is_exact(tmp_path):
    videos_nthwc, _ = bd.sample_videos(2, seed=0)
    path = tmp_path / "digit.gif"
    video_io.write_video(path, videos_nthwc[0], fps=8)
    np.testing.assert_array_equal(video_io.read_video(path), videos_nthwc[0])


def test_gif_keeps_repeated_frames(tmp_path):
    videos_nthwc, _ = bd.sample_videos(1, seed=1)
    held_thwc = np.repeat(videos_nthwc[0, :3], [1, 3, 2], axis=0)
    video_io.write_video(tmp_path / "held.gif", held_thwc, fps=10)
    np.testing.assert_array_equal(video_io.read_video(tmp_path / "held.gif"), held_thwc)


def test_gif_img_tag_embeds_the_upscaled_gif_it_writes(tmp_path):
    videos_nthwc, _ = bd.sample_videos(1, seed=2)
    path = tmp_path / "shown" / "digit.gif"
    tag = video_io.gif_img_tag(path, videos_nthwc[0], fps=8, scale=3)
    prefix, suffix = '<img src="data:image/gif;base64,', '">'
    assert tag.startswith(prefix) and tag.endswith(suffix)
    assert base64.b64decode(tag[len(prefix):-len(suffix)]) == path.read_bytes()
    np.testing.assert_array_equal(video_io.read_video(path), video_io.upscale(videos_nthwc[0], 3))


def test_mp4_round_trip_is_close_and_padded_to_macro_blocks(tmp_path):
    video_thwc = _smooth_video_thwc()
    video_io.write_video(tmp_path / "waves.mp4", video_thwc, fps=8)
    decoded_thwc = video_io.read_video(tmp_path / "waves.mp4")
    assert decoded_thwc.shape == (8, 48, 64, 3)
    assert decoded_thwc[:, :3].mean() < 5 and decoded_thwc[:, :, -3:].mean() < 5
    assert psnr(decoded_thwc[:, 4:44, 4:60], video_thwc).mean() > 30.0


def test_mp4_upscale_keeps_small_digits_sharp(tmp_path):
    videos_nthwc, _ = bd.sample_videos(1, seed=2)
    video_io.write_video(tmp_path / "digit.mp4", videos_nthwc[0], scale=2)
    decoded_thwc = video_io.read_video(tmp_path / "digit.mp4")
    assert decoded_thwc.shape == (16, 64, 64, 3)
    assert psnr(decoded_thwc, video_io.upscale(videos_nthwc[0], 2)).mean() > 35.0
    small_thwc = video_io.read_video(tmp_path / "digit.mp4", size=(32, 32))
    assert psnr(small_thwc, videos_nthwc[0]).mean() > 25.0


def test_bad_inputs_are_rejected(tmp_path):
    video_thwc = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="extension"):
        video_io.write_video(tmp_path / "clip.avi", video_thwc)
    with pytest.raises(ValueError, match="to_uint8"):
        video_io.write_video(tmp_path / "clip.mp4", video_thwc.astype(np.float32))
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(OSError):
        video_io.read_video(tmp_path / "broken.mp4")


def test_grid_places_videos_row_major_with_padding():
    videos_nthwc = np.stack([np.full((3, 4, 5, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid_thwc = video_io.video_grid(videos_nthwc, ncols=3, pad=2)
    assert grid_thwc.shape == (3, 2 * 4 + 2, 3 * 5 + 2 * 2, 3)
    for index in range(5):
        row, col = divmod(index, 3)
        tile = grid_thwc[:, row * 6 : row * 6 + 4, col * 7 : col * 7 + 5]
        assert np.all(tile == 10 * (index + 1))
    assert np.all(grid_thwc[:, 4:6] == 0) and np.all(grid_thwc[:, :, 5:7] == 0)
    assert np.all(grid_thwc[:, 6:, 14:] == 0)
    assert video_io.video_grid(videos_nthwc[:4], pad=0).shape == (3, 8, 10, 3)


def test_to_uint8_maps_the_model_range():
    video = np.array([-1.5, -1.0, -0.5, 0.0, 0.999, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(video_io.to_uint8(video), [0, 0, 64, 128, 255, 255, 255])
