"""The smallest end-to-end config: seconds per stage on a CPU, for tests of the whole system."""

import os

from t2v_jax.config import config_from_file

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(name: str = "quickstart"):
    return config_from_file(os.path.join(CONFIG_DIR, f"{name}.py"))


def tiny_config(data_dir: str):
    config = load_config()
    config.data.dir = data_dir
    config.data.train_size = 64
    config.data.test_size = 16
    config.vae.block_out_channels = (4, 8, 8)
    config.vae.norm_num_groups = 2
    config.text.max_length = 32
    config.text.encoder.update(width=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32)
    config.dit.update(num_layers=1, width=12, num_heads=2, caption_channels=16)
    for train_cfg in (config.train_vae, config.train_dit):
        train_cfg.update(num_steps=6, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3)
    config.sampling.num_steps = 3
    config.eval.num_prompts = 4
    return config


def tiny_flashvideo_config(data_dir: str):
    """configs/flashvideo.py shrunk to seconds per stage: 9 frames, keyframes 0/4/8, 2 tokens a side."""
    config = load_config("flashvideo")
    config.data.dir = data_dir
    config.data.train_size = 64
    config.data.test_size = 16
    config.tokenizer.update(channels=(4, 8, 8), norm_num_groups=2, num_res_blocks=0, levels=(3, 3))
    for model in (config.keyframes_model, config.interpolation_model):
        model.update(width=16, num_layers=1, num_heads=2, chunk_size=8)
    for train_cfg in (config.train_tokenizer, config.train_keyframes, config.train_interpolation):
        train_cfg.update(num_steps=4, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=2)
    config.eval.num_prompts = 4
    return config


def tiny_lavie_config(data_dir: str):
    """configs/lavie_digits.py shrunk to seconds per stage: the VAE, base, x4 interpolation, the VSR VAE and
    the x2 super-resolution models."""
    config = load_config("lavie_digits")
    config.data.dir = data_dir
    config.data.train_size = 32
    config.data.test_size = 8
    config.vae.block_out_channels = (4, 8, 8)
    config.vae.norm_num_groups = 2
    config.text.encoder.update(width=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32)
    for unet in (config.unet, config.interpolation.unet, config.vsr.unet):
        unet.update(block_out_channels=(8, 8), norm_num_groups=4, num_heads=2, cross_attention_dim=16)
    config.vsr.unet.temporal_norm_num_groups = 4
    config.vsr.train_size = 16
    config.vsr.vae.update(block_out_channels=(4, 8), norm_num_groups=2)
    for train_cfg in (config.train_vae, config.train_base, config.train_interpolation, config.train_vsr_vae,
                      config.train_vsr):
        train_cfg.update(num_steps=3, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3)
    for sampling in (config.sampling, config.interpolation.sampling, config.vsr.sampling):
        sampling.num_steps = 2
    config.eval.num_prompts = 4
    return config


def tiny_malt_config(data_dir: str):
    """configs/malt_digits.py on tiny_config's VAE, text encoder and DiT: 2 memory tokens per layer, training
    videos of 3 segments."""
    config = load_config("malt_digits")
    tiny = tiny_config(data_dir)
    for section in ("data", "vae", "text", "sampling", "train_vae", "eval"):
        config[section] = tiny[section]
    config.dit = tiny.dit
    config.dit.memory_tokens = 2
    config.malt.update(train_segments=3, truncation=2, train_size=16, num_segments=2)
    config.train_malt.update(num_steps=4, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=2,
                             cache_latents=False)
    return config
