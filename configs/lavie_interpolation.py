"""LaVie's base model followed by its x4 temporal interpolation model, at the released size: 16 -> 61 frames
of 320x512.

Command:  python scripts/convert_lavie.py --sd-dir PATH/stable-diffusion-v1-4 --base lavie_base.pt \
              --interpolation lavie_interpolation.pt --out lavie
          python scripts/sample.py --config configs/lavie_interpolation.py --checkpoint lavie --prompt "..." \
              --out lavie_61.mp4
Sizes:    interpolation UNet 909,131,524 parameters (in_channels 8: noisy latent + repeated keyframe latents,
          +11,520 in conv_in; no temporal position bias, -4,096), on 61x40x64 latents; the base model's as
          configs/lavie_base.py. Checked by abstract evaluation (no memory) in tests/test_lavie_configs.py.
Sampling: interpolation as LaVie's interpolation/configs/sample.yaml: DDIM, 50 steps, guidance 4.
"""

from t2v_jax.config import sibling_config
from t2v_jax.diffusion.samplers import sampling_config
from t2v_jax.models import lavie_unet
from t2v_jax.train.trainer import train_config


def get_config(arg: str | None = None):
    del arg
    config = sibling_config(__file__, "lavie_base")
    config.interpolation = dict(frame_rate=4, num_frames=61)
    config.interpolation.unet = lavie_unet.interpolation_config(config.unet)
    config.interpolation.sampling = sampling_config(method="ddim", num_steps=50, guidance_scale=4.0,
                                                    timestep_spacing="leading", steps_offset=1)
    config.train_interpolation = train_config(**{**config.train_base.to_dict(), "images_per_video": 0})
    config.eval.stage = "cascade"
    return config
