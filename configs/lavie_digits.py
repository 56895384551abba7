"""LaVie on CPU: Bouncing Digits clips of 8 frames x 16x16 -> x4 frames (29) -> x2 size (32x32).

Command:  python scripts/train.py --config configs/lavie_digits.py --workdir runs/lavie
          python scripts/eval.py --config configs/lavie_digits.py --checkpoint runs/lavie --num 256 --seed 1234
          python scripts/eval_cascade.py --config configs/lavie_digits.py --checkpoint runs/lavie --num 128
          python scripts/eval_syncos.py --config configs/lavie_digits.py --checkpoint runs/lavie --num 64 --lengths 4,8
Hardware: 2-core x86-64 CPU, 24 GiB, no accelerator; 2026-12-01, shared with other jobs (wall clock).
Result:   trained in about 83 min (VAE 145 s, base 689 s, interpolation 561 s, VSR VAE 1085 s, VSR 2619 s);
          retrained 2026-12-02 from scratch, every stage before VSR reproduced its figures exactly.
          Base model alone (--config.eval.stage=base), 8 x 16x16: all three 40.2%, digit 78.5%, colour 100%,
          direction 53.1%, identity 77.3% (21.9% without the still images, equal steps).
          Whole cascade, 29 x 32x32 (23 min to generate and judge): all three 48.4%, digit 93.8%, colour 100%,
          direction 53.1%, identity 82.8% (the issue's bars: all three within 5 points of the base's 40.2%,
          identity at least its 77.3%). With 3000 VSR steps: 46.5%, digit 88.7%, identity 75.7%; VSR trained
          on box-downsampled frames instead of frames through the base VAE
          (--config.vsr.low_res_through_base_vae=False, 3000 steps): 43.8%, digit 85.2%, identity 75.9%.
          Interpolation PSNR between keyframes 25.24 dB (repeat 24.30, VAE ceiling 26.67); super-resolution
          from low-res frames through the base VAE, as the cascade gives them, PSNR 24.67 dB / SSIM 0.891
          against bicubic 23.62 dB / 0.772; from box-downsampled frames 26.08 dB / 0.897 against 27.73 / 0.960
          (30.68 dB / 0.921 trained on box-downsampled frames; VSR VAE ceiling 38.47 dB / 0.945), all with the
          3000-step VSR; the 6000-step VSR on 32 clips (--num 32): 25.58 dB / 0.899 against bicubic 23.45 / 0.770.
          SynCoS over the base model, 64 stories of 8x its length: direction per range 52.5% (co-denoising
          51.8%), identity 75.0% (71.3%), x1.35 co-denoising's time (9 min 40 s for 4x and 8x, three modes).
          See BENCHMARKS.md.
"""

import ml_collections
from ml_collections import config_dict

from t2v_jax.data.loader import bouncing_digits_config
from t2v_jax.diffusion.samplers import sampling_config
from t2v_jax.models import lavie_unet, text_encoder, video_vae
from t2v_jax.train.trainer import train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.system = "lavie"
    config.seed = 0
    config.data = bouncing_digits_config()

    # The quickstart's per-frame VAE: 16x16 frames -> 4x4 latents of 8 channels, each frame coded alone,
    # as LaVie codes frames with SD's image VAE. A still image is then one latent frame.
    config.vae = video_vae.default_config()
    config.vae.temporal_layers = False
    config.vae.block_out_channels = (16, 32, 64)
    config.vae.latent_channels = 8
    config.vae.temporal_downsample = (False, False, False)
    config.vae.spatial_downsample = (True, True, False)
    config.vae.norm_num_groups = 4
    config.vae.mid_attention = False
    config.vae.tile_frames = 8
    config.vae.tile_size = 16
    config.vae.tile_overlap_frames = 2
    config.vae.tile_overlap = (4, 4)

    config.text = ml_collections.ConfigDict()
    config.text.max_length = 32
    config.text.caption_dropout = 0.1
    config.text.encoder = text_encoder.default_config()
    config.text.encoder.num_layers = 1

    # SD-1.x's shape at CPU size: two levels of 32 channels (4x4 then 2x2 latents), transformer blocks in
    # both and in the mid block; 2 heads of 16 channels, RoPE over all of each head (rotary_dim >= 16).
    # A gradient step takes 0.19 s with the two images per video (0.13 s without).
    config.unet = lavie_unet.default_config()
    config.unet.in_channels = config.unet.out_channels = config.vae.latent_channels
    config.unet.cross_attention_dim = config.text.encoder.width
    config.unet.block_out_channels = (32, 32)
    config.unet.num_heads = 2

    # The quickstart's schedule (v on cosine with every SNR divided by 9: docs/latent_diffusion_study.md,
    # section 4) rather than LaVie's linear-beta eps, which a CPU budget does not train to the prompts.
    config.diffusion = ml_collections.ConfigDict(dict(
        schedule="cosine", num_train_steps=1000, beta_start=1e-4, beta_end=0.02,
        prediction_type="v", min_snr_gamma=config_dict.placeholder(float), snr_shift=3.0))
    config.sampling = sampling_config(method="ddim", num_steps=25, guidance_scale=4.0)

    config.train_vae = train_config(num_steps=600, batch_size=64, learning_rate=3e-3, kl_weight=1e-4,
                                    frames_per_video=1)
    # Two still frames of other videos per video (LaVie appends images after the video frames).
    config.train_base = train_config(num_steps=2500, learning_rate=2e-3, checkpoint_every=1000, cache_latents=True,
                                     images_per_video=2)

    # x4 frames: the same clips rendered at 4x the frame rate (0.25 px per frame) are the ground truth; the
    # model sees the noisy 29 latent frames next to the 8 keyframe latents repeated as LaVie repeats them.
    config.interpolation = ml_collections.ConfigDict()
    config.interpolation.frame_rate = 4
    config.interpolation.num_frames = 29
    config.interpolation.unet = lavie_unet.interpolation_config(config.unet)
    # No guidance: the keyframes fix what the frames show, and guidance 4 (LaVie's) pushes frames off them
    # (identity consistency 71.9% vs 75.5% at guidance 1, 64 prompts; the base model's own: 75.8%).
    config.interpolation.sampling = sampling_config(method="ddim", num_steps=25, guidance_scale=1.0)
    config.train_interpolation = train_config(num_steps=1500, batch_size=8, learning_rate=2e-3, checkpoint_every=500,
                                              cache_latents=True)

    # x2 size: the same clips rendered at 4x the frame rate and 2x the canvas (0.5 px per frame). A second
    # per-frame VAE codes 32x32 frames into 16x16 latents, the size of the low-resolution frames they are
    # concatenated with (as the x4 upscaler's VAE does at x4). The low-resolution input is noise-augmented
    # at a random level below 350 in training and at level 50 when sampling; chunks of 8 frames.
    config.vsr = ml_collections.ConfigDict()
    config.vsr.scale = 2
    config.vsr.canvas = 32
    config.vsr.num_frames = config.interpolation.num_frames
    config.vsr.chunk_frames = 8
    config.vsr.noise_level = 50
    config.vsr.max_noise_level = 350
    # The low-resolution training frames go through the base VAE, as the cascade's frames do: the cascade's
    # digit accuracy 88.7% against 85.2% with box-downsampled frames, all three 46.5% against 43.8%.
    config.vsr.low_res_through_base_vae = True
    config.vsr.low_res_schedule = ml_collections.ConfigDict(dict(
        schedule="scaled_linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02))
    config.vsr.train_size = 2000
    config.vsr.vae = video_vae.default_config()
    config.vsr.vae.update(temporal_layers=False, block_out_channels=(16, 32), latent_channels=4,
                          temporal_downsample=(False, False), spatial_downsample=(True, False), norm_num_groups=4,
                          mid_attention=False, tile_frames=8, tile_size=32, tile_overlap_frames=2, tile_overlap=(8, 8))
    config.vsr.unet = lavie_unet.small_vsr_config(latent_channels=4, block_out_channels=(32, 32), num_heads=2,
                                                  cross_attention_dim=config.text.encoder.width, norm_num_groups=8)
    # No guidance either: the low-resolution frames fix the content (PSNR 28.4 dB at guidance 1 vs 25.3 dB at
    # guidance 4, 32 test clips).
    config.vsr.sampling = sampling_config(method="ddim", num_steps=25, guidance_scale=1.0)
    config.train_vsr_vae = train_config(num_steps=1200, batch_size=64, learning_rate=3e-3, kl_weight=1e-4,
                                        frames_per_video=1)
    # 6000 steps: the upscaled frames read as one digit (identity consistency 82.8% against 75.7% at 3000
    # steps and the base's own 77.3%; 256 prompts); at 3000 they flip between look-alikes chunk by chunk.
    config.train_vsr = train_config(num_steps=6000, batch_size=4, learning_rate=2e-3, checkpoint_every=500)

    config.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, context=1, tensor=1), preset="dp"))
    # scripts/eval.py judges the whole cascade; --config.eval.stage=base judges the base model alone.
    config.eval = ml_collections.ConfigDict(dict(num_prompts=256, seed=1234, stage="cascade"))
    return config
