"""Judges a long-video system segment by segment on test-split stories (one caption per segment).

  python scripts/eval_long.py --config configs/malt_digits.py --checkpoint runs/malt --num 64 --segments 64

`--split train` judges held-out stories of the training glyphs instead (drawn with --seed, the training
stories with the config's data seed, which --seed must differ from): the validation set to choose sampling
settings on, so that the test stories stay unseen.

Prints the judged accuracy (digit, colour, direction, all three) at segments 1, 8, 32 and 64 (those within
--segments), identity consistency over the whole video (every segment's digit and colour against segment
1's, and against the captions') and the centroid jump at segment boundaries against a normal step; --out
writes every segment's scores as JSON.
"""

import json

from absl import flags
from ml_collections import config_flags

from t2v_jax import cli
from t2v_jax.config import validate
from t2v_jax.data.bouncing_digits import SPLITS
from t2v_jax.eval.long_video import generate_and_judge_long
from t2v_jax.pipelines.load import load_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A --workdir of scripts/train.py.")
_NUM = flags.DEFINE_integer("num", 64, "Test stories (videos).")
_SEGMENTS = flags.DEFINE_integer("segments", 64, "Segments per video.")
_SEED = flags.DEFINE_integer("seed", 1234, "Seed of the stories and of sampling.")
_SPLIT = flags.DEFINE_enum("split", "test", SPLITS, "Glyphs of the stories: test (unseen) or train (validation).")
_OUT = flags.DEFINE_string("out", None, "Also write the scores to this JSON file.")
flags.mark_flags_as_required(["config", "checkpoint"])

REPORTED_SEGMENTS = (1, 8, 32, 64)


def main(argv):
    del argv
    config = validate(_CONFIG.value)
    if _SEGMENTS.value < 1:
        raise ValueError(f"--segments={_SEGMENTS.value}: needs at least one segment")
    if _SPLIT.value == "train" and _SEED.value == config.data.seed:
        raise ValueError(f"--split=train with --seed={_SEED.value}, the config's data.seed: these are the "
                         "training stories; pass another --seed for held-out ones")
    pipeline = load_pipeline(config, _CHECKPOINT.value)
    if not hasattr(pipeline, "generate_long"):
        raise ValueError(f"system {config.system!r} does not generate one caption per segment (no generate_long)")
    scores, _ = generate_and_judge_long(lambda captions, seed: pipeline.generate_long(captions, seed=seed)[0],
                                        config.data, _NUM.value, _SEGMENTS.value, seed=_SEED.value,
                                        split=_SPLIT.value)
    per_segment = scores["segment_scores"]
    for segment in (s for s in REPORTED_SEGMENTS if s <= _SEGMENTS.value):
        print(f"segment {segment:>2}: all three {per_segment['all'][segment - 1]:.1%} | digit "
              f"{per_segment['digit'][segment - 1]:.1%} | colour {per_segment['colour'][segment - 1]:.1%} | "
              f"direction {per_segment['direction'][segment - 1]:.1%}")
    jump = scores["boundary_jump"]
    print(f"identity consistency over {_SEGMENTS.value} segments: {scores['identity_consistency']:.1%} against segment "
          f"1, {scores['identity_vs_captions']:.1%} against the captions"
          + ("" if jump is None else f" | boundary jump {jump['jump_px']:.2f} px vs step {jump['step_px']:.2f} px"))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(scores, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
