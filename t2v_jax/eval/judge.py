"""Prompt accuracy on Bouncing Digits: does a video show the digit, colour and motion its prompt asks for?

The judge reads each frame the way the renderer writes it: brightness is the max over RGB (every palette
colour is a channel mask times intensity); the digit is tracked by its intensity-weighted centroid and a
half-canvas window around it is block-averaged to 8x8. A small CNN trained on the TRAINING glyphs only (rendered
and cropped through this same pipeline, then randomly warped so that it generalises to other hands) reads each
window and its four 1 px shifted neighbours; the video's digit has the highest log-probability summed over
frames and windows. Colour is the nearest palette entry to the channel ratios of the bright pixels; direction
is the dominant axis and sign of a straight-line fit to the centroid track.

A frame shows a digit only when some pixel reaches FOUND_BRIGHTNESS; other frames (black, or faint noise) are
left out of the digit vote and the track fit and count as identity failures. A video with no such frame has no
digit, colour or direction (predicted as -1), so a blank video scores 0 on every attribute; one with a single
such frame has no direction.

Fitting takes ~15 s on two CPU cores, so fitted parameters are cached per process and on disk, under
$XDG_CACHE_HOME/t2v_jax (default ~/.cache) in a file named by a hash of everything that determines them.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2v_jax.data import bouncing_digits

BRIGHT_FRACTION = 0.5  # pixels at least this fraction of the video's peak brightness decide the colour
TRACK_FRACTION = 0.25  # pixels below this fraction of the frame's peak are ignored when tracking
FOUND_BRIGHTNESS = 0.25  # a frame shows a digit when some pixel is at least this bright (max over RGB, 1 = 255)
NOT_FOUND = -1  # predicted digit, colour or direction where no digit was found
CROP_JITTER_XY = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # crop offsets trained on and averaged over
PREDICT_CHUNK = 2048  # windows per forward pass: bounds the im2col memory (~100 MB) whatever the video count
CAPTION_PATTERN = re.compile(r"^\s*an?\s+([a-z]+)\s+(\d)\s+moving\s+([a-z]+)\s*\.?\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that determines the fitted digit network; its hash names the disk cache file.

    Augmentation sizes are in 8x8 glyph pixels. Bump `version` whenever training code changes what a recipe
    produces, so that stale caches are not loaded.
    """

    widths: tuple[int, ...] = (16, 32)
    hidden: int = 64
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    max_rotation_deg: float = 12.0
    max_log_scale: float = 0.1
    max_shear: float = 0.15
    max_shift: float = 0.75
    elastic_std: float = 0.25
    clean_fraction: float = 0.2
    version: int = 1


RECIPE = Recipe()


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


def brightness(videos_nthwc_uint8):
    """Per-pixel brightness in [0, 1]: the max over RGB, as the renderer writes every palette colour."""
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
    """(N * 5, 8, 8) windows of every training glyph, rendered white mid-canvas, with digit labels.

    Each glyph is cropped at its centroid and one pixel up, down, left and right of it, the windows the judge
    reads at prediction time; a 1 px shift at canvas resolution is a half-pixel blur at 8x8.
    """
    glyphs_n88, digits_n = bouncing_digits.load_glyphs("train")
    start_xy = ((canvas - bouncing_digits.glyph_size(canvas)) // 2,) * 2
    videos_n1hwc = np.stack(
        [bouncing_digits.render_video(glyph_88, "white", "right", start_xy, num_frames=1, canvas=canvas)
         for glyph_88 in glyphs_n88]
    )
    brightness_n1hw = brightness(videos_n1hwc)
    track_n12 = centroid_track(brightness_n1hw)
    features_nd = [glyph_features(brightness_n1hw, track_n12 + np.array(xy))[:, 0] for xy in CROP_JITTER_XY]
    return np.concatenate(features_nd).reshape(-1, 8, 8), np.tile(digits_n, len(CROP_JITTER_XY))


class Conv3x3(nn.Module):
    """'Same' 3x3 convolution as nine shifted copies and a Dense layer.

    XLA:CPU runs lax.conv about 20x slower inside a while loop, and training is one lax.scan.
    """

    features: int

    @nn.compact
    def __call__(self, x_bhwc):
        height, width = x_bhwc.shape[1:3]
        padded_bhwc = jnp.pad(x_bhwc, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches_bhwk = jnp.concatenate(
            [padded_bhwc[:, i : i + height, j : j + width] for i in range(3) for j in range(3)], axis=-1
        )
        return nn.Dense(self.features)(patches_bhwk)


class DigitNet(nn.Module):
    """(B, 8, 8) glyph windows -> (B, 10) digit logits: two conv-conv-pool stages and an MLP head."""

    widths: tuple[int, ...]
    hidden: int

    @nn.compact
    def __call__(self, glyphs_b88):
        x_bhwc = glyphs_b88[..., None]
        for width in self.widths:
            x_bhwc = nn.relu(Conv3x3(width)(x_bhwc))
            x_bhwc = nn.relu(Conv3x3(width)(x_bhwc))
            x_bhwc = nn.max_pool(x_bhwc, (2, 2), strides=(2, 2))
        x_bd = nn.relu(nn.Dense(self.hidden)(x_bhwc.reshape(x_bhwc.shape[0], -1)))
        return nn.Dense(10)(x_bd)


_PIXEL_YX = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), axis=-1) - 3.5
_COARSE_TO_FINE = np.clip(1 - np.abs(np.linspace(0, 2, 8)[:, None] - np.arange(3)), 0, None)  # 3 -> 8 bilinear


def warp_glyphs(key, glyphs_b88, recipe):
    """Random affine + smooth elastic warp of each window (bilinear, zero outside), re-normalised to peak 1.

    Other hands differ in slant, size, position and stroke wobble; a `clean_fraction` of windows stay exact
    because ground-truth videos show glyphs unwarped.
    """
    batch = glyphs_b88.shape[0]
    uniform_bk = jax.random.uniform(key, (batch, 25), minval=-1.0, maxval=1.0)
    u = uniform_bk[:, :, None, None]
    angle, shear = u[:, 0] * np.deg2rad(recipe.max_rotation_deg), u[:, 3] * recipe.max_shear
    scale_y, scale_x = jnp.exp(u[:, 1] * recipe.max_log_scale), jnp.exp(u[:, 2] * recipe.max_log_scale)
    dy = _PIXEL_YX[..., 0] - u[:, 4] * recipe.max_shift
    dx = _PIXEL_YX[..., 1] - u[:, 5] * recipe.max_shift
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    source_y, source_x = cos * dy + sin * dx, cos * dx - sin * dy
    source_y = source_y - shear * source_x
    coarse_b332 = uniform_bk[:, 6:24].reshape(batch, 3, 3, 2) * (recipe.elastic_std * np.sqrt(3.0))
    wobble_b882 = jnp.einsum("hi,wj,bijc->bhwc", _COARSE_TO_FINE, _COARSE_TO_FINE, coarse_b332)
    source_y = source_y / scale_y + 3.5 + wobble_b882[..., 0]
    source_x = source_x / scale_x + 3.5 + wobble_b882[..., 1]
    weight_y_bhwi = jax.nn.relu(1 - jnp.abs(source_y[..., None] - jnp.arange(8.0)))
    weight_x_bhwj = jax.nn.relu(1 - jnp.abs(source_x[..., None] - jnp.arange(8.0)))
    warped_b88 = jnp.einsum("bhwi,bhwj,bij->bhw", weight_y_bhwi, weight_x_bhwj, glyphs_b88)
    warped_b88 = warped_b88 / jnp.maximum(warped_b88.max(axis=(1, 2), keepdims=True), 1e-6)
    keep_b11 = uniform_bk[:, 24, None, None] < 2 * recipe.clean_fraction - 1
    return jnp.where(keep_b11, glyphs_b88, warped_b88)


def _digit_net(recipe):
    return DigitNet(widths=recipe.widths, hidden=recipe.hidden)


def _param_shapes(recipe):
    return jax.eval_shape(_digit_net(recipe).init, jax.random.key(0), jnp.zeros((1, 8, 8)))


@functools.partial(jax.jit, static_argnames="recipe")
def train_digit_net(glyphs_n88, digits_n, seed, recipe):
    """DigitNet params fitted with AdamW on random warped minibatches; all steps are one lax.scan."""
    net = _digit_net(recipe)
    schedule = optax.warmup_cosine_decay_schedule(0.0, recipe.learning_rate, recipe.steps // 10, recipe.steps)
    optimizer = optax.adamw(schedule, weight_decay=recipe.weight_decay)

    def loss_fn(params, glyphs_b88, digits_b):
        logits_bk = net.apply(params, glyphs_b88)
        return optax.softmax_cross_entropy_with_integer_labels(logits_bk, digits_b).mean()

    def step(carry, key):
        params, opt_state = carry
        index_key, warp_key = jax.random.split(key)
        index_b = jax.random.randint(index_key, (recipe.batch_size,), 0, glyphs_n88.shape[0])
        glyphs_b88 = warp_glyphs(warp_key, glyphs_n88[index_b], recipe)
        grads = jax.grad(loss_fn)(params, glyphs_b88, digits_n[index_b])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    init_key, steps_key = jax.random.split(jax.random.key(seed))
    params = net.init(init_key, glyphs_n88[:1])
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(steps_key, recipe.steps))
    return params


def _cache_path(canvas, seed, recipe, glyphs_n88, digits_n):
    """File named by a hash of the recipe, canvas, seed and the exact training windows."""
    digest = hashlib.sha256(
        json.dumps(dict(recipe=dataclasses.asdict(recipe), canvas=canvas, seed=seed), sort_keys=True).encode()
    )
    digest.update(np.ascontiguousarray(glyphs_n88, np.float32).tobytes())
    digest.update(np.ascontiguousarray(digits_n, np.int64).tobytes())
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "t2v_jax" / f"judge-{digest.hexdigest()[:20]}.msgpack"


def _load_params(path, recipe):
    """Params from a cache file, or None when it is missing, corrupt or shaped for another network."""
    try:
        state = flax.serialization.msgpack_restore(path.read_bytes())
    except (OSError, ValueError):
        return None
    expected = _param_shapes(recipe)
    if jax.tree.structure(state) != jax.tree.structure(expected):
        return None
    fits = jax.tree.map(
        lambda array, spec: np.shape(array) == spec.shape and np.asarray(array).dtype == spec.dtype, state, expected
    )
    return jax.tree.map(jnp.asarray, state) if all(jax.tree.leaves(fits)) else None


def _save_params(path, params):
    """Write to a temporary file, then rename, so a crash or a concurrent reader never sees half a file.

    An unwritable cache directory only costs a retrain next time.
    """
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


@functools.lru_cache(maxsize=8)
def _fitted_params(canvas, seed, recipe):
    glyphs_n88, digits_n = _training_features(canvas)
    path = _cache_path(canvas, seed, recipe, glyphs_n88, digits_n)
    params = _load_params(path, recipe)
    if params is None:
        params = train_digit_net(jnp.asarray(glyphs_n88), jnp.asarray(digits_n), seed, recipe)
        _save_params(path, params)
    return params


@functools.partial(jax.jit, static_argnames="recipe")
def _log_probs(params, glyphs_b88, recipe):
    return jax.nn.log_softmax(_digit_net(recipe).apply(params, glyphs_b88))


@dataclasses.dataclass
class Judge:
    """Fitted judge for one canvas size; `score` returns accuracies, `predict` per-video guesses."""

    params: dict
    canvas: int
    recipe: Recipe = RECIPE

    @classmethod
    def fit(cls, canvas=32, *, seed=0, recipe=RECIPE):
        """Trains the digit network on training glyphs only, or loads it from the process or disk cache."""
        bouncing_digits.validate_geometry(1, canvas)
        return cls(params=_fitted_params(canvas, seed, recipe), canvas=canvas, recipe=recipe)

    def _frame_log_probs(self, videos_nthwc_uint8):
        """(N, T, 10) digit log-probabilities of each frame, summed over the shifted windows; the track; and
        (N, T) whether each frame shows a digit at all."""
        brightness_nthw = brightness(videos_nthwc_uint8)
        found_nt = brightness_nthw.max(axis=(-2, -1)) >= FOUND_BRIGHTNESS
        track_nt2 = centroid_track(brightness_nthw)
        windows_ntv64 = np.stack(
            [glyph_features(brightness_nthw, track_nt2 + np.array(xy)) for xy in CROP_JITTER_XY], axis=2
        )
        windows_m88 = windows_ntv64.reshape(-1, 8, 8)
        num_windows = len(windows_m88)
        padded_m88 = np.pad(windows_m88, ((0, -num_windows % PREDICT_CHUNK), (0, 0), (0, 0)))
        log_probs_m10 = np.concatenate(
            [_log_probs(self.params, chunk_c88, self.recipe) for chunk_c88 in np.split(
                padded_m88, len(padded_m88) // PREDICT_CHUNK)]
        )[:num_windows]
        return log_probs_m10.reshape(windows_ntv64.shape[:3] + (10,)).sum(axis=2), track_nt2, found_nt

    def predict(self, videos_nthwc_uint8):
        """dict of arrays: digit (N,), colour (N,), direction (N,), frame_digits (N, T) (ints, NOT_FOUND = -1
        where no digit was found: in the frame, or in any frame of the video) and frame_found (N, T) bools."""
        videos_nthwc_uint8 = np.asarray(videos_nthwc_uint8)
        expected_hwc = (self.canvas, self.canvas, 3)
        if videos_nthwc_uint8.dtype != np.uint8 or videos_nthwc_uint8.shape[2:] != expected_hwc:
            raise ValueError(
                f"judge fitted for uint8 (N, T, {self.canvas}, {self.canvas}, 3), got "
                f"{videos_nthwc_uint8.dtype} {videos_nthwc_uint8.shape}"
            )
        log_probs_nt10, track_nt2, found_nt = self._frame_log_probs(videos_nthwc_uint8)
        any_found_n = found_nt.any(axis=1)
        digit_n = np.where(found_nt[..., None], log_probs_nt10, 0.0).sum(axis=1).argmax(axis=-1)
        colour_n = _predict_colour(videos_nthwc_uint8, brightness(videos_nthwc_uint8))
        return dict(
            digit=np.where(any_found_n, digit_n, NOT_FOUND),
            colour=np.where(any_found_n, colour_n, NOT_FOUND),
            direction=_predict_direction(track_nt2, found_nt),
            frame_digits=np.where(found_nt, log_probs_nt10.argmax(axis=-1), NOT_FOUND),
            frame_found=found_nt,
        )

    def score(self, videos_nthwc_uint8, prompts):
        """Accuracy of digit, colour, direction, all three at once, and per-frame identity consistency: the
        fraction of frames that show a digit and read as the video's digit. `digit_by_class[d]` is the digit
        accuracy over the prompts that ask for d (None when none do)."""
        prompts = list(prompts)
        if len(prompts) != len(videos_nthwc_uint8):
            raise ValueError(f"{len(videos_nthwc_uint8)} videos but {len(prompts)} prompts")
        targets_n3 = np.array([parse_caption(prompt) for prompt in prompts], dtype=np.int64).reshape(-1, 3)
        predicted = self.predict(videos_nthwc_uint8)
        digit_ok = predicted["digit"] == targets_n3[:, 0]
        colour_ok = predicted["colour"] == targets_n3[:, 1]
        direction_ok = predicted["direction"] == targets_n3[:, 2]
        consistent_nt = predicted["frame_found"] & (predicted["frame_digits"] == predicted["digit"][:, None])
        consistency_n = consistent_nt.mean(axis=1)
        # Models learn the digit one class at a time, so the mean hides which glyphs they can draw.
        asks_for_nd = targets_n3[:, 0, None] == np.arange(10)
        digit_by_class = [float(digit_ok[asks_n].mean()) if asks_n.any() else None for asks_n in asks_for_nd.T]
        return dict(
            digit=float(digit_ok.mean()),
            colour=float(colour_ok.mean()),
            direction=float(direction_ok.mean()),
            all=float((digit_ok & colour_ok & direction_ok).mean()),
            identity_consistency=float(consistency_n.mean()),
            digit_by_class=digit_by_class,
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


def _predict_direction(track_nt2, found_nt):
    """Dominant axis and sign of the least-squares velocity of the centroid over the frames that show a digit
    (image y grows downwards); NOT_FOUND where fewer than two frames do."""
    frames_t = np.arange(track_nt2.shape[1], dtype=np.float64)
    weights_nt = found_nt.astype(np.float64)
    count_n = weights_nt.sum(axis=1)
    mean_frame_n = (weights_nt * frames_t).sum(axis=1) / np.maximum(count_n, 1.0)
    centred_nt = (frames_t - mean_frame_n[:, None]) * weights_nt
    spread_n = np.maximum((centred_nt**2).sum(axis=1), 1e-6)
    velocity_n2 = (centred_nt[..., None] * track_nt2).sum(axis=1) / spread_n[:, None]
    horizontal_n = np.abs(velocity_n2[:, 0]) >= np.abs(velocity_n2[:, 1])
    horizontal_dir_n = np.where(velocity_n2[:, 0] < 0, "left", "right")
    vertical_dir_n = np.where(velocity_n2[:, 1] < 0, "up", "down")
    names_n = np.where(horizontal_n, horizontal_dir_n, vertical_dir_n)
    direction_n = np.array([bouncing_digits.DIRECTIONS.index(name) for name in names_n], dtype=np.int64)
    return np.where(count_n >= 2, direction_n, NOT_FOUND)
