"""The Bouncing Digits judge and the PSNR/SSIM metrics."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from t2v_jax.data import bouncing_digits as bd
from t2v_jax.eval import judge as judge_lib
from t2v_jax.eval.evaluate import format_scores
from t2v_jax.eval.metrics import psnr, ssim

NUM_TEST_VIDEOS = 300


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A cold fit (empty disk cache, cleared process cache), as on a fresh CI machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        judge_lib._fitted_params.cache_clear()
        yield judge_lib.Judge.fit(canvas=32)
    judge_lib._fitted_params.cache_clear()


@pytest.fixture(scope="module")
def test_videos():
    return bd.sample_videos(NUM_TEST_VIDEOS, "test", seed=0)


def _same_params(params_a, params_b):
    return all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params_a, params_b)))


def test_parse_caption_inverts_caption():
    for digit, colour, direction in itertools.product(range(10), bd.COLOURS, bd.DIRECTIONS):
        parsed = judge_lib.parse_caption(bd.caption(digit, colour, direction))
        assert parsed == (digit, bd.COLOURS.index(colour), bd.DIRECTIONS.index(direction))
    assert judge_lib.parse_caption("A Red 3 moving LEFT.") == (3, 0, 0)
    for bad in ("a red 3", "a purple 3 moving left", "a red 3 moving sideways", "a red 12 moving up"):
        with pytest.raises(ValueError):
            judge_lib.parse_caption(bad)


def test_ground_truth_test_videos_score_high(judge, test_videos):
    """Unseen test-split handwriting, read by a network that only saw training glyphs."""
    videos_nthwc, captions = test_videos
    scores = judge.score(videos_nthwc, captions)
    assert scores["num_videos"] == NUM_TEST_VIDEOS
    assert scores["colour"] == 1.0 and scores["direction"] == 1.0
    assert scores["digit"] >= 0.98 and scores["all"] >= 0.98
    assert scores["identity_consistency"] >= 0.99


def test_ground_truth_train_videos_score_perfectly(judge):
    videos_nthwc, captions = bd.sample_videos(100, "train", seed=1)
    scores = judge.score(videos_nthwc, captions)
    assert scores["all"] == 1.0 and scores["identity_consistency"] == 1.0


def test_digit_accuracy_by_class_follows_the_prompted_digit(judge):
    """Prompts that say 4 over videos of 3s: class 4 keeps only its true 4s, no prompt asks for 3,
    and every other class stays perfect."""
    videos_nthwc, captions = bd.sample_videos(100, "train", seed=1)
    digits_n = np.array([judge_lib.parse_caption(c)[0] for c in captions])
    relabelled = [c.replace(" 3 ", " 4 ") for c in captions]
    by_class = judge.score(videos_nthwc, relabelled)["digit_by_class"]
    num_threes, num_fours = (digits_n == 3).sum(), (digits_n == 4).sum()
    assert num_threes > 0 and num_fours > 0
    assert by_class[3] is None
    assert by_class[4] == pytest.approx(num_fours / (num_fours + num_threes))
    assert [by_class[d] for d in range(10) if d not in (3, 4)] == [1.0] * 8
    by_class_line = format_scores(judge.score(videos_nthwc, relabelled)).splitlines()[1]
    assert by_class_line.split(": ", 1)[1].split() == [
        f"{d}:{'-' if d == 3 else format(by_class[d], '.0%')}" for d in range(10)]


def test_shuffled_prompts_score_near_chance(judge, test_videos):
    videos_nthwc, captions = test_videos
    order = np.random.default_rng(0).permutation(len(captions))
    scores = judge.score(videos_nthwc, [captions[i] for i in order])
    assert scores["digit"] < 0.2 and scores["colour"] < 0.25 and scores["direction"] < 0.4
    assert scores["all"] < 0.05


def test_each_attribute_is_read_from_the_pixels(judge):
    videos_nthwc, captions = bd.sample_videos(60, "train", seed=2)
    targets_n3 = np.array([judge_lib.parse_caption(c) for c in captions])

    reversed_scores = judge.score(videos_nthwc[:, ::-1], captions)
    assert reversed_scores["direction"] == 0.0 and reversed_scores["digit"] == 1.0

    rotated = judge.predict(videos_nthwc[..., [1, 2, 0]])
    rotated_rgb_n3 = bd.COLOUR_RGB[targets_n3[:, 1]][:, [1, 2, 0]]
    expected_colour_n = [int(np.flatnonzero((bd.COLOUR_RGB == rgb).all(axis=1))[0]) for rgb in rotated_rgb_n3]
    np.testing.assert_array_equal(rotated["colour"], expected_colour_n)

    transposed = judge.predict(videos_nthwc.transpose(0, 1, 3, 2, 4))
    swap = np.array([bd.DIRECTIONS.index(d) for d in ("up", "down", "left", "right")])
    np.testing.assert_array_equal(transposed["direction"], swap[targets_n3[:, 2]])


def test_noisy_videos_still_score_high(judge):
    videos_nthwc, captions = bd.sample_videos(50, "train", seed=3)
    rng = np.random.default_rng(0)
    noisy = np.clip(videos_nthwc + rng.normal(0, 8, videos_nthwc.shape), 0, 255).astype(np.uint8)
    assert judge.score(noisy, captions)["all"] >= 0.9


def test_blank_videos_score_zero_on_every_attribute(judge):
    """No digit in any frame: nothing is right, and no frame is consistent (black frames used to read as
    one steady digit, scoring identity 1.0). Faint noise below FOUND_BRIGHTNESS is no digit either."""
    _, captions = bd.sample_videos(20, "train", seed=3)
    black = np.zeros((20, 16, 32, 32, 3), np.uint8)
    faint = np.random.default_rng(1).integers(0, 40, black.shape).astype(np.uint8)
    assert faint.max() < judge_lib.FOUND_BRIGHTNESS * 255
    for blank in (black, faint):
        scores = judge.score(blank, captions)
        assert {key: scores[key] for key in ("digit", "colour", "direction", "all", "identity_consistency")} == dict(
            digit=0.0, colour=0.0, direction=0.0, all=0.0, identity_consistency=0.0)
        predicted = judge.predict(blank)
        for key in ("digit", "colour", "direction", "frame_digits"):
            np.testing.assert_array_equal(predicted[key], judge_lib.NOT_FOUND)


def test_blanked_frames_lower_identity_by_exactly_their_fraction(judge):
    """Ground-truth videos (identity 1.0) with 1 to 14 of their 16 frames blacked out: identity drops by
    exactly the blanked fraction of frames, and the frames left still give digit, colour and direction."""
    videos_nthwc, captions = bd.sample_videos(40, "train", seed=4)
    clean_scores = judge.score(videos_nthwc, captions)
    assert clean_scores["all"] == 1.0 and clean_scores["identity_consistency"] == 1.0
    single = np.zeros_like(videos_nthwc[:1])
    single[0, 5] = videos_nthwc[0, 5]  # one frame left: the digit and colour are still there, a direction is not
    rng = np.random.default_rng(2)
    blanked_nt = np.zeros(videos_nthwc.shape[:2], bool)
    for n in range(len(videos_nthwc)):
        blanked_nt[n, rng.choice(16, 1 + n % 14, replace=False)] = True
    videos_nthwc[blanked_nt] = 0
    scores = judge.score(videos_nthwc, captions)
    assert scores["all"] == 1.0
    assert scores["identity_consistency"] == pytest.approx(1.0 - blanked_nt.mean(), abs=1e-12)
    predicted = judge.predict(videos_nthwc)
    np.testing.assert_array_equal(predicted["frame_found"], ~blanked_nt)
    np.testing.assert_array_equal(predicted["frame_digits"][blanked_nt], judge_lib.NOT_FOUND)
    one_frame = judge.predict(single)
    assert (one_frame["digit"][0], one_frame["colour"][0]) == judge_lib.parse_caption(captions[0])[:2]
    assert one_frame["direction"][0] == judge_lib.NOT_FOUND


def test_score_checks_its_inputs(judge, test_videos):
    videos_nthwc, captions = test_videos
    with pytest.raises(ValueError, match="prompts"):
        judge.score(videos_nthwc[:3], captions[:2])
    with pytest.raises(ValueError, match="uint8"):
        judge.score(videos_nthwc[:2].astype(np.float32), captions[:2])


def test_fit_is_cached_in_process_and_on_disk(judge, monkeypatch):
    assert judge_lib.Judge.fit(canvas=32).params is judge.params
    judge_lib._fitted_params.cache_clear()

    def no_training(*args, **kwargs):
        raise AssertionError("the disk cache should have been used")

    monkeypatch.setattr(judge_lib, "train_digit_net", no_training)
    reloaded = judge_lib.Judge.fit(canvas=32)
    assert reloaded.params is not judge.params and _same_params(reloaded.params, judge.params)


def test_corrupt_cache_retrains_to_the_same_params(tmp_path, monkeypatch):
    """A short recipe keeps this cheap: corrupt or truncated files are retrained, deterministically per seed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    recipe = dataclasses.replace(judge_lib.RECIPE, steps=20)
    judge_lib._fitted_params.cache_clear()
    first = judge_lib.Judge.fit(canvas=32, recipe=recipe).params
    (cache_file,) = (tmp_path / "t2v_jax").glob("judge-*.msgpack")
    valid_bytes = cache_file.read_bytes()
    for corrupt_bytes in (b"not msgpack", valid_bytes[: len(valid_bytes) // 2], b"\x01"):
        cache_file.write_bytes(corrupt_bytes)
        judge_lib._fitted_params.cache_clear()
        again = judge_lib.Judge.fit(canvas=32, recipe=recipe).params
        assert _same_params(again, first) and cache_file.read_bytes() == valid_bytes
    other_seed = judge_lib.Judge.fit(canvas=32, seed=1, recipe=recipe).params
    assert not _same_params(other_seed, first)
    assert len(list((tmp_path / "t2v_jax").glob("judge-*"))) == 2
    judge_lib._fitted_params.cache_clear()


def test_psnr_known_values():
    rng = np.random.default_rng(0)
    clean = rng.integers(20, 236, (4, 16, 16, 3)).astype(np.float64)
    assert np.all(np.isinf(psnr(clean, clean)))
    signs = rng.choice([-1.0, 1.0], clean.shape)
    np.testing.assert_allclose(psnr(clean, clean + 5.0 * signs), 10 * np.log10(255**2 / 25.0))
    np.testing.assert_allclose(psnr(clean / 255, (clean + 5.0 * signs) / 255, data_range=1.0), 34.151, atol=1e-3)


def _skimage_ssim(x_nhwc, y_nhwc, data_range):
    """scikit-image's SSIM with the definition of Wang et al. (2004) that ours implements: an 11x11
    Gaussian window of sigma 1.5 (truncate 3.5, set by gaussian_weights=True), population covariance,
    K1 = 0.01, K2 = 0.03 (its defaults), per channel then averaged, borders cropped."""
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    return np.array([structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=data_range, channel_axis=-1)
                     for x, y in zip(np.reshape(x_nhwc, (-1,) + np.shape(x_nhwc)[-3:]),
                                     np.reshape(y_nhwc, (-1,) + np.shape(y_nhwc)[-3:]))])


def _structured_pairs():
    """Image pairs with structure at the window's scale: ramps, a checkerboard, blur, a shift, a
    contrast change and a Bouncing Digits frame against the next frame."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:30, 0:26].astype(np.float64)
    ramp = np.stack([8 * xx, 8 * yy, 4 * (xx + yy)], axis=-1)
    checker = np.repeat(((yy // 3 + xx // 3) % 2 * 200 + 20)[..., None], 3, axis=-1)
    noise = rng.integers(0, 256, (30, 26, 3)).astype(np.float64)
    blurred = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) + np.roll(noise, (1, 1), (0, 1))) / 4
    video_thwc = bd.sample_videos(1, "train", seed=5)[0][0].astype(np.float64)
    pairs = [(ramp, 0.5 * ramp + 60), (checker, np.roll(checker, 1, axis=1)), (noise, blurred),
             (checker, 0.8 * checker + 0.2 * noise), (video_thwc[0], video_thwc[1]), (video_thwc[3], video_thwc[3])]
    return [(np.clip(x, 0, 255)[None], np.clip(y, 0, 255)[None]) for x, y in pairs]


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (2, 3, 24, 20, 3)).astype(np.uint8)  # (N, T, H, W, C): one value per frame
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    ours = ssim(clean, noisy)
    assert ours.shape == (2, 3)
    np.testing.assert_allclose(ours.reshape(-1), _skimage_ssim(clean, noisy, 255), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ssim(clean / 255, noisy / 255, data_range=1.0).reshape(-1),
                               _skimage_ssim(clean / 255, noisy / 255, 1.0), rtol=1e-9, atol=1e-12)
    structured = [(ssim(x, y)[0], _skimage_ssim(x, y, 255)[0]) for x, y in _structured_pairs()]
    np.testing.assert_allclose(*zip(*structured), rtol=1e-9, atol=1e-12)
    # The pairs span the range, so the comparison is not only of values near 1.
    assert min(ours for ours, _ in structured) < 0.5 and max(ours for ours, _ in structured) == 1.0


def test_ssim_closed_forms():
    """Values that follow from the formula alone: 1 for equal images; on flat images only the
    luminance term is left; an inverted random image is anti-correlated."""
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (2, 24, 24, 3)).astype(np.uint8)
    np.testing.assert_allclose(ssim(clean, clean), 1.0)
    flat, brighter = np.full((1, 16, 16, 3), 100.0), np.full((1, 16, 16, 3), 140.0)
    c1 = (0.01 * 255) ** 2
    np.testing.assert_allclose(ssim(flat, brighter), (2 * 100 * 140 + c1) / (100**2 + 140**2 + c1))
    assert ssim(clean, 255 - clean)[0] < 0
    with pytest.raises(ValueError, match="larger than 10 px"):
        ssim(clean[:, :10], clean[:, :10])
