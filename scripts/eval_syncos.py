"""SynCoS against its baselines on Bouncing Digits stories: one trained base model, videos 4x and 8x its length.

  python scripts/eval_syncos.py --config configs/quickstart.py --checkpoint runs/quickstart --num 64 \
      --lengths 4,8 --out syncos.json

Each test-split story has S = length segments of the model's native length, one subject and a new direction at
every boundary (`bouncing_digits.sample_long_videos`); its structured prompt is the global "a {colour} {digit}"
with the local "moving {direction}" over each segment's latent frames. Every mode (--modes: independent chunks,
Gen-L-Video co-denoising, SynCoS; the model's own steps, guidance and spacing, `syncos_settings`) samples the same
stories from the same seeds, and is judged as `scripts/eval_long.py` judges MALT: per-range direction accuracy,
identity consistency of digit and colour over the whole video, and the centroid jump at range boundaries against
a normal step. Time is the sampling phase's wall clock (block_until_ready), summed over the batches after a
warm-up batch compiled it; encoding and decoding, the same for every mode, are left out. Prints a markdown table
(the rendered stories' scores on top: the judge's ceiling) and, with --out, writes everything as JSON.
"""

import json
import time

import jax
from absl import flags
from ml_collections import config_flags

from t2v_jax import cli
from t2v_jax.config import validate
from t2v_jax.data.bouncing_digits import sample_long_videos
from t2v_jax.eval.long_video import generate_and_judge_long, judge_long, syncos_generate_long
from t2v_jax.pipelines.load import load_pipeline
from t2v_jax.pipelines.syncos import MODES

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A --workdir of scripts/train.py.")
_NUM = flags.DEFINE_integer("num", 64, "Test stories (videos) per length.")
_LENGTHS = flags.DEFINE_list("lengths", ["4", "8"], "Video lengths in multiples of the model's own.")
_MODES = flags.DEFINE_list("modes", list(MODES), f"Sampler modes, of {MODES}.")
_SEED = flags.DEFINE_integer("seed", 1234, "Seed of the stories and of sampling.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Videos per sampling call (one compile per length and mode).")
_OUT = flags.DEFINE_string("out", None, "Also write the scores and times to this JSON file.")
flags.mark_flags_as_required(["config", "checkpoint"])


def timing_sampling_phase(pipeline, seconds: list):
    """Wraps `pipeline.run` so that every "sample_long" call appends its wall time (until ready) to `seconds`."""
    run = pipeline.run

    def timed_run(phase, *args, **kwargs):
        start = time.perf_counter()
        outputs = jax.block_until_ready(run(phase, *args, **kwargs))
        if phase == "sample_long":
            seconds.append(time.perf_counter() - start)
        return outputs

    pipeline.run = timed_run


def _mean(values) -> float:
    return sum(values) / len(values)


def table(results: dict) -> str:
    rows = ["| length | mode | direction (per range) | all three | identity vs segment 1 | identity vs captions "
            "| boundary jump / step | sampling s | s / co_denoise |", "|---" * 9 + "|"]
    for length, by_mode in results.items():
        for mode, scores in by_mode.items():
            jump = scores["boundary_jump"]
            seconds = scores.get("seconds")
            rows.append(" | ".join([
                f"| {length}", mode, f"{_mean(scores['segment_scores']['direction']):.1%}",
                f"{_mean(scores['segment_scores']['all']):.1%}", f"{scores['identity_consistency']:.1%}",
                f"{scores['identity_vs_captions']:.1%}", "-" if jump is None else f"{jump['ratio']:.2f}",
                "-" if seconds is None else f"{seconds:.2f}",
                "-" if scores.get("time_ratio") is None else f"{scores['time_ratio']:.2f}x"]) + " |")
    return "\n".join(rows)


def main(argv):
    del argv
    config = validate(_CONFIG.value)
    unknown = sorted(set(_MODES.value) - set(MODES))
    if unknown:
        raise ValueError(f"--modes: {unknown} are not sampler modes; choose from {MODES}")
    lengths = [int(length) for length in _LENGTHS.value]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--lengths={_LENGTHS.value}: each must be a positive multiple of the model's length")
    pipeline = load_pipeline(config, _CHECKPOINT.value)
    if not hasattr(pipeline, "sample_long_latents"):
        raise ValueError(f"system {config.system!r} has no latent denoiser for SynCoS (no sample_long_latents)")
    seconds = []
    timing_sampling_phase(pipeline, seconds)
    settings = pipeline.syncos_settings()
    segment_frames = config.data.num_frames
    batch_size = min(_BATCH.value, _NUM.value)
    results = {}
    for length in lengths:
        videos_nthwc, captions_ns = sample_long_videos(_NUM.value, "test", seed=_SEED.value, num_segments=length,
                                                       segment_frames=segment_frames, canvas=config.data.canvas)
        # The rendered stories judged as the models' videos are: what the judge can reach.
        by_mode = {"ground truth": judge_long(videos_nthwc, captions_ns, segment_frames)}
        for mode in _MODES.value:
            syncos = settings.copy_and_resolve_references()
            syncos.mode = mode

            def generate_long(captions_ns, seed, syncos=syncos):
                return syncos_generate_long(pipeline, captions_ns, seed=seed, syncos=syncos)

            generate_long(captions_ns[:batch_size], _SEED.value)  # warm-up: compiles this length and mode
            seconds.clear()
            scores, _ = generate_and_judge_long(generate_long, config.data, _NUM.value, length, seed=_SEED.value,
                                                batch_size=batch_size)
            by_mode[mode] = dict(scores, seconds=sum(seconds), batches=len(seconds))
        if "co_denoise" in by_mode:
            for mode in _MODES.value:
                by_mode[mode]["time_ratio"] = by_mode[mode]["seconds"] / by_mode["co_denoise"]["seconds"]
        results[f"{length}x"] = by_mode
    print(table(results))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(dict(system=config.system, checkpoint=_CHECKPOINT.value, num=_NUM.value, seed=_SEED.value,
                           batch_size=batch_size, syncos=settings.to_dict(), results=results), f, indent=2)


if __name__ == "__main__":
    cli.run(main)
