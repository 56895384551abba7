"""Train every stage of a system from one config: VAE then DiT + text encoder (latent diffusion), or
video tokenizer then keyframe and interpolation decoders (FlashVideo).

  python scripts/train.py --config configs/quickstart.py --workdir runs/quickstart
  python scripts/train.py --config configs/flashvideo.py --workdir runs/flashvideo
  python scripts/train.py --config configs/quickstart.py --workdir runs/q --stages dit \
      --config.train_dit.num_steps=2000

An interrupted run resumes from its last checkpoint when started again with the same workdir.
"""

from absl import flags
from ml_collections import config_flags

from t2v_jax import cli
from t2v_jax.parallel.distributed import initialize as initialize_distributed
from t2v_jax.train.run import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and TensorBoard files go.")
_STAGES = flags.DEFINE_list("stages", None, "Stages to run, in order (default: all of the config's "
                            "system's, e.g. vae,dit or tokenizer,keyframes,interpolation).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    initialize_distributed(_CONFIG.value.get("distributed"))
    summary = train(_CONFIG.value, _WORKDIR.value, stages=_STAGES.value)
    for stage, metrics in summary.items():
        print(f"[{stage}] step {metrics['step']}: loss {metrics['loss']:.4f} in {metrics['seconds']:.0f} s")
    print(f"checkpoints and logs: {_WORKDIR.value}")


if __name__ == "__main__":
    cli.run(main)
