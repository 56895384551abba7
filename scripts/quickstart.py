"""Quickstart: build Bouncing Digits, train the VAE and the DiT, sample test prompts, judge them.

  python scripts/quickstart.py                      # about 10 minutes on a 2-core CPU
  python scripts/quickstart.py --workdir runs/q2 --config.train_dit.num_steps=4000

Writes samples.mp4 and samples.gif (a grid of test-set prompts) and scores.json to --workdir.
"""

import json
import os
import time

from absl import flags
from ml_collections import config_flags

from t2v_jax import cli
from t2v_jax.eval.evaluate import format_scores, generate_and_judge, test_prompts
from t2v_jax.io.video import video_grid, write_video
from t2v_jax.pipelines.load import load_pipeline
from t2v_jax.train.run import train

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "quickstart.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Where checkpoints, logs and videos go.")
_GRID = flags.DEFINE_integer("grid", 8, "How many of the judged videos go into the written grid.")


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    start = time.perf_counter()
    train(config, workdir)
    train_seconds = time.perf_counter() - start

    pipeline = load_pipeline(config, workdir)
    prompts = test_prompts(config.data, config.eval.num_prompts, config.eval.seed)
    scores, videos = generate_and_judge(pipeline, prompts, seed=config.eval.seed)
    grid = video_grid(videos[:_GRID.value], ncols=4)
    paths = [os.path.join(workdir, "samples.mp4"), os.path.join(workdir, "samples.gif")]
    for path in paths:
        write_video(path, grid, fps=8, scale=4)
    with open(os.path.join(workdir, "scores.json"), "w") as f:
        json.dump(dict(scores, prompts=prompts[:_GRID.value]), f, indent=2)

    total = time.perf_counter() - start
    print(f"\ntrained in {train_seconds:.0f} s, total {total:.0f} s")
    print("prompts in the grid (row by row): " + "; ".join(prompts[:_GRID.value]))
    print(format_scores(scores))
    print("videos: " + ", ".join(os.path.abspath(p) for p in paths))


if __name__ == "__main__":
    cli.run(main)
