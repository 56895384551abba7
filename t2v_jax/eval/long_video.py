"""Judging long Bouncing Digits videos segment by segment (MALT's any-length videos, SynCoS's multi-prompt ones).

A long video of S segments of F frames carries one caption per segment. The judge reads each segment as a
clip of its own, so per-segment accuracy shows where along the video a model drifts (MALT: segment 1 vs 32 vs
64) and whether each local prompt's direction was followed (SynCoS). Identity consistency asks whether the
subject stays the same digit in the same colour over the whole video; boundary jumps ask whether the segments
join up or the digit teleports where one segment (or chunk) hands over to the next.

A story's captions reach MALT as they are (`MALTPipeline.generate_long`, one caption per segment) and SynCoS as
one structured prompt (`story_prompt`, `syncos_generate_long`), so both systems are judged on the same stories.
"""

import numpy as np
from tqdm.auto import tqdm

from t2v_jax.data.bouncing_digits import sample_long_videos
from t2v_jax.eval.judge import NOT_FOUND, Judge, brightness, centroid_track, parse_caption
from t2v_jax.pipelines.syncos import StructuredPrompt

ATTRIBUTES = ("digit", "colour", "direction")


def _num_segments(videos_nthwc_uint8, segment_frames):
    num_frames = videos_nthwc_uint8.shape[1]
    if segment_frames < 1 or num_frames % segment_frames:
        raise ValueError(f"segment_frames={segment_frames} must divide the videos' {num_frames} frames")
    return num_frames // segment_frames


def _caption_targets(captions_ns, num_videos, num_segments):
    """(N, S, 3) int digit, colour and direction of each segment's caption."""
    lengths = sorted({len(captions_s) for captions_s in captions_ns})
    if len(captions_ns) != num_videos or lengths != [num_segments]:
        raise ValueError(f"captions_ns must be {num_videos} lists of {num_segments} captions (one per segment), "
                         f"got {len(captions_ns)} lists of lengths {lengths}")
    return np.array([[parse_caption(text) for text in captions_s] for captions_s in captions_ns], np.int64)


def _segment_predictions(judge, videos_nthwc_uint8, segment_frames):
    """The judge's digit, colour and direction of every segment read as a clip of its own: dict of (N, S)
    int arrays, NOT_FOUND where the segment shows no digit (the judge's own rule)."""
    videos_nthwc_uint8 = np.asarray(videos_nthwc_uint8)
    num_videos = videos_nthwc_uint8.shape[0]
    num_segments = _num_segments(videos_nthwc_uint8, segment_frames)
    clips_mfhwc = videos_nthwc_uint8.reshape(num_videos * num_segments, segment_frames,
                                             *videos_nthwc_uint8.shape[2:])
    predicted = judge.predict(clips_mfhwc)
    return {name: predicted[name].reshape(num_videos, num_segments) for name in ATTRIBUTES}


def segment_scores(judge, videos_nthwc_uint8, captions_ns, segment_frames):
    """Accuracy of digit, colour, direction and all three at each segment against its own caption: dict of
    (S,) float arrays, averaged over the N videos. A segment with no digit is wrong on every attribute."""
    predicted = _segment_predictions(judge, videos_nthwc_uint8, segment_frames)
    targets_ns3 = _caption_targets(captions_ns, *predicted["digit"].shape)
    correct = {name: predicted[name] == targets_ns3[..., i] for i, name in enumerate(ATTRIBUTES)}
    correct["all"] = correct["digit"] & correct["colour"] & correct["direction"]
    return {name: correct_ns.mean(axis=0) for name, correct_ns in correct.items()}


def identity_consistency(judge, videos_nthwc_uint8, segment_frames, captions_ns=None):
    """Fraction of segments (over all videos) whose judged digit AND colour equal those judged in segment 1,
    the issues' measure of a subject that stays itself however long the video; with `captions_ns`, equal to
    those each segment's caption names instead, which also catches a video that is consistently wrong.

    A segment with no digit is never consistent, even with a segment 1 that has none either: the judge marks
    both NOT_FOUND, and equal markers of absence are not one subject.
    """
    predicted = _segment_predictions(judge, videos_nthwc_uint8, segment_frames)
    if captions_ns is None:
        reference_digit_ns, reference_colour_ns = predicted["digit"][:, :1], predicted["colour"][:, :1]
    else:
        targets_ns3 = _caption_targets(captions_ns, *predicted["digit"].shape)
        reference_digit_ns, reference_colour_ns = targets_ns3[..., 0], targets_ns3[..., 1]
    consistent_ns = ((predicted["digit"] != NOT_FOUND) & (predicted["digit"] == reference_digit_ns)
                     & (predicted["colour"] == reference_colour_ns))
    return float(consistent_ns.mean())


def boundary_jump(videos_nthwc_uint8, segment_frames):
    """How far the digit's centroid moves from the last frame of a segment to the first of the next
    (`jump_px`), against how far it moves between frames inside a segment (`step_px`), both means over all
    videos, and `ratio` = jump_px / step_px (NaN when nothing moves inside segments).

    SynCoS's smoothness measure: a ratio near 1 means segments join like consecutive frames (the ground truth
    is exactly 1), a large one that the digit teleports at the hand-over. The centroid is the judge's
    `centroid_track` (a frame with no bright pixel sits at the canvas centre).
    """
    videos_nthwc_uint8 = np.asarray(videos_nthwc_uint8)
    num_segments = _num_segments(videos_nthwc_uint8, segment_frames)
    if num_segments < 2 or segment_frames < 2:
        raise ValueError(f"boundary_jump needs at least 2 segments of at least 2 frames, got {num_segments} of "
                         f"segment_frames={segment_frames}")
    track_nt2 = centroid_track(brightness(videos_nthwc_uint8))
    moves_nm = np.linalg.norm(np.diff(track_nt2, axis=1), axis=-1)  # move m goes from frame m to frame m + 1
    crosses_boundary_m = (np.arange(1, track_nt2.shape[1]) % segment_frames) == 0
    jump_px = float(moves_nm[:, crosses_boundary_m].mean())
    step_px = float(moves_nm[:, ~crosses_boundary_m].mean())
    return dict(jump_px=jump_px, step_px=step_px, ratio=jump_px / step_px if step_px > 0 else float("nan"))


def judge_long(videos_nthwc_uint8, captions_ns, segment_frames: int) -> dict:
    """Every long-video score of N videos against their captions, with a judge fitted to the videos' size:
    dict(segment_scores (name -> S floats), identity_consistency, identity_vs_captions, boundary_jump (None
    for one segment)). The rendered stories judged so are the ceiling a model's videos can reach."""
    videos_nthwc_uint8 = np.asarray(videos_nthwc_uint8)
    judge = Judge.fit(canvas=videos_nthwc_uint8.shape[2])
    scores = segment_scores(judge, videos_nthwc_uint8, captions_ns, segment_frames)
    return dict(segment_scores={name: values.tolist() for name, values in scores.items()},
                identity_consistency=identity_consistency(judge, videos_nthwc_uint8, segment_frames),
                identity_vs_captions=identity_consistency(judge, videos_nthwc_uint8, segment_frames, captions_ns),
                boundary_jump=(boundary_jump(videos_nthwc_uint8, segment_frames)
                               if _num_segments(videos_nthwc_uint8, segment_frames) > 1 else None))


def generate_and_judge_long(generate_long, data_cfg, num_videos: int, num_segments: int, *, seed: int = 0,
                            split: str = "test", batch_size: int = 32,
                            progress: bool = True) -> tuple[dict, np.ndarray]:
    """Per-segment scores of a long-video model on story prompts (one caption per segment) of the `split`'s
    glyphs (test: unseen; train: a validation set when `seed` differs from the training data's), and the
    videos it made.

    `generate_long(captions_ns, seed) -> uint8 videos (N, S * F, H, W, 3)` is the model under test (e.g.
    `MALTPipeline.generate_long` with its state dropped, or `syncos_generate_long`); videos go in fixed-size
    batches (one compile). The stories are `sample_long_videos(num_videos, split, seed=seed, ...)`, whose
    rendered videos are the ground truth. Returns (`judge_long`'s dict plus num_videos and num_segments,
    uint8 videos (num_videos, S * F, H, W, 3))."""
    _, captions_ns = sample_long_videos(num_videos, split, seed=seed, num_segments=num_segments,
                                        segment_frames=data_cfg.num_frames, canvas=data_cfg.canvas)
    padded = list(captions_ns) + [captions_ns[0]] * (-num_videos % batch_size)
    videos = []
    for start in tqdm(range(0, len(padded), batch_size), desc="generate", disable=not progress):
        videos.append(np.asarray(generate_long(padded[start:start + batch_size], seed + start)))
    videos_nthwc = np.concatenate(videos)[:num_videos]
    scores = judge_long(videos_nthwc, captions_ns, data_cfg.num_frames)
    return dict(scores, num_videos=num_videos, num_segments=num_segments), videos_nthwc


def story_prompt(captions_s, segment_latent_frames: int) -> StructuredPrompt:
    """'a red 3 moving left', 'a red 3 moving up', ... -> global 'a red 3', local 'moving left' over segment 0's
    latent frames, and so on; the chunk texts then join them back into the training captions."""
    subjects = {caption.partition(" moving ")[0] for caption in captions_s}
    if len(subjects) != 1:
        raise ValueError(f"a story must keep one subject; its captions name {sorted(subjects)}")
    return StructuredPrompt.from_segments(
        subjects.pop(), ["moving " + caption.partition(" moving ")[2] for caption in captions_s], segment_latent_frames)


def syncos_generate_long(pipeline, captions_ns, *, seed: int = 0, syncos=None) -> np.ndarray:
    """SynCoS's counterpart of `MALTPipeline.generate_long`: uint8 videos (N, S * F, H, W, 3) of N stories of
    S segment captions, each segment the base model's native length (`pipeline.latent_shape[0]` latent
    frames), sampled by `pipeline.generate_multi_prompt` with `syncos` (None: `pipeline.syncos_settings()`)."""
    segment_latent_frames = pipeline.latent_shape[0]
    prompts = [story_prompt(captions_s, segment_latent_frames) for captions_s in captions_ns]
    return pipeline.generate_multi_prompt(prompts, len(captions_ns[0]) * segment_latent_frames, syncos=syncos,
                                          seed=seed)
