"""Sample videos from a trained system or converted official weights; several prompts make one grid.

  python scripts/sample.py --config configs/quickstart.py --checkpoint runs/quickstart \
      --prompt "a red 3 moving left" --prompt "a cyan 7 moving up" --out samples.mp4
  python scripts/sample.py --config configs/allegro_88x720p.py --checkpoint allegro_88x720p \
      --prompt "a seaside harbor at sunrise" --out a.mp4
  python scripts/sample.py --config configs/flashvideo.py --checkpoint runs/flashvideo \
      --prompt "a green 4 moving down" --out flash.gif
  python scripts/sample.py --config configs/lavie_vsr.py --checkpoint lavie \
      --prompt "a teddy bear walking on the street" --out lavie.mp4
  python scripts/sample.py --config configs/malt_digits.py --checkpoint runs/malt --story \
      --global_prompt "a red 3" --prompt "moving left" --prompt "moving up" --prompt "moving right" --out story.gif

--story makes one video whose consecutive segments follow the --prompt flags: MALT's segments, each
captioned "--global_prompt --prompt", or, for the latent pipelines (the latent system, Allegro, LaVie's
base), SynCoS over --global_prompt with one local prompt per segment of the base model's length.

--checkpoint is a --workdir of scripts/train.py, or a folder written by scripts/convert_allegro.py or
scripts/convert_lavie.py.
The extension of --out picks the format (.mp4 or .gif).
"""

import os
import time

from absl import app, flags
from ml_collections import config_flags

from t2v_jax import cli
from t2v_jax.parallel.distributed import initialize as initialize_distributed
from t2v_jax.config import validate
from t2v_jax.io.video import video_grid, write_video
from t2v_jax.pipelines.load import generate_story, load_pipeline, sampling_summary

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A scripts/train.py --workdir or a scripts/convert_*.py "
                                  "--out folder.")
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "Prompt; repeat the flag for a grid (with --story: for "
                                     "the next segment).")
_STORY = flags.DEFINE_bool("story", False, "One video whose segments follow the --prompt flags in order.")
_GLOBAL_PROMPT = flags.DEFINE_string("global_prompt", "", "With --story: what stays over the whole video.")
_SCALE = flags.DEFINE_integer("scale", 1, "Each pixel of the written video a block this wide (small videos).")
_OUT = flags.DEFINE_string("out", "samples.mp4", "Output video, .mp4 or .gif.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the initial noise.")
_FPS = flags.DEFINE_integer("fps", None, "Frames per second of the written video (default: config.sampling.fps, "
                            "else 8).")
flags.mark_flags_as_required(["config", "checkpoint", "prompt"])


def main(argv):
    del argv
    initialize_distributed(_CONFIG.value.get("distributed"))
    if os.path.splitext(_OUT.value)[1].lower() not in (".mp4", ".gif"):
        raise app.UsageError(f"--out must end in .mp4 or .gif, got {_OUT.value!r}")
    if _SCALE.value < 1:
        raise app.UsageError(f"--scale must be 1 or more, got {_SCALE.value}")
    config = validate(_CONFIG.value)
    pipeline = load_pipeline(config, _CHECKPOINT.value)
    start = time.perf_counter()
    if _STORY.value:
        videos = generate_story(pipeline, _PROMPTS.value, global_prompt=_GLOBAL_PROMPT.value, seed=_SEED.value)[None]
    else:
        videos = pipeline.generate(_PROMPTS.value, seed=_SEED.value)
    seconds = time.perf_counter() - start
    fps = _FPS.value or config.sampling.get("fps", 8)
    write_video(_OUT.value, video_grid(videos) if len(videos) > 1 else videos[0], fps=fps, scale=_SCALE.value)
    print(f"{len(videos)} video(s) of {videos.shape[1]} frames at {videos.shape[2]}x{videos.shape[3]} "
          f"in {seconds:.1f} s ({sampling_summary(config)}) -> {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
