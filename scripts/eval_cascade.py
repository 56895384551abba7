"""Each stage of a trained LaVie cascade against the ground truth of its own job, with baselines.

  python scripts/eval_cascade.py --config configs/lavie_digits.py --checkpoint runs/lavie_digits --num 64

Interpolation: the test clips' keyframes (every frame_rate-th frame of the clip rendered at the higher
frame rate) are encoded, interpolated and decoded; PSNR on the frames between keyframes against the
rendered ones, next to repeating the last keyframe and blending the two around each frame.
Super-resolution (when the config has it): the test clips at the interpolated frame rate, box-downsampled,
are upscaled; PSNR and SSIM against the clips rendered at the larger size, next to bicubic; then the same
from those low-resolution clips coded and decoded by the base VAE, as the cascade hands frames over. The prompt
accuracy of the base model and of the whole cascade comes from scripts/eval.py
(--config.eval.stage=base for the base model alone).
"""

import json

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from t2v_jax import cli
from t2v_jax.config import validate
from t2v_jax.eval.cascade import interpolation_psnr, super_resolution_scores
from t2v_jax.models.video_vae import VideoVAE, vae_encode
from t2v_jax.pipelines.load import load_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A --workdir of scripts/train.py.")
_NUM = flags.DEFINE_integer("num", 64, "Test clips.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the test clips and of sampling.")
_OUT = flags.DEFINE_string("out", None, "Also write the scores to this JSON file.")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv):
    del argv
    config = validate(_CONFIG.value)
    if "interpolation" not in config:
        raise ValueError("the config has no interpolation stage to evaluate (config.interpolation)")
    pipeline = load_pipeline(config, _CHECKPOINT.value)
    vae = VideoVAE(config.vae)
    encode = jax.jit(lambda video_bthwc: vae_encode(vae, pipeline.vae_params, video_bthwc, tiled=False))

    def round_trip(videos_nthwc):
        return pipeline.decode(encode(videos_nthwc.astype(np.float32) / 127.5 - 1.0))

    def interpolate(keyframes_nkhwc, captions):
        latents = encode(keyframes_nkhwc.astype(np.float32) / 127.5 - 1.0)
        return pipeline.decode(pipeline.interpolate(captions, latents, seed=_SEED.value))

    scores = {"interpolation": interpolation_psnr(interpolate, config.data, config.interpolation.frame_rate, _NUM.value,
                                                  round_trip=round_trip, seed=_SEED.value)}
    s = scores["interpolation"]
    print(f"interpolation x{config.interpolation.frame_rate}, PSNR of the frames between keyframes "
          f"({s['num_videos']} test clips): model {s['model']:.2f} dB | repeat {s['repeat']:.2f} dB | "
          f"blend {s['blend']:.2f} dB | the VAE's round trip of those frames (ceiling) {s['vae_ceiling']:.2f} dB | "
          f"model on the keyframes {s['model_keyframes']:.2f} dB")
    if "vsr" in config:
        def upscale(low_res_nthwc, captions):
            return pipeline.upscale(captions, low_res_nthwc.astype(np.float32) / 127.5 - 1.0, seed=_SEED.value)

        vsr_vae = VideoVAE(config.vsr.vae)
        encode_vsr = jax.jit(lambda video_bthwc: vae_encode(vsr_vae, pipeline.vsr["vae_params"], video_bthwc,
                                                            tiled=False))

        def vsr_round_trip(videos_nthwc):
            return pipeline.decode_vsr(encode_vsr(videos_nthwc.astype(np.float32) / 127.5 - 1.0))

        scores["vsr"] = super_resolution_scores(upscale, config.data, config.interpolation.frame_rate,
                                                config.vsr.scale, _NUM.value, round_trip=vsr_round_trip,
                                                low_res_round_trip=round_trip, seed=_SEED.value)
        v = scores["vsr"]
        print(f"super-resolution x{config.vsr.scale} ({v['num_videos']} test clips): model PSNR {v['model_psnr']:.2f} dB, "
              f"SSIM {v['model_ssim']:.3f} | bicubic PSNR {v['bicubic_psnr']:.2f} dB, SSIM {v['bicubic_ssim']:.3f} | "
              f"the VSR VAE's round trip (ceiling) PSNR {v['vae_ceiling_psnr']:.2f} dB, SSIM {v['vae_ceiling_ssim']:.3f}")
        print(f"  from low-res frames coded by the base VAE, as in the cascade: model PSNR "
              f"{v['model_after_base_vae_psnr']:.2f} dB, SSIM {v['model_after_base_vae_ssim']:.3f} | bicubic PSNR "
              f"{v['bicubic_after_base_vae_psnr']:.2f} dB, SSIM {v['bicubic_after_base_vae_ssim']:.3f}")
    print(json.dumps(scores))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(scores, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
