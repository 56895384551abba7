"""LaVie's whole released cascade: base (16 frames of 320x512) -> x4 temporal interpolation (61 frames) ->
x4 video super-resolution (61 frames of 1280x2048).

Command:  python scripts/convert_lavie.py --sd-dir PATH/stable-diffusion-v1-4 --base lavie_base.pt \
              --interpolation lavie_interpolation.pt --upscaler-dir PATH/stable-diffusion-x4-upscaler \
              --vsr lavie_vsr.pt --out lavie
          python scripts/sample.py --config configs/lavie_vsr.py --checkpoint lavie --prompt "..." --out lavie.mp4
Sizes:    super-resolution UNet 691,036,420 parameters (Stable Diffusion's x4 upscaler, 473,398,020, plus LaVie's
          temporal modules, convolutions and attention, 217,638,400) on 8 x 320x512 latents + the RGB frames;
          the upscaler's 2D VAE 55,325,927 (x4, scaling factor 0.08333); its OpenCLIP ViT-H/14 text encoder
          340,387,840 (23 layers, exact GELU). The base and interpolation models' as configs/lavie_base.py and
          configs/lavie_interpolation.py. Checked by abstract evaluation (no memory) in tests/test_lavie_configs.py.
Sampling: super-resolution as LaVie's vsr/sample.py: in independent 8-frame chunks, DDIM 50 steps, guidance 5,
          negative prompt "blur, worst quality", the low-resolution frames noised to level 50 (of 350; DDPM
          scaled-linear betas 1e-4..0.02, the upscaler's low_res_scheduler). The upscaler's DDIM scheduler with
          `beta_schedule` forced to "linear" (1e-4..0.02, as the base's), v-prediction, "leading" timesteps with
          steps_offset 1, set_alpha_to_one False (`vsr.diffusion`, `vsr.sampling`).
"""

import ml_collections

from t2v_jax.config import sibling_config
from t2v_jax.convert.sd_vae import vae_config_from_diffusers_kl
from t2v_jax.diffusion.samplers import sampling_config
from t2v_jax.models import clip_text, lavie_unet
from t2v_jax.train.trainer import train_config


# The x4 upscaler's vae/config.json.
X4_UPSCALER_VAE = dict(block_out_channels=[128, 256, 512], layers_per_block=2, latent_channels=4, norm_num_groups=32,
                       sample_size=256, scaling_factor=0.08333, down_block_types=["DownEncoderBlock2D"] * 3,
                       up_block_types=["UpDecoderBlock2D"] * 3)


def get_config(arg: str | None = None):
    del arg
    config = sibling_config(__file__, "lavie_interpolation")
    chunk_frames = 8
    config.vsr = ml_collections.ConfigDict(dict(
        scale=4, canvas=4 * config.data.canvas, num_frames=config.interpolation.num_frames, chunk_frames=chunk_frames,
        noise_level=50, max_noise_level=350, train_size=0, low_res_through_base_vae=False))
    config.vsr.low_res_schedule = ml_collections.ConfigDict(dict(
        schedule="scaled_linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02))
    config.vsr.vae = vae_config_from_diffusers_kl(X4_UPSCALER_VAE, tile_frames=chunk_frames)
    config.vsr.text = ml_collections.ConfigDict(dict(config.text.to_dict(),
                                                     encoder=clip_text.open_clip_vit_h14_config()))
    config.vsr.unet = lavie_unet.vsr_config()
    # The upscaler's scheduler with LaVie's linear betas (the base's schedule), but v-prediction, unlike the base.
    config.vsr.diffusion = ml_collections.ConfigDict(dict(config.diffusion.to_dict(), prediction_type="v"))
    config.vsr.sampling = sampling_config(method="ddim", num_steps=50, guidance_scale=5.0, timestep_spacing="leading",
                                          steps_offset=1, set_alpha_to_one=False,
                                          negative_prompt="blur, worst quality")
    config.train_vsr_vae = train_config(**config.train_vae.to_dict())
    base_train = config.train_base.to_dict()
    del base_train["images_per_video"]  # joint image-video training is the base model's
    config.train_vsr = train_config(**base_train)
    return config
