"""Video files in and out: mp4 (H.264 via imageio-ffmpeg) and gif (Pillow), plus grids and dtype helpers.

Everything here is uint8 (T, H, W, 3) on the host; models produce float video in [-1, 1], which
`to_uint8` converts once at the boundary.
"""

import base64
import contextlib
import logging
import math
import os
import warnings

import imageio_ffmpeg
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, ImageSequence

MACRO_BLOCK = 16
MP4_CRF = 18


def to_uint8(video):
    """Float video in [-1, 1] (any leading shape) -> uint8 in [0, 255], rounded and clipped: a numpy array
    from numpy or a concrete jax array, a jax array inside a traced program (MALT decodes in its scan)."""
    if isinstance(video, jax.core.Tracer):
        return jnp.clip(jnp.round((video.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
    video = np.asarray(video, dtype=np.float32)
    return np.clip(np.rint((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _check_frames(frames_thwc):
    frames_thwc = np.asarray(frames_thwc)
    if frames_thwc.dtype != np.uint8 or frames_thwc.ndim != 4 or frames_thwc.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 frames (T, H, W, 3), got {frames_thwc.dtype} {frames_thwc.shape}; use to_uint8 first"
        )
    if len(frames_thwc) == 0:
        raise ValueError("cannot write a video with no frames")
    return frames_thwc


def upscale(frames_thwc, scale):
    """Nearest-neighbour upscale by an integer factor: keeps tiny videos sharp when viewed."""
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    return np.repeat(np.repeat(frames_thwc, scale, axis=1), scale, axis=2)


def pad_to_multiple(frames_thwc, multiple):
    """Black padding, split evenly on both sides, so H and W are multiples of `multiple`."""
    height, width = frames_thwc.shape[1:3]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if not pad_h and not pad_w:
        return frames_thwc
    padding = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    return np.pad(frames_thwc, padding)


def write_video(path, frames_thwc_uint8, fps=8, *, scale=1):
    """Writes .mp4 (libx264, yuv420p, CRF 18) or .gif (loops forever), chosen by the extension.

    Frames are first upscaled by the integer `scale`; mp4 frames are then padded with black to multiples
    of 16, the H.264 macro-block size, so the encoder never resizes them behind our back. GIF frames get an
    adaptive 256-colour palette: exact for synthetic videos, lossy for photographs.
    """
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in (".mp4", ".gif"):
        raise ValueError(f"unknown video extension {extension!r} for {path}; use .mp4 or .gif")
    frames_thwc = upscale(_check_frames(frames_thwc_uint8), scale)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    if extension == ".gif":
        _write_gif(path, frames_thwc, fps)
    else:
        _write_mp4(path, pad_to_multiple(frames_thwc, MACRO_BLOCK), fps)


def gif_img_tag(path, frames_thwc_uint8, fps=8, *, scale=1) -> str:
    """Writes the video as a looping .gif at `path` (`write_video`) and returns an HTML <img> that embeds it
    as base64 data: a notebook shows it as an animation, and still does once saved or opened elsewhere."""
    write_video(path, frames_thwc_uint8, fps=fps, scale=scale)
    with open(path, "rb") as f:
        return f'<img src="data:image/gif;base64,{base64.b64encode(f.read()).decode()}">'


def _write_mp4(path, frames_thwc, fps):
    height, width = frames_thwc.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        os.fspath(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=None,
        output_params=["-crf", str(MP4_CRF)],
        macro_block_size=MACRO_BLOCK,
        ffmpeg_log_level="error",
    )
    with _quiet_ffmpeg():
        writer.send(None)
        for frame_hwc in frames_thwc:
            writer.send(np.ascontiguousarray(frame_hwc))
        writer.close()


def _write_gif(path, frames_thwc, fps):
    images = [Image.fromarray(frame_hwc) for frame_hwc in frames_thwc]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000.0 / fps, loop=0)


def read_video(path, *, size=None):
    """uint8 (T, H, W, 3) frames of an .mp4 or .gif (or anything ffmpeg decodes); OSError if unreadable.

    size=(height, width) scales each frame (area filter) to cover that size and centre-crops it, inside
    ffmpeg for videos, so large clips never reach numpy at full resolution.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video file at {path}")
    if os.fspath(path).lower().endswith(".gif"):
        return _read_gif(path, size)
    output_params = ["-an"]
    if size is not None:
        height, width = size
        scale = f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=area"
        output_params += ["-vf", f"{scale},crop={width}:{height}"]
    with _quiet_ffmpeg():
        reader = imageio_ffmpeg.read_frames(os.fspath(path), pix_fmt="rgb24", output_params=output_params)
        width, height = next(reader)["size"]
        frames = [np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3) for frame in reader]
    if not frames:
        raise OSError(f"no frames decoded from {path}")
    return np.stack(frames)


@contextlib.contextmanager
def _quiet_ffmpeg():
    """Silences two false alarms: imageio-ffmpeg's note on every resized read (resizing is the point here),
    and JAX's fork warning when the ffmpeg subprocess starts (fork is followed at once by exec)."""
    ffmpeg_logger = logging.getLogger("imageio_ffmpeg")
    level = ffmpeg_logger.level
    ffmpeg_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            yield
    finally:
        ffmpeg_logger.setLevel(level)


def _read_gif(path, size):
    """Pillow merges identical consecutive frames on write (adding their durations); this undoes it."""
    frames, durations = [], []
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            rgb = frame.convert("RGB")
            if size is not None:
                rgb = ImageOps.fit(rgb, (size[1], size[0]), method=Image.Resampling.BOX)
            frames.append(np.asarray(rgb))
            durations.append(frame.info.get("duration", 0))
    shortest = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, round(d / shortest)) if shortest else 1 for d in durations]
    return np.repeat(np.stack(frames), repeats, axis=0)


def video_grid(videos_nthwc, ncols=None, pad=2, *, pad_value=0):
    """Tiles N videos into one (T, H', W', C) video, row-major, `pad` px between tiles.

    ncols defaults to ceil(sqrt(N)); empty tiles and gaps are `pad_value`.
    """
    videos_nthwc = np.asarray(videos_nthwc)
    num_videos, num_frames, height, width, channels = videos_nthwc.shape
    ncols = ncols or math.ceil(math.sqrt(num_videos))
    nrows = math.ceil(num_videos / ncols)
    grid_thwc = np.full(
        (num_frames, nrows * height + (nrows - 1) * pad, ncols * width + (ncols - 1) * pad, channels),
        pad_value,
        dtype=videos_nthwc.dtype,
    )
    for index, video_thwc in enumerate(videos_nthwc):
        row, col = divmod(index, ncols)
        top, left = row * (height + pad), col * (width + pad)
        grid_thwc[:, top : top + height, left : left + width] = video_thwc
    return grid_thwc
