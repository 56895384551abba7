"""Figures from the files training and the benchmarks already write (needs the [plot] extra).

One function per figure takes the parsed file and returns a matplotlib Figure, so a test can read back
what was drawn; `scripts/plot.py` reads the files and saves PNGs. Figures are drawn on a Figure with an
Agg canvas rather than through pyplot: no display is needed and no global figure list grows.
Each function checks the keys it reads and raises ValueError naming the file and the missing key, since
the usual mistake is handing it another kind's JSON.
"""

import json
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, StrMethodFormatter

from t2v_jax.train.trainer import read_metrics

MIB = 2**20

# What writes each JSON, for the error when a file lacks a key.
LONG_VIDEO_SOURCE = "the JSON of `scripts/benchmark.py --config configs/malt_digits.py`"
DECODING_SOURCE = "the JSON of `scripts/benchmark.py --config configs/flashvideo.py`"
SHARDING_SOURCE = "the JSON of `scripts/compare_sharding.py --out`"
SEGMENTS_SOURCE = "the --out JSON of `scripts/eval_long.py` or `scripts/eval_syncos.py`"

# The decoding benchmark's mixers (t2v_jax/benchmarks/decoding.py) and their legend entries.
DECODERS = {"retention": "RetNet, recurrent form", "attention": "Transformer, KV cache"}

# The programs scripts/compare_sharding.py compiles (its --steps), as they appear in its JSON.
SHARDED_PROGRAMS = {"train_step": "DiT train step", "sampling_step": "guided DDIM sampling step"}

# The judge's per-segment accuracies (`eval/long_video.py`'s segment_scores), one panel each.
SEGMENT_ATTRIBUTES = {"all": "all three", "digit": "digit", "colour": "colour", "direction": "direction"}


def _field(record, key: str, source: str, expected: str):
    """record[key], or a ValueError naming the file and the key."""
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{source}: missing key {key!r}; expected {expected}")
    return record[key]


def _new_figure(width: float, height: float, panels: tuple[int, int] = (1, 1)):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(*panels, squeeze=False)


def _log_y(ax):
    """Log y ticked in plain numbers (0.1, 1, 10), which read as MiB or ms where 10^-1 does not; minor
    ticks are labelled (plainly) only where the data span about a decade or less."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))

    def minor_label(value, _):
        low, high = ax.get_ylim()
        return f"{value:g}" if high <= 10 * low else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))


def _log2_axis(ax, values, label: str):
    """Doubling lengths on a log2 axis, ticked at the measured values only."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, labels=[f"{value:,}" for value in values])
    ax.set_xticks([], minor=True)
    ax.set_xlabel(label)


def read_curves(workdirs: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    """{label: (steps, losses)} of every stage under each `scripts/train.py --workdir`.

    Labels are the stage names, or "workdir/stage" when several workdirs are compared. A resumed run
    logs again the steps after its last checkpoint, so the last line of a step wins.
    """
    curves = {}
    for workdir in workdirs:
        stages = sorted(name for name in os.listdir(workdir)
                        if os.path.isfile(os.path.join(workdir, name, "metrics.jsonl")))
        if not stages:
            raise ValueError(f"{workdir}: no <stage>/metrics.jsonl; expected a --workdir of scripts/train.py")
        for stage in stages:
            path = os.path.join(workdir, stage, "metrics.jsonl")
            loss_by_step = {}
            for line, row in enumerate(read_metrics(os.path.join(workdir, stage)), start=1):
                where, expected = f"{path} line {line}", "one JSON object per logged step"
                loss_by_step[_field(row, "step", where, expected)] = _field(row, "loss", where, expected)
            label = stage if len(workdirs) == 1 else f"{os.path.normpath(workdir)}/{stage}"
            steps = sorted(loss_by_step)
            curves[label] = (steps, [loss_by_step[step] for step in steps])
    return curves


def curves_figure(curves: dict[str, tuple[list[int], list[float]]]) -> Figure:
    """Loss against step, one line per stage; log y when every loss is positive (a loss falls by
    orders of magnitude early on and then creeps)."""
    figure, axes = _new_figure(8, 4.5)
    ax = axes[0, 0]
    for label, (steps, losses) in curves.items():
        ax.plot(steps, losses, label=label)
    if all(loss > 0 for _, losses in curves.values() for loss in losses):
        _log_y(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    figure.suptitle("Training loss")
    return figure


def long_video_figure(bench: dict, source: str) -> Figure:
    """MALT's claim in one picture: against the number of segments, temporaries stay flat (only the
    returned video grows) and so does the time per segment."""
    rows = _field(bench, "long_video", source, LONG_VIDEO_SOURCE)
    expected = f"{LONG_VIDEO_SOURCE}: segments, temporaries_bytes, output_bytes and seconds_per_segment in every row"
    segments, temporaries, outputs, seconds = (
        [_field(row, key, source, expected) for row in rows]
        for key in ("segments", "temporaries_bytes", "output_bytes", "seconds_per_segment"))
    figure, axes = _new_figure(11, 4.2, (1, 2))
    memory, time = axes[0]
    memory.plot(segments, [b / MIB for b in temporaries], "o-", label="temporaries")
    memory.plot(segments, [b / MIB for b in outputs], "s-", label="returned video")
    _log_y(memory)
    memory.set_ylabel("device memory (MiB)")
    memory.set_title("Memory of the generation program")
    memory.legend()
    time.plot(segments, [1e3 * s for s in seconds], "o-")
    time.set_ylim(bottom=0)
    time.set_ylabel("time per segment (ms)")
    time.set_title("Time per segment")
    for ax in (memory, time):
        _log2_axis(ax, segments, "segments")
        ax.grid(True, alpha=0.3)
    figure.suptitle(f"Any-length generation ({bench.get('device', 'unknown device')})")
    return figure


def decoding_figure(bench: dict, source: str) -> Figure:
    """Per-token time and decoding memory against length: the recurrent step stays flat while the
    KV-cache step grows with the cache it reads."""
    rows = _field(_field(bench, "decoding", source, DECODING_SOURCE), "rows", source, DECODING_SOURCE)
    lengths = [_field(row, "length", source, f"{DECODING_SOURCE}: 'length' in every row") for row in rows]
    figure, axes = _new_figure(11, 4.2, (1, 2))
    time, memory = axes[0]
    for decoder, label in DECODERS.items():
        results = [_field(row, decoder, source, f"{DECODING_SOURCE}: {decoder!r} in every row") for row in rows]
        expected = f"{DECODING_SOURCE}: 'ms_per_token' and 'decode_memory_bytes' for {decoder!r}"
        time.plot(lengths, [_field(r, "ms_per_token", source, expected) for r in results], "o-", label=label)
        memory.plot(lengths, [_field(r, "decode_memory_bytes", source, expected) / MIB for r in results], "o-",
                    label=label)
    time.set_ylabel("time per token (ms)")
    time.set_title("Decoding time")
    memory.set_ylabel("decoding program memory (MiB)")
    memory.set_title("Decoding memory (params, state or cache, temporaries)")
    for ax in (time, memory):
        _log_y(ax)
        _log2_axis(ax, lengths, "total sequence length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    figure.suptitle(f"Autoregressive decoding ({bench.get('device', 'unknown device')})")
    return figure


def _preset_label(row: dict, source: str) -> str:
    """The preset's name over its mesh's axes of more than one device, one a line: "fsdp_tp\nfsdp=2\ntensor=4"."""
    mesh = _field(row, "mesh", source, SHARDING_SOURCE)
    return _field(row, "preset", source, SHARDING_SOURCE) + "\n" + "\n".join(
        f"{axis}={size}" for axis, size in mesh.items() if size > 1)


def sharding_figure(compare: dict, source: str) -> Figure:
    """Per-device memory and collective bytes of each preset that compiled, one row of bars per program;
    a preset the config does not fit (an "error" row) has no bar."""
    rows = [row for row in _field(compare, "presets", source, SHARDING_SOURCE) if "error" not in row]
    if not rows:
        raise ValueError(f"{source}: no preset compiled (every row of 'presets' holds an error)")
    programs = [name for name in SHARDED_PROGRAMS if name in rows[0]]
    if not programs:
        raise ValueError(f"{source}: missing key {' or '.join(map(repr, SHARDED_PROGRAMS))} in the presets; "
                         f"expected {SHARDING_SOURCE}")
    labels = [_preset_label(row, source) for row in rows]
    figure, axes = _new_figure(max(10, 3 * len(rows)), 3.8 * len(programs), (len(programs), 2))
    for (memory, collective), program in zip(axes, programs):
        parts = [_field(row, program, source, f"{SHARDING_SOURCE}: {program!r} in every preset") for row in rows]
        expected = f"{SHARDING_SOURCE}: 'memory' and 'collectives' for {program!r}"
        memory_mib = [_field(_field(p, "memory", source, expected), "total", source, expected) / MIB for p in parts]
        collective_mib = [sum(entry["bytes"] for entry in _field(p, "collectives", source, expected).values()) / MIB
                          for p in parts]
        for ax, values, title, ylabel in ((memory, memory_mib, "memory", "memory per device (MiB)"),
                                          (collective, collective_mib, "collectives",
                                           "collective results per device (MiB)")):
            ax.bar_label(ax.bar(labels, values), fmt="{:,.1f}")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{SHARDED_PROGRAMS[program]}: {title}")
            ax.grid(True, axis="y", alpha=0.3)
    figure.suptitle(f"Sharding presets on {compare.get('num_devices', '?')} x {compare.get('device', 'device')}")
    return figure


def read_segment_scores(paths: list[str]) -> dict[str, dict]:
    """{label: long-video scores} from the --out JSONs of `scripts/eval_long.py` (one run, labelled by the
    file's name) and `scripts/eval_syncos.py` (one run per length and mode, "syncos: co_denoise, 4x")."""
    runs = {}
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        name = os.path.splitext(os.path.basename(path))[0]
        if isinstance(record, dict) and "results" in record:
            for length, by_mode in record["results"].items():
                runs.update({f"{name}: {mode}, {length}": scores for mode, scores in by_mode.items()})
        else:
            runs[name] = record
    return runs


def segment_accuracy_figure(runs: dict[str, dict], source: str) -> Figure:
    """Accuracy of each segment against its own caption, against the segment's place in the video, one line
    per run and one panel per attribute: where a long video drifts (MALT's late segments) or stops following
    its local prompts (SynCoS's directions) shows as a line that falls."""
    if not runs:
        raise ValueError(f"{source}: no runs to draw; expected {SEGMENTS_SOURCE}")
    figure, axes = _new_figure(14, 3.8, (1, len(SEGMENT_ATTRIBUTES)))
    for label, scores in runs.items():
        expected = f"{SEGMENTS_SOURCE} (run {label!r})"
        accuracies = _field(scores, "segment_scores", source, expected)
        for ax, attribute in zip(axes[0], SEGMENT_ATTRIBUTES):
            accuracy_s = _field(accuracies, attribute, source, expected)
            ax.plot(range(1, len(accuracy_s) + 1), [100 * value for value in accuracy_s], "o-", label=label)
    for ax, title in zip(axes[0], SEGMENT_ATTRIBUTES.values()):
        ax.set_title(title)
        ax.set_xlabel("segment")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-3, 103)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("accuracy against the segment's caption (%)")
    axes[0, 0].legend()
    figure.suptitle("Per-segment accuracy over the video")
    return figure
