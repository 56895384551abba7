"""The pipeline a checkpoint folder and config describe, for the scripts: the config's system decides."""

from t2v_jax import systems


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True):
    """A `scripts/train.py` workdir of the config's system, or a folder its converter wrote. Every pipeline
    offers `generate(prompts, seed=...) -> uint8 (N, T, H, W, 3)`."""
    return systems.get(config).load_pipeline(config, checkpoint, use_ema=use_ema)


def sampling_summary(config) -> str:
    """One line naming the sampling settings, for logs."""
    return systems.get(config).sampling_summary(config)
