"""Draws a PNG from what training and the benchmarks write (needs the [plot] extra: matplotlib).

  python scripts/plot.py --kind curves --inputs runs/malt --out loss.png              # loss per stage
  python scripts/plot.py --kind curves --inputs runs/malt,runs/malt_nomem --out loss.png
  python scripts/plot.py --kind long_video --inputs malt_bench.json --out long_video.png
  python scripts/plot.py --kind decoding --inputs flashvideo_bench.json --out decoding.png
  python scripts/plot.py --kind sharding --inputs sharding.json --out sharding.png
  python scripts/plot.py --kind segment_accuracy --inputs malt_long.json,syncos.json --out segments.png

curves reads every <stage>/metrics.jsonl under each --workdir of scripts/train.py; long_video and decoding
read the JSON of scripts/benchmark.py for configs/malt_digits.py and configs/flashvideo.py; sharding reads
the --out JSON of scripts/compare_sharding.py; segment_accuracy reads one or more --out JSONs of
scripts/eval_long.py and scripts/eval_syncos.py. The figures are drawn by t2v_jax/eval/plots.py.
"""

import json
import os

from absl import flags

from t2v_jax import cli
from t2v_jax.eval import plots

# The kinds that read one JSON file, and the function that draws each.
JSON_FIGURES = {"long_video": plots.long_video_figure, "decoding": plots.decoding_figure,
                "sharding": plots.sharding_figure}

_KIND = flags.DEFINE_enum("kind", None, ["curves", "segment_accuracy", *JSON_FIGURES], "Which figure to draw.")
_INPUTS = flags.DEFINE_list("inputs", None, "curves: one or more training workdirs; segment_accuracy: one or "
                            "more JSONs; the other kinds: one JSON.")
_OUT = flags.DEFINE_string("out", None, "Where the PNG goes.")
_TITLE = flags.DEFINE_string("title", None, "Replaces the figure's default title.")
flags.mark_flags_as_required(["kind", "inputs", "out"])


def main(argv):
    del argv
    if _KIND.value == "curves":
        figure = plots.curves_figure(plots.read_curves(_INPUTS.value))
    elif _KIND.value == "segment_accuracy":
        figure = plots.segment_accuracy_figure(plots.read_segment_scores(_INPUTS.value), ",".join(_INPUTS.value))
    else:
        if len(_INPUTS.value) != 1:
            raise ValueError(f"--kind {_KIND.value} reads one JSON file, got --inputs {','.join(_INPUTS.value)}")
        path = _INPUTS.value[0]
        with open(path) as f:
            figure = JSON_FIGURES[_KIND.value](json.load(f), path)
    if _TITLE.value:
        figure.suptitle(_TITLE.value)
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    figure.savefig(_OUT.value, dpi=150)
    print(f"-> {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
