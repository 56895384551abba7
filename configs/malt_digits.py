"""MALT on CPU: long Bouncing Digits videos, segments of 8 frames x 16x16, one caption per segment, the digit
keeping its glyph and colour while its direction changes at every boundary.

Command:  python scripts/train.py --config configs/malt_digits.py --workdir runs/malt
Hardware: 2-core x86-64 CPU, 24 GiB, no accelerator.
Result:   pending: the per-segment table (segments 1, 8, 32, 64; MALT, without memory noise, without memory)
          is issue 13's next step.
"""

import ml_collections

from t2v_jax.train.trainer import train_config


def _quickstart():
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(os.path.dirname(__file__), "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    # The quickstart's VAE, text encoder, DiT, schedule and sampler: MALT builds on that latent model.
    config = _quickstart()
    config.system = "malt"
    # 8 memory tokens per layer (the segment has 16 tokens: 4 x 2 x 2... see dit.patch_thw).
    config.dit.memory_tokens = 8
    config.malt = ml_collections.ConfigDict(dict(
        train_segments=4,          # segments unrolled per training video
        truncation=2,              # the memory's gradient reaches back this many segments
        memory_noise_max=300,      # memory written from latents noised at a level drawn below this in training
        memory_noise_level=100,    # ... and at this level from generated segments
        train_size=20000,          # long videos rendered on the fly
        num_segments=8,            # segments per prompt in `generate` (eval, sample)
    ))
    config.train_malt = train_config(num_steps=3000, batch_size=8, learning_rate=2e-3, checkpoint_every=1000)
    del config["train_dit"]
    return config
