"""How well each stage of a cascade does its own job, against the ground truth the dataset renders.

Bouncing Digits renders the same clip at any frame rate and size, so a temporal interpolation model is
measured on test clips whose keyframes it is given: PSNR of its frames against the clip rendered at the
higher frame rate, next to the baselines of repeating the last keyframe and of blending the two around
each frame linearly, in the same run; a super-resolution model on test clips whose low-resolution frames
it is given: PSNR and SSIM against the clip rendered at the larger size, next to bicubic upsampling.

Bouncing Digits renders sub-pixel positions by exact area coverage, and the base clips move 1 px per
frame, so blending two neighbouring keyframes is the 4x-rate frame up to rounding: the blend baseline is
an upper bound here that no model is expected to reach, and repeating the keyframe is the fair floor.
"""

import jax
import numpy as np
from tqdm.auto import tqdm

from t2v_jax.data.bouncing_digits import sample_videos
from t2v_jax.eval.metrics import psnr, ssim


def keyframe_baselines(keyframes_nkhwc, rate: int) -> dict:
    """{"repeat", "blend"} uint8 videos of (K - 1) * rate + 1 frames from uint8 keyframes: frame i repeats
    keyframe i // rate, or blends keyframes i // rate and the next with weights (1 - f, f), f = (i % rate) / rate."""
    frames = (keyframes_nkhwc.shape[1] - 1) * rate + 1
    before = np.arange(frames) // rate
    after = np.minimum(before + 1, keyframes_nkhwc.shape[1] - 1)
    weight = ((np.arange(frames) % rate) / rate)[None, :, None, None, None]
    keyframes = keyframes_nkhwc.astype(np.float64)
    blend = (1 - weight) * keyframes[:, before] + weight * keyframes[:, after]
    return {"repeat": keyframes_nkhwc[:, before], "blend": np.clip(np.rint(blend), 0, 255).astype(np.uint8)}


def _mean_psnr(videos, truth, frames) -> float:
    return float(np.mean(np.minimum(psnr(videos[:, frames], truth[:, frames]), 100.0)))


def _batched(fn, videos, captions, batch_size, desc, progress):
    """fn over fixed-size batches (one compile), the last padded and the padding dropped."""
    padded = -len(videos) % batch_size
    videos_padded = np.concatenate([videos, videos[:padded]])
    captions_padded = list(captions) + list(captions[:padded])
    outputs = []
    for start in tqdm(range(0, len(videos_padded), batch_size), desc=desc, disable=not progress):
        outputs.append(np.asarray(jax.device_get(fn(videos_padded[start:start + batch_size],
                                                    captions_padded[start:start + batch_size]))))
    return np.concatenate(outputs)[:len(videos)]


def interpolation_psnr(interpolate, data_cfg, rate: int, num_videos: int, *, round_trip=None, seed: int = 0,
                       batch_size: int = 32, progress: bool = True) -> dict:
    """PSNR (dB, uint8) on the frames between keyframes, for the model and the baselines.

    `interpolate(keyframes_nkhwc uint8, captions) -> uint8 videos` is the model under test (encode the
    keyframes, interpolate their latents, decode). Test clips come from the test split at `rate` times
    data_cfg's frame rate; the keyframes are every rate-th frame. `round_trip(videos uint8) -> uint8`, the
    VAE's encode-decode, gives the ceiling of any model that decodes through it ("vae_ceiling")."""
    truth, captions = sample_videos(num_videos, "test", seed=seed, num_frames=data_cfg.num_frames,
                                    canvas=data_cfg.canvas, frame_rate=rate)
    keyframes = truth[:, ::rate]
    model = _batched(interpolate, keyframes, captions, batch_size, "interpolate", progress)
    between = np.arange(truth.shape[1]) % rate != 0
    scores = {name: _mean_psnr(video, truth, between)
              for name, video in {"model": model, **keyframe_baselines(keyframes, rate)}.items()}
    scores["model_keyframes"] = _mean_psnr(model, truth, ~between)
    if round_trip is not None:
        scores["vae_ceiling"] = _mean_psnr(_batched(lambda videos, _: round_trip(videos), truth, captions, batch_size,
                                                    "reconstruct", progress), truth, between)
    scores["num_videos"] = num_videos
    return scores


def bicubic_upsample(video_nthwc, scale: int) -> np.ndarray:
    """uint8 frames upsampled `scale` x with bicubic interpolation (the baseline of super-resolution)."""
    n, t, h, w, c = video_nthwc.shape
    resized = jax.image.resize(video_nthwc.astype(np.float32), (n, t, h * scale, w * scale, c), method="bicubic")
    return np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)


def super_resolution_scores(upscale, data_cfg, rate: int, scale: int, num_videos: int, *, round_trip=None,
                            low_res_round_trip=None, seed: int = 0, batch_size: int = 32,
                            progress: bool = True) -> dict:
    """PSNR (dB) and SSIM of the model's frames and of bicubic upsampling against the clip rendered at `scale`
    x the size, on test clips at `rate` x the frame rate. `upscale(low_res_nthwc uint8, captions) -> uint8`
    is the model under test; its input is the clip at the base size (box-downsampled from the large one).
    `round_trip(videos uint8) -> uint8`, the super-resolution VAE's encode-decode of the large clips, gives
    the ceiling of any model that decodes through it ("vae_ceiling_*"). `low_res_round_trip(videos uint8) ->
    uint8`, the base VAE's encode-decode, scores the model and bicubic again on low-resolution clips so coded
    ("*_after_base_vae_*"), as the cascade hands them over."""
    truth, captions = sample_videos(num_videos, "test", seed=seed, num_frames=data_cfg.num_frames,
                                    canvas=data_cfg.canvas, frame_rate=rate, scale=scale)
    n, t, h, w, c = truth.shape
    low_res = np.rint(truth.reshape(n, t, h // scale, scale, w // scale, scale, c).mean(axis=(3, 5))).astype(np.uint8)
    model = _batched(upscale, low_res, captions, batch_size, "upscale", progress)
    scores = {"num_videos": num_videos}
    videos = {"model": model, "bicubic": bicubic_upsample(low_res, scale)}
    if low_res_round_trip is not None:
        coded = _batched(lambda clips, _: low_res_round_trip(clips), low_res, captions, batch_size, "code low-res",
                         progress)
        videos["model_after_base_vae"] = _batched(upscale, coded, captions, batch_size, "upscale", progress)
        videos["bicubic_after_base_vae"] = bicubic_upsample(coded, scale)
    if round_trip is not None:
        videos["vae_ceiling"] = _batched(lambda clips, _: round_trip(clips), truth, captions, batch_size,
                                         "reconstruct", progress)
    for name, video in videos.items():
        scores[f"{name}_psnr"] = float(np.mean(np.minimum(psnr(video, truth), 100.0)))
        scores[f"{name}_ssim"] = float(np.mean(ssim(video.reshape(-1, h, w, c), truth.reshape(-1, h, w, c))))
    return scores
