"""The pipeline a checkpoint folder and config describe, for the scripts: the config's system decides."""

import numpy as np

from t2v_jax import systems
from t2v_jax.pipelines.syncos import StructuredPrompt


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True):
    """A `scripts/train.py` workdir of the config's system, or a folder its converter wrote. Every pipeline
    offers `generate(prompts, seed=...) -> uint8 (N, T, H, W, 3)`."""
    return systems.get(config).load_pipeline(config, checkpoint, use_ema=use_ema)


def sampling_summary(config) -> str:
    """One line naming the sampling settings, for logs."""
    return systems.get(config).sampling_summary(config)


def generate_story(pipeline, segment_prompts, *, global_prompt: str = "", seed: int = 0) -> np.ndarray:
    """One uint8 video (T, H, W, 3) whose consecutive segments follow `segment_prompts`, each the base
    model's native length. A pipeline that carries a state across segments (MALT's `generate_long`) gets
    each segment's whole caption, global + " " + local; one that samples structured prompts (SynCoS through
    `generate_multi_prompt`) gets the global prompt for the whole video and one local prompt per segment."""
    segment_prompts = list(segment_prompts)
    if hasattr(pipeline, "generate_long"):
        captions = [f"{global_prompt} {prompt}".strip() for prompt in segment_prompts]
        return pipeline.generate_long([captions], seed=seed)[0][0]
    if not hasattr(pipeline, "generate_multi_prompt"):
        raise ValueError(f"{type(pipeline).__name__} samples no multi-prompt video: a story needs MALT or a "
                         "latent pipeline (SynCoS)")
    segment_latent_frames = pipeline.latent_shape[0]
    story = StructuredPrompt.from_segments(global_prompt, segment_prompts, segment_latent_frames)
    return pipeline.generate_multi_prompt([story], len(segment_prompts) * segment_latent_frames, seed=seed)[0]
