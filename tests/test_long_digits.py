"""Long Bouncing Digits (segments of straight motion, one caption each) and their per-segment judge."""

import numpy as np
import pytest

from t2v_jax.data import bouncing_digits as bd
from t2v_jax.eval import judge as judge_lib
from t2v_jax.eval import long_video
from tiny import load_config

SEGMENT_FRAMES, CANVAS = 8, 16
NUM_JUDGED, JUDGED_SEGMENTS = 20, 12


@pytest.fixture(scope="module")
def judge():
    return judge_lib.Judge.fit(CANVAS)


@pytest.fixture(scope="module")
def judged_videos():
    """Test-split ground truth: handwriting the judge never saw."""
    return bd.sample_long_videos(NUM_JUDGED, "test", seed=0, num_segments=JUDGED_SEGMENTS,
                                 segment_frames=SEGMENT_FRAMES, canvas=CANVAS)


def _segments(video_thwc):
    return video_thwc.reshape(-1, SEGMENT_FRAMES, *video_thwc.shape[1:])


def _recoloured(video_thwc, colour):
    return (video_thwc.max(axis=-1, keepdims=True) * bd.COLOUR_RGB[colour]).astype(np.uint8)


def _example(index, split="test", seed=0, **geometry):
    geometry = dict(dict(num_segments=64, segment_frames=SEGMENT_FRAMES, canvas=CANVAS), **geometry)
    return bd.sample_long_example(bd.example_rng(seed, split, index), split, **geometry)


def test_long_videos_are_deterministic_split_separated_and_prefixes_of_longer_ones():
    videos_nthwc, captions = bd.sample_long_videos(6, "train", seed=3, num_segments=5)
    again_nthwc, again_captions = bd.sample_long_videos(6, "train", seed=3, num_segments=5)
    np.testing.assert_array_equal(videos_nthwc, again_nthwc)
    assert captions == again_captions
    assert videos_nthwc.shape == (6, 5 * SEGMENT_FRAMES, CANVAS, CANVAS, 3)
    assert not np.array_equal(videos_nthwc, bd.sample_long_videos(6, "train", seed=4, num_segments=5)[0])
    assert len({video_thwc.tobytes() for video_thwc in videos_nthwc}) == 6
    for index in range(6):
        longer = _example(index, "train", seed=3)
        np.testing.assert_array_equal(longer["video"][: 5 * SEGMENT_FRAMES], videos_nthwc[index])
        assert longer["captions"][:5] == captions[index]
    for split in bd.SPLITS:
        glyphs = {_example(index, split, num_segments=1)["glyph_index"] for index in range(40)}
        assert glyphs <= set(bd.glyph_indices(split).tolist())


@pytest.mark.parametrize("segment_frames, canvas", [(SEGMENT_FRAMES, CANVAS), (5, 32)])
def test_motion_is_one_step_per_frame_in_each_captions_direction_and_stays_on_canvas(segment_frames, canvas):
    """Over 64 segments: between every two frames, boundaries included, the centroid moves exactly one step
    in the direction of the later frame's segment, which its caption names; every frame holds the whole
    glyph; the direction changes at every boundary, sometimes by turning, sometimes by reversing."""
    num_turns = num_reversals = 0
    for index in range(16):
        example = _example(index, num_segments=64, segment_frames=segment_frames, canvas=canvas)
        video_thwc, directions = example["video"], example["directions"]
        assert video_thwc.shape == (64 * segment_frames, canvas, canvas, 3)
        assert example["captions"] == [bd.caption(example["digit"], example["colour"], d) for d in directions]
        assert example["global_caption"] == bd.image_caption(example["digit"], example["colour"])
        caption_directions = [judge_lib.parse_caption(text)[2] for text in example["captions"]]
        track_t2 = judge_lib.centroid_track(judge_lib.brightness(video_thwc[None]))[0]
        frame_directions = np.repeat(caption_directions, segment_frames)[1:]
        np.testing.assert_allclose(np.diff(track_t2, axis=0), bd.DIRECTION_XY[frame_directions], atol=1e-5)
        whole_glyph = bd.render_video(bd._all_glyphs()[0][example["glyph_index"]], example["colour"], "right",
                                      (0, 0), num_frames=1, canvas=canvas).astype(np.int64).sum()
        np.testing.assert_array_equal(video_thwc.astype(np.int64).sum(axis=(1, 2, 3)), whole_glyph)
        steps_s2 = bd.DIRECTION_XY[directions]
        assert np.all(np.any(steps_s2[1:] != steps_s2[:-1], axis=1))
        reversals = np.all(steps_s2[1:] == -steps_s2[:-1], axis=1)
        num_reversals += int(reversals.sum())
        num_turns += int((~reversals).sum())
    assert num_turns > 0 and num_reversals > 0


def test_scale_renders_the_same_long_video_larger():
    small_thwc = _example(7, num_segments=6)["video"]
    large_thwc = _example(7, num_segments=6, scale=2)["video"]
    np.testing.assert_array_equal(large_thwc, small_thwc.repeat(2, axis=1).repeat(2, axis=2))


def test_bad_long_geometry_names_the_argument():
    for bad, argument in [(dict(num_segments=0), "num_segments"), (dict(num_segments=2.0), "num_segments"),
                          (dict(segment_frames=0), "segment_frames"), (dict(segment_frames=9), "segment_frames"),
                          (dict(canvas=24), "canvas"), (dict(scale=0), "scale")]:
        arguments = dict(dict(num_segments=2, segment_frames=SEGMENT_FRAMES, canvas=CANVAS), **bad)
        with pytest.raises(ValueError, match=argument):
            bd.sample_long_videos(1, "test", **arguments)
    bd.sample_long_videos(1, "test", num_segments=1, segment_frames=CANVAS // 2, canvas=CANVAS)


def test_ground_truth_scores_high_on_every_segment_and_keeps_its_identity(judge, judged_videos):
    videos_nthwc, captions = judged_videos
    scores = long_video.segment_scores(judge, videos_nthwc, captions, SEGMENT_FRAMES)
    assert set(scores) == {"digit", "colour", "direction", "all"}
    for name, accuracy_s in scores.items():
        assert accuracy_s.shape == (JUDGED_SEGMENTS,)
        assert accuracy_s.min() >= 0.95, name
    assert long_video.identity_consistency(judge, videos_nthwc, SEGMENT_FRAMES) >= 0.99
    assert long_video.identity_consistency(judge, videos_nthwc, SEGMENT_FRAMES, captions) >= 0.95


def test_a_changed_subject_loses_identity_consistency(judge, judged_videos):
    """The second half from a video of another digit (recoloured to match), or the same video recoloured:
    half the segments differ from segment 1. Segments drawn from different videos: almost all do. A video
    judged against another video's captions is consistent with itself but not with them."""
    videos_nthwc, captions = judged_videos
    digits_n = np.array([judge_lib.parse_caption(captions_s[0])[0] for captions_s in captions])
    colours_n = np.array([judge_lib.parse_caption(captions_s[0])[1] for captions_s in captions])
    half = JUDGED_SEGMENTS // 2 * SEGMENT_FRAMES
    digit_swapped, colour_swapped = videos_nthwc[:8].copy(), videos_nthwc[:8].copy()
    for n in range(8):
        other = int(np.flatnonzero(digits_n != digits_n[n])[0])
        digit_swapped[n, half:] = _recoloured(videos_nthwc[other, half:], colours_n[n])
        colour_swapped[n, half:] = _recoloured(videos_nthwc[n, half:], (colours_n[n] + 1) % len(bd.COLOURS))
    for changed_nthwc in (digit_swapped, colour_swapped):
        consistency = long_video.identity_consistency(judge, changed_nthwc, SEGMENT_FRAMES)
        assert consistency == pytest.approx(0.5, abs=0.05)
    mixed_nthwc = np.stack([
        np.concatenate([_segments(videos_nthwc[(n + s) % NUM_JUDGED])[s] for s in range(JUDGED_SEGMENTS)])
        for n in range(8)])
    assert long_video.identity_consistency(judge, mixed_nthwc, SEGMENT_FRAMES) <= 0.3
    others_captions = captions[1:9]
    assert long_video.identity_consistency(judge, videos_nthwc[:8], SEGMENT_FRAMES) >= 0.99
    assert long_video.identity_consistency(judge, videos_nthwc[:8], SEGMENT_FRAMES, others_captions) <= 0.3


def test_blank_videos_score_zero_and_are_not_consistent(judge):
    _, captions = bd.sample_long_videos(3, "test", num_segments=4)
    blank_nthwc = np.zeros((3, 4 * SEGMENT_FRAMES, CANVAS, CANVAS, 3), np.uint8)
    for name, accuracy_s in long_video.segment_scores(judge, blank_nthwc, captions, SEGMENT_FRAMES).items():
        np.testing.assert_array_equal(accuracy_s, 0.0, err_msg=name)
    assert long_video.identity_consistency(judge, blank_nthwc, SEGMENT_FRAMES) == 0.0
    assert long_video.identity_consistency(judge, blank_nthwc, SEGMENT_FRAMES, captions) == 0.0
    assert np.isnan(long_video.boundary_jump(blank_nthwc, SEGMENT_FRAMES)["ratio"])


def test_boundary_jump_is_one_step_for_ground_truth_and_large_across_positions():
    videos_nthwc, _ = bd.sample_long_videos(12, "test", seed=2, num_segments=64)
    truth = long_video.boundary_jump(videos_nthwc, SEGMENT_FRAMES)
    assert truth == pytest.approx(dict(jump_px=1.0, step_px=1.0, ratio=1.0), abs=1e-5)
    spliced_nthwc = np.stack([
        np.concatenate([_segments(videos_nthwc[(n + s) % 12])[s] for s in range(64)]) for n in range(12)])
    spliced = long_video.boundary_jump(spliced_nthwc, SEGMENT_FRAMES)
    assert spliced["step_px"] == pytest.approx(1.0, abs=1e-5)
    assert spliced["ratio"] > 3.0


def test_long_video_scoring_checks_its_inputs(judge, judged_videos):
    videos_nthwc, captions = judged_videos
    with pytest.raises(ValueError, match="segment_frames"):
        long_video.segment_scores(judge, videos_nthwc[:1], captions[:1], 5)
    with pytest.raises(ValueError, match="captions_ns"):
        long_video.segment_scores(judge, videos_nthwc[:2], [captions[0], captions[1][:-1]], SEGMENT_FRAMES)
    with pytest.raises(ValueError, match="captions_ns"):
        long_video.identity_consistency(judge, videos_nthwc[:2], SEGMENT_FRAMES, captions[:1])
    with pytest.raises(ValueError, match="at least 2 segments"):
        long_video.boundary_jump(videos_nthwc[:, :SEGMENT_FRAMES], SEGMENT_FRAMES)


def test_generate_and_judge_long_scores_a_model_on_test_stories():
    """The rendered stories as the "model" score ~100% on every segment, as `judge_long` scores them; a model
    that draws nothing scores 0 and is not consistent; the videos reach the model in fixed-size batches with
    their captions, and come back in story order without the padding."""
    data = load_config("malt_digits").data
    truth, captions = bd.sample_long_videos(5, "test", seed=3, num_segments=3, segment_frames=data.num_frames,
                                            canvas=data.canvas)
    calls = []

    def render(captions_ns, seed):
        calls.append((len(captions_ns), seed))
        index = [captions.index(c) if c in captions else 0 for c in captions_ns]
        return truth[index]

    scores, videos_nthwc = long_video.generate_and_judge_long(render, data, 5, 3, seed=3, batch_size=4,
                                                              progress=False)
    assert calls == [(4, 3), (4, 7)]
    np.testing.assert_array_equal(videos_nthwc, truth)
    assert min(scores["segment_scores"]["all"]) >= 0.95 and scores["identity_consistency"] >= 0.99
    assert scores["boundary_jump"]["ratio"] == pytest.approx(1.0)
    assert scores == dict(long_video.judge_long(truth, captions, data.num_frames), num_videos=5, num_segments=3)
    blank, _ = long_video.generate_and_judge_long(lambda c, s: np.zeros((len(c),) + truth.shape[1:], np.uint8),
                                                  data, 5, 3, seed=3, batch_size=4, progress=False)
    assert max(blank["segment_scores"]["all"]) == 0 and blank["identity_consistency"] == 0
    one_segment = long_video.judge_long(truth[:, :data.num_frames], [c[:1] for c in captions], data.num_frames)
    assert one_segment["boundary_jump"] is None and len(one_segment["segment_scores"]["all"]) == 1


def test_validation_stories_come_from_the_training_glyphs():
    """split="train" judges the model on training-glyph stories (other captions than the test split's at
    the same seed): the rendered train stories score ~100% against them and the test stories do not."""
    data = load_config("malt_digits").data
    stories = {split: bd.sample_long_videos(6, split, seed=3, num_segments=2, segment_frames=data.num_frames,
                                            canvas=data.canvas) for split in ("train", "test")}
    assert stories["train"][1] != stories["test"][1]

    def judged(rendered_split, split):
        videos = stories[rendered_split][0]
        scores, _ = long_video.generate_and_judge_long(lambda captions_ns, seed: videos[:len(captions_ns)], data,
                                                       6, 2, seed=3, split=split, batch_size=6, progress=False)
        return np.mean(scores["segment_scores"]["all"])

    assert judged("train", "train") >= 0.95
    assert judged("test", "train") < 0.5


def test_a_story_becomes_one_structured_prompt_over_its_segments_latent_frames():
    """Global prompt the subject, one local prompt per segment over its latent frames; its chunk texts are
    the story's own captions again. A story that changes subject is refused."""
    captions_s = ["a red 3 moving left", "a red 3 moving up", "a red 3 moving right"]
    prompt = long_video.story_prompt(captions_s, 4)
    assert prompt.global_prompt == "a red 3"
    assert prompt.local == (("moving left", 0, 4), ("moving up", 4, 8), ("moving right", 8, 12))
    assert prompt.chunk_texts(12, 4, 4) == tuple(captions_s)
    with pytest.raises(ValueError, match="one subject"):
        long_video.story_prompt(["a red 3 moving left", "a blue 3 moving up"], 4)


def test_syncos_generate_long_samples_each_story_at_segments_times_the_native_length():
    """SynCoS gets one structured prompt per story and the story's length in latent frames, with the seed and
    the sampler settings it was handed."""
    calls = []

    class RecordingPipeline:
        latent_shape = (4, 2, 2, 8)

        def generate_multi_prompt(self, prompts, num_latent_frames, *, syncos, seed):
            calls.append((prompts, num_latent_frames, syncos, seed))
            return np.zeros((len(prompts), 2 * num_latent_frames, 16, 16, 3), np.uint8)

    _, captions = bd.sample_long_videos(2, "test", seed=5, num_segments=3)
    videos_nthwc = long_video.syncos_generate_long(RecordingPipeline(), captions, seed=9, syncos="settings")
    assert videos_nthwc.shape == (2, 24, 16, 16, 3)
    assert calls == [([long_video.story_prompt(captions_s, 4) for captions_s in captions], 12, "settings", 9)]
