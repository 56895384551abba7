"""scripts/plot.py and t2v_jax/eval/plots.py: each figure draws the numbers of its file, and a file of
another kind is refused naming the key it lacks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from t2v_jax.eval import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20

LONG_VIDEO = {"device": "cpu", "long_video": [
    dict(segments=4, temporaries_bytes=4 * MIB, output_bytes=MIB // 8, seconds_per_segment=0.08),
    dict(segments=16, temporaries_bytes=4 * MIB + 1024, output_bytes=MIB // 2, seconds_per_segment=0.09),
    dict(segments=64, temporaries_bytes=4 * MIB + 2048, output_bytes=2 * MIB, seconds_per_segment=0.07)]}

DECODING = {"device": "cpu", "decoding": {"decode_steps": 128, "rows": [
    dict(length=256, retention=dict(ms_per_token=0.14, decode_memory_bytes=5 * MIB),
         attention=dict(ms_per_token=0.29, decode_memory_bytes=6 * MIB), speedup_retention_vs_kv_cache=2.1),
    dict(length=1024, retention=dict(ms_per_token=0.13, decode_memory_bytes=5 * MIB),
         attention=dict(ms_per_token=0.83, decode_memory_bytes=13 * MIB), speedup_retention_vs_kv_cache=6.4)]}}


def _program(total_bytes, all_reduce_bytes, all_gather_bytes):
    return dict(memory=dict(params=1, total=total_bytes),
                collectives={"all-reduce": dict(count=2, bytes=all_reduce_bytes),
                             "all-gather": dict(count=1, bytes=all_gather_bytes)})


SHARDING = {"device": "cpu", "num_devices": 8, "presets": [
    dict(preset="dp", mesh=dict(data=8, fsdp=1, context=1, tensor=1),
         train_step=_program(4 * MIB, MIB, 0), sampling_step=_program(MIB, 0, 0)),
    dict(preset="tp", mesh=dict(data=1, fsdp=1, context=1, tensor=8), error="does not divide the heads"),
    dict(preset="fsdp", mesh=dict(data=2, fsdp=4, context=1, tensor=1),
         train_step=_program(2 * MIB, MIB // 2, 3 * MIB), sampling_step=_program(MIB // 4, 0, MIB))]}


def _segment_scores(all_s, digit_s, colour_s, direction_s, **extra):
    """A run as `eval/long_video.py` scores it (the fields the figure does not read included)."""
    return dict(segment_scores=dict(all=all_s, digit=digit_s, colour=colour_s, direction=direction_s),
                identity_consistency=0.5, identity_vs_captions=0.5, boundary_jump=None, **extra)


MALT_SCORES = _segment_scores([0.5, 0.25, 0.75], [0.5, 0.5, 0.75], [1.0, 0.75, 1.0], [1.0, 0.5, 1.0],
                              num_videos=4, num_segments=3)
SYNCOS_SCORES = _segment_scores([0.125, 0.0], [0.25, 0.5], [0.875, 1.0], [0.375, 0.0], num_videos=8,
                                num_segments=2)


def _write_metrics(stage_dir, rows):
    os.makedirs(stage_dir)
    with open(os.path.join(stage_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_curves_draw_each_stage_s_losses_and_a_resumed_step_once(tmp_path):
    workdir = str(tmp_path / "run")
    _write_metrics(os.path.join(workdir, "vae"), [dict(step=10, loss=0.5, kl=2.0), dict(step=20, loss=0.25)])
    # Resumed from step 10: step 20 was logged again, the later line is the run that continued.
    _write_metrics(os.path.join(workdir, "dit"), [dict(step=10, loss=1.0), dict(step=20, loss=0.9),
                                                  dict(step=20, loss=0.8), dict(step=30, loss=0.7)])
    os.makedirs(os.path.join(workdir, "checkpoints"))
    ax = plots.curves_figure(plots.read_curves([workdir])).axes[0]
    assert _lines(ax) == {"dit": ([10, 20, 30], [1.0, 0.8, 0.7]), "vae": ([10, 20], [0.5, 0.25])}
    assert ax.get_yscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "training loss")
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["dit", "vae"]


def test_curves_of_several_workdirs_are_labelled_by_workdir_and_stage(tmp_path):
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    _write_metrics(os.path.join(first, "malt"), [dict(step=1, loss=0.5)])
    _write_metrics(os.path.join(second, "malt"), [dict(step=1, loss=-0.5)])  # a negative loss: linear y
    ax = plots.curves_figure(plots.read_curves([first, second])).axes[0]
    assert _lines(ax) == {f"{first}/malt": ([1], [0.5]), f"{second}/malt": ([1], [-0.5])}
    assert ax.get_yscale() == "linear"


def test_curves_name_the_file_and_line_missing_a_loss(tmp_path):
    _write_metrics(str(tmp_path / "vae"), [dict(step=1, loss=0.5), dict(step=2, reconstruction=0.4)])
    path = os.path.join(tmp_path, "vae", "metrics.jsonl")
    with pytest.raises(ValueError, match=f"{path} line 2: missing key 'loss'"):
        plots.read_curves([str(tmp_path)])
    with pytest.raises(ValueError, match="no <stage>/metrics.jsonl"):
        plots.read_curves([str(tmp_path / "vae")])  # a stage's folder, not the workdir above it


def test_long_video_draws_memory_in_mib_and_time_in_ms_on_a_log2_axis():
    memory, time = plots.long_video_figure(LONG_VIDEO, "bench.json").axes
    rows = LONG_VIDEO["long_video"]
    segments = [row["segments"] for row in rows]
    assert _lines(memory) == {
        "temporaries": (segments, [row["temporaries_bytes"] / MIB for row in rows]),
        "returned video": (segments, [row["output_bytes"] / MIB for row in rows])}
    (ms,) = [ydata for _, ydata in _lines(time).values()]
    np.testing.assert_allclose(ms, [80, 90, 70])
    assert memory.get_ylabel() == "device memory (MiB)" and time.get_ylabel() == "time per segment (ms)"
    for ax in (memory, time):
        assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
        assert ax.get_xlabel() == "segments" and list(ax.get_xticks()) == segments


def test_decoding_draws_both_decoders_time_and_memory_against_length():
    time, memory = plots.decoding_figure(DECODING, "bench.json").axes
    assert _lines(time) == {"RetNet, recurrent form": ([256, 1024], [0.14, 0.13]),
                            "Transformer, KV cache": ([256, 1024], [0.29, 0.83])}
    assert _lines(memory) == {"RetNet, recurrent form": ([256, 1024], [5.0, 5.0]),
                              "Transformer, KV cache": ([256, 1024], [6.0, 13.0])}
    assert time.get_ylabel() == "time per token (ms)"
    assert memory.get_ylabel() == "decoding program memory (MiB)"
    assert time.get_xlabel() == memory.get_xlabel() == "total sequence length (tokens)"


def test_sharding_draws_one_bar_per_compiled_preset_and_program():
    figure = plots.sharding_figure(SHARDING, "compare.json")
    train_memory, train_collectives, sampling_memory, sampling_collectives = figure.axes

    def bars(ax):
        ticks = [label.get_text() for label in ax.get_xticklabels()]
        return dict(zip(ticks, [bar.get_height() for bar in ax.containers[0]]))

    # The "tp" preset failed to fit its mesh: no bar.
    assert bars(train_memory) == {"dp\ndata=8": 4.0, "fsdp\ndata=2\nfsdp=4": 2.0}
    assert bars(train_collectives) == {"dp\ndata=8": 1.0, "fsdp\ndata=2\nfsdp=4": 3.5}
    assert bars(sampling_memory) == {"dp\ndata=8": 1.0, "fsdp\ndata=2\nfsdp=4": 0.25}
    assert bars(sampling_collectives) == {"dp\ndata=8": 0.0, "fsdp\ndata=2\nfsdp=4": 1.0}
    assert train_memory.get_title() == "DiT train step: memory"
    assert sampling_collectives.get_ylabel() == "collective results per device (MiB)"
    assert figure.get_suptitle() == "Sharding presets on 8 x cpu"


def test_segment_accuracy_draws_each_run_s_accuracy_in_percent_against_the_segment_one_panel_per_attribute():
    runs = {"MALT": MALT_SCORES, "SynCoS": SYNCOS_SCORES}
    figure = plots.segment_accuracy_figure(runs, "this notebook")
    assert [ax.get_title() for ax in figure.axes] == ["all three", "digit", "colour", "direction"]
    for ax, attribute in zip(figure.axes, ["all", "digit", "colour", "direction"]):
        lines = _lines(ax)
        assert list(lines) == ["MALT", "SynCoS"]
        for label, (segments, percent) in lines.items():
            expected = runs[label]["segment_scores"][attribute]
            assert segments == list(range(1, len(expected) + 1))
            np.testing.assert_allclose(percent, [100 * value for value in expected], err_msg=f"{label} {attribute}")
        assert ax.get_xlabel() == "segment" and ax.get_ylim() == (-3, 103)
    assert figure.axes[0].get_ylabel() == "accuracy against the segment's caption (%)"
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["MALT", "SynCoS"]
    with pytest.raises(ValueError, match="^empty.json: no runs to draw"):
        plots.segment_accuracy_figure({}, "empty.json")


def test_segment_scores_are_read_from_eval_long_s_json_and_each_length_and_mode_of_eval_syncos_s(tmp_path):
    malt, syncos = tmp_path / "malt_long.json", tmp_path / "syncos.json"
    malt.write_text(json.dumps(MALT_SCORES))
    ground_truth = _segment_scores([1.0], [1.0], [1.0], [1.0])
    syncos.write_text(json.dumps(dict(system="latent_diffusion", num=8, results={
        "4x": {"ground truth": ground_truth, "syncos": SYNCOS_SCORES},
        "8x": {"syncos": MALT_SCORES}})))
    runs = plots.read_segment_scores([str(malt), str(syncos)])
    assert runs == {"malt_long": MALT_SCORES, "syncos: ground truth, 4x": ground_truth,
                    "syncos: syncos, 4x": SYNCOS_SCORES, "syncos: syncos, 8x": MALT_SCORES}


@pytest.mark.parametrize("draw,data,key", [
    (plots.long_video_figure, DECODING, "long_video"),
    (plots.decoding_figure, LONG_VIDEO, "decoding"),
    (plots.sharding_figure, LONG_VIDEO, "presets"),
    (plots.long_video_figure, {"long_video": [dict(segments=4, output_bytes=1)]}, "temporaries_bytes"),
    (plots.decoding_figure, {"decoding": {"rows": [dict(length=256, retention={})]}}, "ms_per_token"),
    (plots.segment_accuracy_figure, {"MALT": LONG_VIDEO}, "segment_scores"),
    (plots.segment_accuracy_figure, {"MALT": {"segment_scores": dict(all=[0.5], colour=[1.0])}}, "digit"),
])
def test_a_json_of_another_kind_is_refused_naming_the_file_and_key(draw, data, key):
    with pytest.raises(ValueError, match=f"^other.json: missing key '{key}'"):
        draw(data, "other.json")


def test_the_script_writes_the_png(tmp_path):
    bench, out = tmp_path / "bench.json", tmp_path / "figures" / "long_video.png"
    bench.write_text(json.dumps(LONG_VIDEO))
    result = subprocess.run([sys.executable, "scripts/plot.py", "--kind", "long_video", "--inputs", str(bench),
                             "--out", str(out), "--title", "MALT on the CPU"], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert result.returncode == 0, result.stderr
    height, width, _ = imread(out).shape
    assert (width, height) == (11 * 150, int(4.2 * 150))


def test_the_script_draws_segment_accuracy_from_several_jsons(tmp_path):
    malt, syncos, out = tmp_path / "malt.json", tmp_path / "syncos.json", tmp_path / "segments.png"
    malt.write_text(json.dumps(MALT_SCORES))
    syncos.write_text(json.dumps(dict(results={"2x": {"syncos": SYNCOS_SCORES}})))
    result = subprocess.run([sys.executable, "scripts/plot.py", "--kind", "segment_accuracy", "--inputs",
                             f"{malt},{syncos}", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert result.returncode == 0, result.stderr
    height, width, _ = imread(out).shape
    assert (width, height) == (14 * 150, int(3.8 * 150))
