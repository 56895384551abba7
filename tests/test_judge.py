"""The Bouncing Digits judge and the PSNR/SSIM metrics."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from t2v_jax.data import bouncing_digits as bd
from t2v_jax.eval import judge as judge_lib
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


def test_noise_and_dark_videos_do_not_break_the_judge(judge):
    videos_nthwc, captions = bd.sample_videos(50, "train", seed=3)
    rng = np.random.default_rng(0)
    noisy = np.clip(videos_nthwc + rng.normal(0, 8, videos_nthwc.shape), 0, 255).astype(np.uint8)
    assert judge.score(noisy, captions)["all"] >= 0.9
    dark = judge.score(np.zeros_like(videos_nthwc), captions)
    assert 0.0 <= dark["all"] <= 0.2 and dark["identity_consistency"] == 1.0


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


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (2, 24, 24, 3)).astype(np.uint8)
    np.testing.assert_allclose(ssim(clean, clean), 1.0)
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(ssim(clean, noisy), [0.9637352514188295, 0.9676694457050216], rtol=1e-10)

    flat, brighter = np.full((1, 16, 16, 3), 100.0), np.full((1, 16, 16, 3), 140.0)
    c1 = (0.01 * 255) ** 2
    np.testing.assert_allclose(ssim(flat, brighter), (2 * 100 * 140 + c1) / (100**2 + 140**2 + c1))
    assert ssim(clean, 255 - clean)[0] < 0
