"""How well each stage of a cascade does its own job, against the ground truth the dataset renders.

Bouncing Digits renders the same clip at any frame rate and size, so a temporal interpolation model is
measured on test clips whose keyframes it is given: PSNR of its frames against the clip rendered at the
higher frame rate, next to the baselines of repeating the last keyframe and of blending the two around
each frame linearly, in the same run.
"""

import jax
import numpy as np
from tqdm.auto import tqdm

from t2v_jax.data.bouncing_digits import sample_videos
from t2v_jax.eval.metrics import psnr


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


def interpolation_psnr(interpolate, data_cfg, rate: int, num_videos: int, *, seed: int = 0, batch_size: int = 32,
                       progress: bool = True) -> dict:
    """PSNR (dB, uint8) on the frames between keyframes, for the model and the baselines.

    `interpolate(keyframes_nkhwc uint8, captions) -> uint8 videos` is the model under test (encode the
    keyframes, interpolate their latents, decode). Test clips come from the test split at `rate` times
    data_cfg's frame rate; the keyframes are every rate-th frame."""
    truth, captions = sample_videos(num_videos, "test", seed=seed, num_frames=data_cfg.num_frames,
                                    canvas=data_cfg.canvas, frame_rate=rate)
    keyframes = truth[:, ::rate]
    padded = -num_videos % batch_size
    keyframes_padded = np.concatenate([keyframes, keyframes[:padded]])
    captions_padded = list(captions) + list(captions[:padded])
    outputs = []
    for start in tqdm(range(0, len(keyframes_padded), batch_size), desc="interpolate", disable=not progress):
        outputs.append(np.asarray(jax.device_get(interpolate(keyframes_padded[start:start + batch_size],
                                                             captions_padded[start:start + batch_size]))))
    model = np.concatenate(outputs)[:num_videos]
    between = np.arange(truth.shape[1]) % rate != 0
    scores = {name: _mean_psnr(video, truth, between)
              for name, video in {"model": model, **keyframe_baselines(keyframes, rate)}.items()}
    scores["model_keyframes"] = _mean_psnr(model, truth, ~between)
    scores["num_videos"] = num_videos
    return scores
