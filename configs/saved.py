"""The config a training run saved: sample, judge or resume a `scripts/train.py` workdir with exactly the
config it was trained with, command-line flags included, without repeating them.

Command:  python scripts/sample.py --config configs/saved.py:runs/malt --checkpoint runs/malt \
              --prompt "a red 3 moving left" --out malt.gif
          python scripts/eval_long.py --config configs/saved.py:runs/nomem --checkpoint runs/nomem
Result:   the config of WORKDIR/config.json (written by every scripts/train.py call); later flags still
          override it (--config.sampling.guidance_scale=4).
"""

from t2v_jax.config import config_from_saved


def get_config(workdir: str | None = None):
    if workdir is None:
        raise ValueError("configs/saved.py needs the run's workdir: --config configs/saved.py:WORKDIR")
    return config_from_saved(workdir)
