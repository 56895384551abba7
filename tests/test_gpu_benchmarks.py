"""scripts/gpu_benchmarks.py, the GPU run-book: its tables are BENCHMARKS.md's, and its dry run (every part
at tiny sizes on CPU) yields real figures for every part and one markdown row per pending table."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_benchmarks.py")

# What each part must report as a finite number (MFU and peak memory are None on a CPU).
REQUIRED = {
    "a": ("train_step_seconds", "train_tflops", "sampling_seconds", "sampling_tflops"),
    "b": ("batch", "train_step_seconds", "tflops", "speedup_vs_full_remat", "baseline_full_remat_seconds"),
    "c": ("ours_seconds", "diffusers_seconds", "speedup"),
    "d": ("length", "retnet_ms_per_token", "retnet_tokens_per_sec", "retnet_decode_memory_bytes", "kv_ms_per_token",
          "kv_tokens_per_sec", "kv_decode_memory_bytes", "speedup"),
    "e": ("train_seconds", "vae_steps", "dit_steps", "all", "digit", "colour", "direction", "identity", "num_videos"),
    "f": ("passed", "failed", "skipped", "errors"),
}


def _load():
    spec = importlib.util.spec_from_file_location("gpu_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _benchmarks_md():
    with open(os.path.join(ROOT, "BENCHMARKS.md")) as f:
        return f.read()


def _cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row.strip())) - 2


def _table_rows(markdown: str, header: str) -> list:
    """The data rows of the table that opens with `header`."""
    lines = markdown.splitlines()
    start = lines.index(header)
    assert lines[start + 1].startswith("|---"), lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_tables_use_benchmarks_md_columns():
    gb, benchmarks = _load(), _benchmarks_md()
    for key, header in gb.HEADERS.items():
        assert gb._row(header) in benchmarks.splitlines(), f"part {key}: header not in BENCHMARKS.md"
        assert f"## {gb.SECTIONS[key]}" in benchmarks.splitlines(), f"part {key}: section not in BENCHMARKS.md"


def test_failed_and_skipped_parts_still_give_one_full_row_per_table():
    gb = _load()
    parts = {key: dict(status="failed" if key in "ace" else "skipped", seconds=1.0, timeout_s=2.0,
                       cmd=[sys.executable, "scripts/benchmark.py", "--config", "configs/x.py", "--out", "x.json"])
             for key in gb.ORDER}
    report = dict(environment=dict(device="NVIDIA H200"), parts=parts, dry_run=False, date="2026-01-01",
                  total_seconds=3.0, deadline_s=525.0, work_dir="/tmp/w")
    markdown = gb.markdown(report)
    for key, header in gb.HEADERS.items():
        rows = _table_rows(markdown, gb._row(header))
        assert len(rows) == 1 and _cells(rows[0]) == len(header), rows
        assert "NVIDIA H200" in rows[0] and "2026-01-01" in rows[0]


def test_parts_run_in_priority_order_and_reject_unknown_names():
    gb = _load()
    assert gb.parse_args(["--parts", "e,a,b"]).parts == ["b", "a", "e"]
    with pytest.raises(SystemExit):
        gb.parse_args(["--parts", "x"])


@pytest.mark.slow
def test_dry_run_gives_every_part_and_one_row_per_pending_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([sys.executable, SCRIPT, "--dry_run", "--out_dir", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    with open(tmp_path / "gpu_benchmarks.json") as f:
        report = json.load(f)
    errors = {k: p.get("error_tail") for k, p in report["parts"].items() if p["status"] != "ok"}
    assert proc.returncode == 0 and not errors, (errors, proc.stdout[-3000:], proc.stderr[-3000:])
    assert sorted(report["parts"]) == sorted(REQUIRED)
    for key, names in REQUIRED.items():
        summary = report["parts"][key]["summary"]
        for name in names:
            value = summary[name]
            assert isinstance(value, (int, float)) and math.isfinite(value), (key, name, value)
    assert report["parts"]["f"]["summary"]["skipped"] > 0  # no GPU here: the GPU tests skip

    gb = _load()
    markdown = (tmp_path / "gpu_benchmarks.md").read_text()
    assert markdown == report["markdown"]
    for key, header in gb.HEADERS.items():
        rows = _table_rows(markdown, gb._row(header))
        assert len(rows) == 1, rows
        assert _cells(rows[0]) == len(header), rows[0]
        assert "pending" not in rows[0] and "failed" not in rows[0]
        assert re.search(r"\d", rows[0])
