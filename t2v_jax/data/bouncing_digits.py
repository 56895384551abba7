"""Bouncing Digits: a tiny synthetic text-to-video dataset whose prompts can be checked by a judge.

Each video shows one scikit-learn 8x8 handwritten digit, scaled to half the canvas with nearest-neighbour
resampling (an exact integer upscale, so the judge can model it exactly), coloured one of seven RGB
primaries/secondaries and moving 1 px/frame left, right, up or down without leaving the canvas. The caption
says all three: "a red 3 moving left". Glyphs are split by index (first 80% train, last 20% test), so test
videos show handwriting the model never saw.

The pure-numpy helpers (`load_glyphs`, `render_video`, `caption`, `sample_attributes`, `sample_example`)
need no build; `BouncingDigits` is the tensorflow-datasets builder that writes array_record files.
"""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white")
COLOUR_RGB = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32
)
DIRECTIONS = ("left", "right", "up", "down")
DIRECTION_XY = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
SPLITS = ("train", "test")
TRAIN_FRACTION = 0.8
GLYPH_PIXELS = 8


@functools.lru_cache(maxsize=1)
def _all_glyphs():
    digits = load_digits()
    glyphs_n88 = (digits.images / 16.0).astype(np.float32)
    glyphs_n88.setflags(write=False)
    labels_n = digits.target.astype(np.int64)
    labels_n.setflags(write=False)
    return glyphs_n88, labels_n


def glyph_indices(split):
    """Indices into sklearn's 1,797 digits that belong to `split` (contiguous, so writers barely overlap)."""
    num_glyphs = len(_all_glyphs()[1])
    num_train = int(TRAIN_FRACTION * num_glyphs)
    if split == "train":
        return np.arange(num_train)
    if split == "test":
        return np.arange(num_train, num_glyphs)
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_glyphs(split):
    """(glyphs_n88 float32 in [0, 1], digits_n int64) for one split."""
    glyphs_n88, labels_n = _all_glyphs()
    indices = glyph_indices(split)
    return glyphs_n88[indices], labels_n[indices]


def _index(value, names, field):
    if isinstance(value, (int, np.integer)):
        if not 0 <= value < len(names):
            raise ValueError(f"{field} index must be in [0, {len(names)}), got {value}")
        return int(value)
    if value not in names:
        raise ValueError(f"{field} must be one of {names}, got {value!r}")
    return names.index(value)


def glyph_size(canvas):
    """Side of the rendered glyph: half the canvas."""
    return canvas // 2


def validate_geometry(num_frames, canvas):
    """Raises unless a half-canvas glyph can travel num_frames - 1 px inside the canvas."""
    if canvas % 16 or canvas < 16:
        raise ValueError(f"canvas must be a positive multiple of 16 (glyph = canvas/2 = 8k px), got {canvas}")
    if num_frames < 1 or num_frames - 1 > canvas - glyph_size(canvas):
        raise ValueError(
            f"num_frames={num_frames} does not fit canvas={canvas}: a glyph of {glyph_size(canvas)} px moving "
            f"1 px/frame needs 1 <= num_frames <= {canvas - glyph_size(canvas) + 1}"
        )


def scale_glyph(glyph_88, size):
    """Nearest-neighbour upscale of an 8x8 glyph to size x size (size a multiple of 8: exact pixel repeat)."""
    factor = size // GLYPH_PIXELS
    return np.repeat(np.repeat(glyph_88, factor, axis=0), factor, axis=1)


def start_range(direction, *, num_frames=16, canvas=32):
    """Inclusive (low_xy, high_xy) of start positions (glyph top-left) that keep every frame inside."""
    step_xy = DIRECTION_XY[_index(direction, DIRECTIONS, "direction")]
    travel_xy = (num_frames - 1) * step_xy
    low_xy = np.maximum(0, -travel_xy)
    high_xy = canvas - glyph_size(canvas) - np.maximum(0, travel_xy)
    return low_xy, high_xy


def render_video(glyph_88, colour, direction, start_xy, *, num_frames=16, canvas=32):
    """uint8 (T, H, W, 3) video on black: glyph top-left at start_xy, moving 1 px/frame in `direction`."""
    validate_geometry(num_frames, canvas)
    colour_rgb = COLOUR_RGB[_index(colour, COLOURS, "colour")]
    step_xy = DIRECTION_XY[_index(direction, DIRECTIONS, "direction")]
    low_xy, high_xy = start_range(direction, num_frames=num_frames, canvas=canvas)
    start_xy = np.asarray(start_xy, dtype=np.int64)
    if np.any(start_xy < low_xy) or np.any(start_xy > high_xy):
        raise ValueError(
            f"start_xy={start_xy.tolist()} leaves the canvas; allowed {low_xy.tolist()}..{high_xy.tolist()}"
        )
    size = glyph_size(canvas)
    sprite_hwc = np.rint(scale_glyph(glyph_88, size)[..., None] * colour_rgb * 255).astype(np.uint8)
    corner_txy = start_xy + np.arange(num_frames)[:, None] * step_xy
    rows_ts = corner_txy[:, 1:2] + np.arange(size)
    cols_ts = corner_txy[:, 0:1] + np.arange(size)
    video_thwc = np.zeros((num_frames, canvas, canvas, 3), dtype=np.uint8)
    frame_t = np.arange(num_frames)[:, None, None]
    video_thwc[frame_t, rows_ts[:, :, None], cols_ts[:, None, :]] = sprite_hwc
    return video_thwc


def caption(digit, colour, direction):
    """The prompt for a video: 'a red 3 moving left'."""
    colour_name = COLOURS[_index(colour, COLOURS, "colour")]
    direction_name = DIRECTIONS[_index(direction, DIRECTIONS, "direction")]
    return f"a {colour_name} {int(digit)} moving {direction_name}"


def sample_attributes(rng, split, *, num_frames=16, canvas=32):
    """Random glyph, colour, direction and an in-canvas start: dict of ints (glyph_index is global)."""
    indices = glyph_indices(split)
    glyph_index = int(indices[rng.integers(len(indices))])
    colour = int(rng.integers(len(COLOURS)))
    direction = int(rng.integers(len(DIRECTIONS)))
    low_xy, high_xy = start_range(direction, num_frames=num_frames, canvas=canvas)
    start_xy = tuple(int(v) for v in rng.integers(low_xy, high_xy + 1))
    return dict(
        glyph_index=glyph_index,
        digit=int(_all_glyphs()[1][glyph_index]),
        colour=colour,
        direction=direction,
        start_xy=start_xy,
    )


def sample_example(rng, split, *, num_frames=16, canvas=32):
    """One record as the builder stores it: video, caption, digit, colour, direction, glyph_index."""
    attributes = sample_attributes(rng, split, num_frames=num_frames, canvas=canvas)
    glyph_88 = _all_glyphs()[0][attributes["glyph_index"]]
    colour, direction = attributes["colour"], attributes["direction"]
    video_thwc = render_video(
        glyph_88, colour, direction, attributes["start_xy"], num_frames=num_frames, canvas=canvas
    )
    labels = {key: attributes[key] for key in ("digit", "colour", "direction", "glyph_index")}
    return dict(video=video_thwc, caption=caption(attributes["digit"], colour, direction), **labels)


def example_rng(seed, split, index):
    """Per-example generator: any record can be regenerated alone, independent of write order."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def sample_videos(num_videos, split="test", *, seed=0, num_frames=16, canvas=32):
    """(videos_nthwc uint8, captions list[str]) rendered directly, exactly the records a build would hold."""
    videos_nthwc = np.zeros((num_videos, num_frames, canvas, canvas, 3), np.uint8)
    captions = []
    for index in range(num_videos):
        example = sample_example(example_rng(seed, split, index), split, num_frames=num_frames, canvas=canvas)
        videos_nthwc[index] = example["video"]
        captions.append(example["caption"])
    return videos_nthwc, captions


@dataclasses.dataclass(eq=False)
class BouncingDigitsConfig(tfds.core.BuilderConfig):
    """Geometry and sizes of one build; the config name encodes them so builds never collide on disk."""

    num_frames: int = 16
    canvas: int = 32
    train_size: int = 20000
    test_size: int = 2000
    seed: int = 0


def _config_name(num_frames, canvas, train_size, test_size, seed):
    return f"f{num_frames}_c{canvas}_train{train_size}_test{test_size}_seed{seed}"


def _new_config(*, num_frames, canvas, train_size, test_size, seed):
    return BouncingDigitsConfig(
        name=_config_name(num_frames, canvas, train_size, test_size, seed),
        description=f"{num_frames} frames of {canvas}x{canvas}, {train_size} train / {test_size} test videos",
        num_frames=num_frames,
        canvas=canvas,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
    )


def make_config(*, num_frames=16, canvas=32, train_size=20000, test_size=2000, seed=0):
    """Validated config; returns the registered instance when one matches (tfds rejects look-alikes)."""
    validate_geometry(num_frames, canvas)
    if train_size < 1 or test_size < 0:
        raise ValueError(f"need train_size >= 1 and test_size >= 0, got {train_size} and {test_size}")
    name = _config_name(num_frames, canvas, train_size, test_size, seed)
    registered = {config.name: config for config in BouncingDigits.BUILDER_CONFIGS}
    if name in registered:
        return registered[name]
    return _new_config(num_frames=num_frames, canvas=canvas, train_size=train_size, test_size=test_size, seed=seed)


class BouncingDigits(tfds.core.GeneratorBasedBuilder):
    """tfds builder; use file_format="array_record" so that grain reads it without TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [_new_config(num_frames=16, canvas=32, train_size=20000, test_size=2000, seed=0)]

    def _info(self):
        config = self.builder_config
        video_shape = (config.num_frames, config.canvas, config.canvas, 3)
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(
                        shape=video_shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "caption": tfds.features.Text(),
                    "digit": tfds.features.ClassLabel(num_classes=10),
                    "colour": tfds.features.ClassLabel(names=COLOURS),
                    "direction": tfds.features.ClassLabel(names=DIRECTIONS),
                    "glyph_index": tfds.features.Scalar(dtype=np.int64, doc="index into sklearn load_digits"),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        sizes = {"train": self.builder_config.train_size, "test": self.builder_config.test_size}
        return {split: self._generate_examples(split, size) for split, size in sizes.items() if size > 0}

    def _generate_examples(self, split, num_videos):
        config = self.builder_config
        for index in range(num_videos):
            rng = example_rng(config.seed, split, index)
            yield index, sample_example(rng, split, num_frames=config.num_frames, canvas=config.canvas)
