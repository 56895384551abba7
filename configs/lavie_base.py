"""LaVie's base model at its released size: 16 frames of 320x512, SD-1.4's UNet with temporal attention.

Command:  python scripts/convert_lavie.py --sd-dir PATH/stable-diffusion-v1-4 --base lavie_base.pt --out lavie
          python scripts/sample.py --config configs/lavie_base.py --checkpoint lavie --prompt "..." --out base.mp4
Sizes:    UNet 909,124,100 parameters (SD-1.4's 859,520,964 plus 49,603,136 in the 16 temporal attention
          layers), 2D VAE 83,653,863, CLIP ViT-L/14 text encoder 123,060,480; latents 16x40x64x4. Checked by
          abstract evaluation (no memory) in tests/test_lavie_configs.py.
Sampling: as LaVie's base/configs/sample.yaml: DDPM, 50 steps, guidance 7.5, linear betas 1e-4..0.02, eps,
          Stable Diffusion's "leading" timesteps with steps_offset 1.
"""

import ml_collections

from t2v_jax.convert.sd_vae import vae_config_from_diffusers_kl
from t2v_jax.diffusion.samplers import sampling_config
from t2v_jax.models import clip_text, lavie_unet
from t2v_jax.train.trainer import train_config

# Stable Diffusion 1.4's vae/config.json.
SD14_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, norm_num_groups=32,
                sample_size=512, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.system = "lavie"
    config.seed = 0
    config.data = ml_collections.ConfigDict(dict(
        name="video_folder", dir="data_cache", num_frames=16, canvas=320, train_size=0, test_size=0, seed=0,
        folder="", captions_file="captions.tsv", worker_count=4))
    config.data.width = 512
    config.vae = vae_config_from_diffusers_kl(SD14_VAE, tile_frames=16)
    config.text = ml_collections.ConfigDict(dict(kind="clip", max_length=77, caption_dropout=0.1,
                                                 encoder=clip_text.clip_vit_l14_config()))
    config.unet = lavie_unet.sd14_config()
    config.diffusion = ml_collections.ConfigDict(dict(
        schedule="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="eps",
        min_snr_gamma=None))
    config.sampling = sampling_config(method="ddpm", num_steps=50, guidance_scale=7.5, timestep_spacing="leading",
                                      steps_offset=1)
    train = dict(num_steps=100_000, batch_size=8, learning_rate=1e-4, warmup_steps=1000, final_lr_fraction=1.0,
                 grad_clip=1.0, adam_b2=0.999, ema_decay=0.9999, log_every=50, checkpoint_every=1000)
    config.train_vae = train_config(**train, kl_weight=1e-6)
    config.train_base = train_config(**train, images_per_video=0)
    config.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=-1, context=1, tensor=1), preset="fsdp"))
    config.eval = ml_collections.ConfigDict(dict(num_prompts=0, seed=0, stage="base"))
    return config
