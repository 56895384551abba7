"""Allegro at full size: VideoVAE (128-256-512-512) + 2.8B VideoDiT + T5 v1.1 XXL text encoder.

Command:  python scripts/benchmark.py --config configs/allegro.py --config.train_dit.batch_size=1
          (variants: --config configs/allegro.py:40x360p | 40x720p | 88x720p)
Hardware: one NVIDIA H100/H200 (bf16, cuDNN attention) or a TPU slice.
Result:   pending: needs a GPU (no accelerator was lent when this config was written);
          loading the public weights is issue 3 (convert/allegro.py).
"""

import ml_collections

from t2v_jax.models import text_encoder, video_dit, video_vae

# (frames, height, width) of the videos each Allegro variant generates.
RESOLUTIONS = {"88x720p": (88, 720, 1280), "40x720p": (40, 720, 1280), "40x360p": (40, 368, 640)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    resolution = arg or "88x720p"
    if resolution not in RESOLUTIONS:
        raise ValueError(f"configs/allegro.py:{resolution} is unknown; choose one of {sorted(RESOLUTIONS)}")
    frames, height, width = RESOLUTIONS[resolution]
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict(dict(
        name="video_folder", dir="data_cache", num_frames=frames, canvas=height, train_size=0,
        test_size=0, seed=0, folder="", captions_file="captions.tsv", worker_count=4))
    config.data.width = width
    config.vae = video_vae.allegro_config()
    config.text = ml_collections.ConfigDict(dict(max_length=512, caption_dropout=0.1,
                                                 encoder=text_encoder.t5_v1_1_xxl_config()))
    config.dit = video_dit.allegro_config(resolution)
    config.diffusion = ml_collections.ConfigDict(dict(
        schedule="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="eps",
        min_snr_gamma=None))
    config.sampling = ml_collections.ConfigDict(dict(
        method="euler_ancestral", num_steps=100, guidance_scale=7.5, eta=0.0, negative_prompt=""))
    train = dict(num_steps=100_000, batch_size=8, learning_rate=1e-4, warmup_steps=1000, final_lr_fraction=1.0,
                 grad_clip=1.0, adam_b2=0.999, weight_decay=0.0, ema_decay=0.9999, log_every=50,
                 checkpoint_every=1000, keep_checkpoints=3)
    config.train_vae = ml_collections.ConfigDict(dict(train, kl_weight=1e-6))
    config.train_dit = ml_collections.ConfigDict(train)
    config.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=-1, context=1, tensor=1), preset="fsdp"))
    config.eval = ml_collections.ConfigDict(dict(num_prompts=0, seed=0))
    return config
