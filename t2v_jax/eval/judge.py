"""Prompt accuracy on Bouncing Digits: does a video show the digit, colour and motion its prompt asks for?

The judge reads each frame the way the renderer writes it: brightness is the max over RGB (every palette
colour is a channel mask times intensity); the digit is tracked by its intensity-weighted centroid, a
half-canvas window around it is block-averaged to 8x8 and classified by an SVM trained on the TRAINING glyphs
rendered and cropped through the same pipeline (plus 1 px crop jitter), and the frames vote.
Colour is the nearest palette entry to the channel ratios of the bright pixels; direction is the dominant axis
and sign of a straight-line fit to the centroid track.
"""

import dataclasses
import re

import numpy as np
from sklearn.svm import SVC

from t2v_jax.data import bouncing_digits

BRIGHT_FRACTION = 0.5  # pixels at least this fraction of the video's peak brightness decide the colour
TRACK_FRACTION = 0.25  # pixels below this fraction of the frame's peak are ignored when tracking
CROP_JITTER_XY = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # crop offsets the classifier is trained on
CAPTION_PATTERN = re.compile(r"^\s*an?\s+([a-z]+)\s+(\d)\s+moving\s+([a-z]+)\s*\.?\s*$", re.IGNORECASE)


def parse_caption(text):
    """'a red 3 moving left' -> (3, COLOURS.index('red'), DIRECTIONS.index('left')); ValueError otherwise."""
    match = CAPTION_PATTERN.match(text)
    if not match:
        raise ValueError(f"not a Bouncing Digits caption ('a <colour> <digit> moving <direction>'): {text!r}")
    colour, digit, direction = match.group(1).lower(), int(match.group(2)), match.group(3).lower()
    if colour not in bouncing_digits.COLOURS or direction not in bouncing_digits.DIRECTIONS:
        raise ValueError(
            f"caption {text!r} names an unknown colour or direction; colours are {bouncing_digits.COLOURS}, "
            f"directions {bouncing_digits.DIRECTIONS}"
        )
    return digit, bouncing_digits.COLOURS.index(colour), bouncing_digits.DIRECTIONS.index(direction)


def _brightness(videos_nthwc_uint8):
    return videos_nthwc_uint8.max(axis=-1).astype(np.float32) / 255.0


def centroid_track(brightness_nthw):
    """(N, T, 2) intensity-weighted (x, y) centre of each frame's bright pixels; the canvas centre if dark."""
    height, width = brightness_nthw.shape[-2:]
    peak_nt = brightness_nthw.max(axis=(-2, -1), keepdims=True)
    weights_nthw = np.where(brightness_nthw >= TRACK_FRACTION * peak_nt, brightness_nthw, 0.0)
    total_nt = weights_nthw.sum(axis=(-2, -1))
    safe_total_nt = np.where(total_nt > 0, total_nt, 1.0)
    x_nt = (weights_nthw.sum(axis=-2) * np.arange(width)).sum(axis=-1) / safe_total_nt
    y_nt = (weights_nthw.sum(axis=-1) * np.arange(height)).sum(axis=-1) / safe_total_nt
    x_nt = np.where(total_nt > 0, x_nt, (width - 1) / 2)
    y_nt = np.where(total_nt > 0, y_nt, (height - 1) / 2)
    return np.stack([x_nt, y_nt], axis=-1)


def glyph_features(brightness_nthw, track_nt2):
    """(N, T, 64): the half-canvas window centred on the track, block-averaged to 8x8, peak-normalised."""
    num_videos, num_frames, canvas = brightness_nthw.shape[:3]
    size = bouncing_digits.glyph_size(canvas)
    corner_nt2 = np.clip(np.rint(track_nt2 - (size - 1) / 2), 0, canvas - size).astype(np.int64)
    rows_nts = corner_nt2[..., 1:2] + np.arange(size)
    cols_nts = corner_nt2[..., 0:1] + np.arange(size)
    video_n = np.arange(num_videos)[:, None, None, None]
    frame_t = np.arange(num_frames)[None, :, None, None]
    crops_ntss = brightness_nthw[video_n, frame_t, rows_nts[..., :, None], cols_nts[..., None, :]]
    block = size // bouncing_digits.GLYPH_PIXELS
    glyphs_nt88 = crops_ntss.reshape(num_videos, num_frames, 8, block, 8, block).mean(axis=(3, 5))
    peak_nt11 = np.maximum(glyphs_nt88.max(axis=(-2, -1), keepdims=True), 1e-6)
    return (glyphs_nt88 / peak_nt11).reshape(num_videos, num_frames, 64)


def _training_features(canvas):
    """(N * 5, 64) features of every training glyph, rendered white mid-canvas, with digit labels.

    Each glyph is cropped at its centroid and one pixel up, down, left and right of it, so the classifier
    tolerates the centroid wobble of generated videos.
    """
    glyphs_n88, digits_n = bouncing_digits.load_glyphs("train")
    start_xy = ((canvas - bouncing_digits.glyph_size(canvas)) // 2,) * 2
    videos_n1hwc = np.stack(
        [bouncing_digits.render_video(glyph_88, "white", "right", start_xy, num_frames=1, canvas=canvas)
         for glyph_88 in glyphs_n88]
    )
    brightness_n1hw = _brightness(videos_n1hwc)
    track_n12 = centroid_track(brightness_n1hw)
    features_nd = [glyph_features(brightness_n1hw, track_n12 + np.array(xy))[:, 0] for xy in CROP_JITTER_XY]
    return np.concatenate(features_nd), np.tile(digits_n, len(CROP_JITTER_XY))


@dataclasses.dataclass
class Judge:
    """Fitted judge for one canvas size; `score` returns accuracies, `predict` per-video guesses."""

    classifier: SVC
    canvas: int

    @classmethod
    def fit(cls, canvas=32):
        """Trains the digit classifier on training glyphs only (about a second on one CPU core)."""
        bouncing_digits.validate_geometry(1, canvas)
        features_nd, digits_n = _training_features(canvas)
        classifier = SVC(C=10.0, gamma="scale").fit(features_nd, digits_n)
        return cls(classifier=classifier, canvas=canvas)

    def predict(self, videos_nthwc_uint8):
        """dict of int arrays: digit (N,), colour (N,), direction (N,), frame_digits (N, T)."""
        videos_nthwc_uint8 = np.asarray(videos_nthwc_uint8)
        expected_hwc = (self.canvas, self.canvas, 3)
        if videos_nthwc_uint8.dtype != np.uint8 or videos_nthwc_uint8.shape[2:] != expected_hwc:
            raise ValueError(
                f"judge fitted for uint8 (N, T, {self.canvas}, {self.canvas}, 3), got "
                f"{videos_nthwc_uint8.dtype} {videos_nthwc_uint8.shape}"
            )
        num_videos, num_frames = videos_nthwc_uint8.shape[:2]
        brightness_nthw = _brightness(videos_nthwc_uint8)
        track_nt2 = centroid_track(brightness_nthw)
        features_ntd = glyph_features(brightness_nthw, track_nt2)
        frame_digits = self.classifier.predict(features_ntd.reshape(num_videos * num_frames, -1))
        frame_digits_nt = frame_digits.reshape(num_videos, num_frames)
        votes_n10 = (frame_digits_nt[..., None] == np.arange(10)).sum(axis=1)
        return dict(
            digit=votes_n10.argmax(axis=-1),
            colour=_predict_colour(videos_nthwc_uint8, brightness_nthw),
            direction=_predict_direction(track_nt2),
            frame_digits=frame_digits_nt,
        )

    def score(self, videos_nthwc_uint8, prompts):
        """Accuracy of digit, colour, direction, all three at once, and per-frame identity consistency."""
        prompts = list(prompts)
        if len(prompts) != len(videos_nthwc_uint8):
            raise ValueError(f"{len(videos_nthwc_uint8)} videos but {len(prompts)} prompts")
        targets_n3 = np.array([parse_caption(prompt) for prompt in prompts], dtype=np.int64).reshape(-1, 3)
        predicted = self.predict(videos_nthwc_uint8)
        digit_ok = predicted["digit"] == targets_n3[:, 0]
        colour_ok = predicted["colour"] == targets_n3[:, 1]
        direction_ok = predicted["direction"] == targets_n3[:, 2]
        consistency_n = (predicted["frame_digits"] == predicted["digit"][:, None]).mean(axis=1)
        return dict(
            digit=float(digit_ok.mean()),
            colour=float(colour_ok.mean()),
            direction=float(direction_ok.mean()),
            all=float((digit_ok & colour_ok & direction_ok).mean()),
            identity_consistency=float(consistency_n.mean()),
            num_videos=len(prompts),
        )


def _predict_colour(videos_nthwc_uint8, brightness_nthw):
    """Nearest palette entry to the mean RGB of the video's bright pixels, scaled so its top channel is 1."""
    peak_n = brightness_nthw.max(axis=(1, 2, 3))
    bright_nthw = brightness_nthw >= BRIGHT_FRACTION * peak_n[:, None, None, None]
    rgb_sum_n3 = (videos_nthwc_uint8.astype(np.float64) * bright_nthw[..., None]).sum(axis=(1, 2, 3))
    ratios_n3 = rgb_sum_n3 / np.maximum(rgb_sum_n3.max(axis=-1, keepdims=True), 1e-6)
    distances_nk = ((ratios_n3[:, None, :] - bouncing_digits.COLOUR_RGB[None]) ** 2).sum(axis=-1)
    return distances_nk.argmin(axis=-1)


def _predict_direction(track_nt2):
    """Dominant axis and sign of the least-squares velocity of the centroid (image y grows downwards)."""
    frames_t = np.arange(track_nt2.shape[1], dtype=np.float64)
    centred_t = frames_t - frames_t.mean()
    velocity_n2 = (centred_t[None, :, None] * track_nt2).sum(axis=1) / max((centred_t**2).sum(), 1e-6)
    horizontal_n = np.abs(velocity_n2[:, 0]) >= np.abs(velocity_n2[:, 1])
    horizontal_dir_n = np.where(velocity_n2[:, 0] < 0, "left", "right")
    vertical_dir_n = np.where(velocity_n2[:, 1] < 0, "up", "down")
    names_n = np.where(horizontal_n, horizontal_dir_n, vertical_dir_n)
    return np.array([bouncing_digits.DIRECTIONS.index(name) for name in names_n], dtype=np.int64)
