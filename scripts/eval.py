"""Judges Bouncing Digits videos against their prompts: digit, colour, direction, all three, identity.

  python scripts/eval.py --ground_truth --num 300                 # rendered test-split videos (the ceiling)
  python scripts/eval.py --videos samples.npz                     # arrays videos (N,T,H,W,3) and prompts (N,)
  python scripts/eval.py --videos samples/ [--prompts list.tsv]   # .mp4/.gif files; filename<TAB>prompt lines
  python scripts/eval.py --config configs/quickstart.py --checkpoint runs/quickstart --num 256
                                                                  # a trained model on test-set prompts
  python scripts/eval.py --config configs/quickstart.py --checkpoint runs/quickstart --num 256 --reconstruct
                                                                  # its VAE's round trip: the ceiling

npz videos may be uint8 or float in [-1, 1]. Files in a folder are resized to --canvas; the prompts file
defaults to captions.tsv in that folder (the video_folder format). Prints one readable line, then JSON.
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from t2v_jax import cli, systems
from t2v_jax.parallel.distributed import initialize as initialize_distributed
from t2v_jax.config import validate
from t2v_jax.data import bouncing_digits
from t2v_jax.data.video_folder import read_captions
from t2v_jax.eval.evaluate import format_scores, generate_and_judge, reconstruct_and_judge, test_prompts
from t2v_jax.eval.judge import Judge
from t2v_jax.io.video import read_video, to_uint8
from t2v_jax.pipelines.load import load_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "With --checkpoint: the config it was trained with.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A --workdir of scripts/train.py to generate and judge.")
_VIDEOS = flags.DEFINE_string("videos", None, "A .npz file or a folder of .mp4/.gif videos.")
_PROMPTS = flags.DEFINE_string("prompts", None, "filename<TAB>prompt file for a folder (DIR/captions.tsv).")
_RECONSTRUCT = flags.DEFINE_bool("reconstruct", False, "With --checkpoint: judge the first stage's round trip "
                                  "(VAE or tokenizer) of rendered test videos: the system's ceiling.")
_GROUND_TRUTH = flags.DEFINE_bool("ground_truth", False, "Judge rendered ground-truth videos instead.")
_SPLIT = flags.DEFINE_enum("split", "test", bouncing_digits.SPLITS, "Glyph split for --ground_truth.")
_NUM = flags.DEFINE_integer("num", 300, "Number of ground-truth videos.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the ground-truth videos.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 16, "Frames of the ground-truth videos.")
_CANVAS = flags.DEFINE_integer("canvas", 32, "Canvas size the judge is fitted for.")


def _load_npz(path):
    with np.load(path) as arrays:
        videos = arrays["videos"]
        prompts = [str(p) for p in arrays["prompts"]]
    return (videos if videos.dtype == np.uint8 else to_uint8(videos)), prompts


def _load_folder(folder, prompts_path):
    entries = read_captions(prompts_path or os.path.join(folder, "captions.tsv"))
    size = (_CANVAS.value, _CANVAS.value)
    videos = np.stack([read_video(os.path.join(folder, filename), size=size) for filename, _ in entries])
    return videos, [prompt for _, prompt in entries]


def main(argv):
    del argv
    initialize_distributed(_CONFIG.value.get("distributed") if _CONFIG.value else None)
    if sum([_GROUND_TRUTH.value, bool(_VIDEOS.value), bool(_CHECKPOINT.value)]) != 1:
        raise app.UsageError("pass exactly one of --videos, --ground_truth or --checkpoint (with --config)")
    if _CHECKPOINT.value and _RECONSTRUCT.value:
        config = validate(_CONFIG.value)
        system = systems.get(config)
        if system.load_autoencoder is None:
            raise ValueError(f"system {system.name!r} has no first-stage autoencoder to reconstruct with")
        scores = reconstruct_and_judge(system.load_autoencoder(config, _CHECKPOINT.value), config.data, _NUM.value,
                                       _SEED.value)
        print(format_scores(scores))
        print(json.dumps(scores))
        return
    if _CHECKPOINT.value:
        config = validate(_CONFIG.value)
        pipeline = load_pipeline(config, _CHECKPOINT.value)
        prompts = test_prompts(config.data, _NUM.value, _SEED.value)
        scores, _ = generate_and_judge(pipeline, prompts, seed=_SEED.value)
        print(format_scores(scores))
        print(json.dumps(scores))
        return
    if _GROUND_TRUTH.value:
        videos, prompts = bouncing_digits.sample_videos(
            _NUM.value, _SPLIT.value, seed=_SEED.value, num_frames=_NUM_FRAMES.value, canvas=_CANVAS.value
        )
    elif _VIDEOS.value.endswith(".npz"):
        videos, prompts = _load_npz(_VIDEOS.value)
    else:
        videos, prompts = _load_folder(_VIDEOS.value, _PROMPTS.value)
    scores = Judge.fit(canvas=videos.shape[2]).score(videos, prompts)
    print(format_scores(scores))
    print(json.dumps(scores))


if __name__ == "__main__":
    cli.run(main)
