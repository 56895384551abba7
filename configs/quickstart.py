"""CPU quickstart: Bouncing Digits 16x16x8, tiny VAE + DiT + byte-level T5, judged on test glyphs.

Command:  python scripts/quickstart.py            (same as --config configs/quickstart.py)
Hardware: 2-core x86-64 CPU, 24 GiB, no accelerator, nothing else running.
Result:   2026-11-30: trained in 326 s (VAE 400 + DiT 1000 steps), 342 s in all with sampling and
          judging 64 test-set prompts: all three 1.6%, digit 10.9%, colour 42.2%, direction 20.3%,
          identity 23.4% (frames without a digit count as failures).
          The same config with --config.train_vae.num_steps=1500 --config.train_dit.num_steps=5000
          (54 min on that CPU): all three 3.5%, digit 12.1%, colour 100%, direction 28.5% on 256
          prompts. See BENCHMARKS.md.
"""

import ml_collections

from t2v_jax.data.loader import bouncing_digits_config
from t2v_jax.models import text_encoder, video_dit, video_vae
from t2v_jax.train.trainer import train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.system = "latent_diffusion"
    config.seed = 0

    config.data = bouncing_digits_config()

    config.vae = video_vae.default_config()
    config.vae.block_out_channels = (8, 16)
    config.vae.latent_channels = 8
    config.vae.temporal_downsample = (True, False)
    config.vae.spatial_downsample = (True, False)
    config.vae.norm_num_groups = 4
    config.vae.mid_attention = False
    config.vae.tile_frames = 8
    config.vae.tile_size = 16
    config.vae.tile_overlap_frames = 2
    config.vae.tile_overlap = (4, 4)

    config.text = ml_collections.ConfigDict()
    config.text.max_length = 32  # the longest caption, 'a magenta 0 moving right', is 24 bytes + eos
    config.text.caption_dropout = 0.1
    config.text.encoder = text_encoder.default_config()

    config.dit = video_dit.default_config()
    config.dit.in_channels = config.vae.latent_channels
    config.dit.out_channels = config.vae.latent_channels
    config.dit.caption_channels = config.text.encoder.width

    config.diffusion = ml_collections.ConfigDict(dict(
        schedule="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02,
        prediction_type="eps", min_snr_gamma=5.0))
    config.sampling = ml_collections.ConfigDict(dict(
        method="ddim", num_steps=50, guidance_scale=4.0, eta=0.0, negative_prompt=""))

    config.train_vae = train_config(num_steps=400, learning_rate=3e-3, kl_weight=1e-4)
    config.train_dit = train_config(num_steps=1000)

    config.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, context=1, tensor=1), preset="dp"))

    config.eval = ml_collections.ConfigDict(dict(num_prompts=64, seed=1234))
    return config
