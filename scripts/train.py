"""Train the VAE and then the DiT + text encoder from one config.

  python scripts/train.py --config configs/quickstart.py --workdir runs/quickstart
  python scripts/train.py --config configs/quickstart.py --workdir runs/q --stages dit \
      --config.train_dit.num_steps=2000

An interrupted run resumes from its last checkpoint when started again with the same workdir.
"""

from absl import app, flags
from ml_collections import config_flags

from t2v_jax.cli import quiet_library_logs
from t2v_jax.parallel.distributed import initialize as initialize_distributed
from t2v_jax.train.run import STAGES, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and TensorBoard files go.")
_STAGES = flags.DEFINE_list("stages", list(STAGES), f"Stages to run, in order: {list(STAGES)}.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    quiet_library_logs()
    initialize_distributed(_CONFIG.value.get("distributed"))
    summary = train(_CONFIG.value, _WORKDIR.value, stages=_STAGES.value)
    for stage, metrics in summary.items():
        print(f"[{stage}] step {metrics['step']}: loss {metrics['loss']:.4f} in {metrics['seconds']:.0f} s")
    print(f"checkpoints and logs: {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main)
