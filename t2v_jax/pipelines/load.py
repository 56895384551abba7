"""Picks the pipeline a checkpoint folder and config describe, for the scripts."""

import os

from t2v_jax.config import system


def load_pipeline(config, checkpoint: str):
    """A `scripts/convert_allegro.py` folder (it has a manifest), or a `scripts/train.py` workdir of the
    config's system. Every pipeline offers `generate(prompts, seed=...) -> uint8 (N, T, H, W, 3)`."""
    from t2v_jax.convert.allegro import MANIFEST

    if os.path.isfile(os.path.join(checkpoint, MANIFEST)):
        from t2v_jax.pipelines.allegro import AllegroPipeline

        return AllegroPipeline.from_converted(config, checkpoint)
    if system(config) == "flashvideo":
        from t2v_jax.pipelines.flashvideo import FlashVideoPipeline

        return FlashVideoPipeline.from_workdir(config, checkpoint)
    from t2v_jax.pipelines.text_to_video import TextToVideoPipeline

    return TextToVideoPipeline.from_workdir(config, checkpoint)


def sampling_summary(config) -> str:
    """One line naming the sampling settings, for logs."""
    s = config.sampling
    if system(config) == "flashvideo":
        return (f"keyframes every {config.flashvideo.keyframe_stride} frames, temperature {s.temperature}, "
                f"top-k {s.top_k}, guidance {s.guidance_scale}/{s.interpolation_guidance_scale}, "
                f"{s.prefill_mode} prefill + recurrent decoding")
    return f"{s.method}, {s.num_steps} steps, guidance {s.guidance_scale}"
