"""FlashVideo on Bouncing Digits 16x16x9: FSQ video tokenizer, then a RetNet over its tokens.

Tokenizer stage (config.vq, config.train_vq): 16x16 frames -> 4x4 = 16 tokens per frame, 1000 codes.
Command:  a throwaway script: stage = VQStage(config); fit(stage, config.train_vq,
          iter(make_loader(config.data, "train", batch_size=32, seed=0)), workdir, mesh_cfg=config.mesh,
          seed=0); then the EMA params encode + decode sample_videos(256, "test", seed=1234, num_frames=9,
          canvas=16) (test glyphs, unseen handwriting) and Judge.fit(canvas=16).score()s both.
Hardware: 2-core AMD EPYC x86-64 CPU, no accelerator, shared with other jobs (load ~2).
Result:   2026-11-21: 2600 steps in 282 s (compile and data included; 5-10 steps/s). On the 256 test videos:
          PSNR 29.4 dB (mean over frames; 28.8 dB from the pooled MSE), 972 of the 1000 codes used.
          Judge         digit  colour  direction  all    identity consistency
          ground truth  98.4%  100%    100%       98.4%  0.998
          reconstructed 96.5%  100%    100%       96.5%  0.954
          (an earlier run of the same setting: 29.4 dB, digit 95.3%). Shorter or other settings:
          1600 steps 27.9 dB / digit 93.4%; + train_vq.l1_weight=0.2: 27.6 dB / 93.4%; channels
          (16, 32, 128): 27.6 dB / 93.4%. 4x4 tokens keep the digit, so 8x8 (x2, 64 tokens) was not needed.
"""

import ml_collections

from t2v_jax.data.loader import bouncing_digits_config
from t2v_jax.models import retnet_video, vq
from t2v_jax.train.trainer import train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = bouncing_digits_config(num_frames=9)

    # Tokenizer: 16x16 frames -> x4 -> 4x4 = 16 tokens per frame, 1000 FSQ codes (header: its reconstructions).
    config.vq = vq.default_config()
    config.vq.channels = (16, 32, 64)
    config.vq.num_res_blocks = 1
    config.vq.norm_num_groups = 8
    config.vq.levels = (8, 5, 5, 5)

    # frames_per_video=2: 32 videos x 2 random frames per step; frames are tokenized independently and
    # neighbouring frames differ by a 1 px shift, so more videos beat more frames of each for the same compute.
    config.train_vq = train_config(num_steps=2600, batch_size=32, learning_rate=2e-3, log_every=100,
                                   checkpoint_every=500, frames_per_video=2, l1_weight=0.0)

    config.system = "flashvideo"
    config.text = ml_collections.ConfigDict(dict(max_length=32, caption_dropout=0.1))
    # 9 frames: keyframes 0, 4, 8 come from the keyframe decoder, frames 1-3 and 5-7 from the
    # interpolation decoder. Sequences: caption 32 + 3 x 17 = 83 and 32 + 5 x 17 = 117 tokens.
    config.flashvideo = ml_collections.ConfigDict(dict(keyframe_stride=4))
    config.keyframes_model = retnet_video.default_config()
    config.interpolation_model = retnet_video.default_config()
    config.train_keyframes = train_config(num_steps=3500, batch_size=32, learning_rate=1e-3)
    config.train_interpolation = train_config(num_steps=2000, batch_size=32, learning_rate=1e-3)
    config.sampling = ml_collections.ConfigDict(dict(
        temperature=0.7, top_k=0, guidance_scale=3.0, interpolation_guidance_scale=1.0,
        prefill_mode="chunkwise", fps=8))

    config.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, context=1, tensor=1), preset="dp"))

    config.eval = ml_collections.ConfigDict(dict(num_prompts=64, seed=1234))
    return config
