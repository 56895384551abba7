"""Prompt accuracy of a trained system on Bouncing Digits test-set prompts (unseen glyphs)."""

import jax
import numpy as np
from tqdm.auto import tqdm

from t2v_jax.data.bouncing_digits import sample_videos
from t2v_jax.eval.judge import Judge
from t2v_jax.eval.metrics import psnr
from t2v_jax.io.video import to_uint8


def test_prompts(data_cfg, num_prompts: int, seed: int) -> list[str]:
    """Captions of rendered test-split videos: the prompt distribution the model never trained on."""
    _, captions = sample_videos(num_prompts, "test", seed=seed, num_frames=data_cfg.num_frames,
                                canvas=data_cfg.canvas)
    return captions


def generate_and_judge(pipeline, prompts, *, batch_size: int = 32, seed: int = 0, progress: bool = True):
    """Generates one video per prompt in fixed-size batches (one compile) and scores them with a judge
    fitted to the videos' size (a cascade's last stage may enlarge them)."""
    padded = list(prompts) + [prompts[0]] * (-len(prompts) % batch_size)
    videos = []
    for start in tqdm(range(0, len(padded), batch_size), desc="sample", disable=not progress):
        videos.append(pipeline.generate(padded[start:start + batch_size], seed=seed + start))
    videos_nthwc = np.concatenate(videos)[:len(prompts)]
    return Judge.fit(canvas=videos_nthwc.shape[2]).score(videos_nthwc, prompts), videos_nthwc


def reconstruct_and_judge(round_trip, data_cfg, num_videos: int, seed: int, *, batch_size: int = 32,
                          progress: bool = True):
    """Scores of a first stage's round trip (`System.load_autoencoder`) on rendered test-split videos,
    plus their mean PSNR (dB, uint8): the ceiling no model on top of that stage can pass."""
    videos_nthwc, captions = sample_videos(num_videos, "test", seed=seed, num_frames=data_cfg.num_frames,
                                           canvas=data_cfg.canvas)
    padded = np.concatenate([videos_nthwc, videos_nthwc[: -num_videos % batch_size]])
    outputs = []
    for start in tqdm(range(0, len(padded), batch_size), desc="reconstruct", disable=not progress):
        batch = padded[start:start + batch_size].astype(np.float32) / 127.5 - 1.0
        outputs.append(to_uint8(jax.device_get(round_trip(batch))))
    reconstructed = np.concatenate(outputs)[:num_videos]
    scores = Judge.fit(canvas=data_cfg.canvas).score(reconstructed, captions)
    finite = np.minimum(psnr(reconstructed, videos_nthwc), 100.0)
    return dict(scores, psnr=float(np.mean(finite)))


def format_scores(scores: dict) -> str:
    """The judge's scores in one line, then the digit accuracy of each class when the scores have it."""
    line = (f"prompt accuracy (all three) {scores['all']:.1%} | digit {scores['digit']:.1%} | "
            f"colour {scores['colour']:.1%} | direction {scores['direction']:.1%} | "
            f"identity consistency {scores['identity_consistency']:.1%} | {scores['num_videos']} videos")
    if "psnr" in scores:
        line += f" | PSNR {scores['psnr']:.1f} dB"
    if "digit_by_class" not in scores:
        return line
    by_class = " ".join(f"{digit}:{'-' if accuracy is None else f'{accuracy:.0%}'}"
                        for digit, accuracy in enumerate(scores["digit_by_class"]))
    return f"{line}\ndigit accuracy by prompted digit: {by_class}"
