"""The GPU run-book: every "pending: needs a GPU" row of BENCHMARKS.md from one command, in under 9 minutes
on one NVIDIA H200, written as one JSON file and one markdown file of rows to paste.

  bash scripts/gpu_wheels.sh                                   # here (with network): fills gpu_wheels/
  python scripts/gpu_benchmarks.py --install --out_dir $OUT    # on the GPU machine (no network)
  python scripts/gpu_benchmarks.py --dry_run --out_dir /tmp/gb # every part at tiny sizes on CPU (~2-4 min)

(scripts/gpu_benchmarks.sh is the same command: `bash scripts/gpu_benchmarks.sh --install --out_dir $OUT`.)

A session with the device tool runs it in ONE call, after `bash scripts/gpu_wheels.sh` here:

  run(command="python3 scripts/gpu_benchmarks.py --install --out_dir $OUT",
      carry=["gpu_wheels"], timeout_s=600)

and pastes the rows of $OUT/gpu_benchmarks.md (also in the reply's output_tail summary) into
BENCHMARKS.md; $OUT/gpu_benchmarks.json holds every part's raw figures and, for a part that failed,
the tail of its log; $OUT/gpu_benchmarks.log the parts' logs. Parts left over for time (status
"skipped") run in a second call with `--parts` (e.g. `--parts a,e`).

The parts, run in this order (most valuable rows first), each in its own subprocess with a timeout, the
whole run held to --deadline seconds (a part that fails or times out is recorded and the run goes on):
  b  DiT train-step MFU, Allegro 40x360p, bf16, cuDNN attention, batch filling the card (tries
     --mfu_batch in order, falling back to the next on out-of-memory), against full remat;
  c  Allegro DiT denoising step (88x720p full size) against diffusers' AllegroTransformer3DModel;
  a  DiT train step and sampling at Allegro 88x720p, batch 1 (full remat; --allegro_baselines adds the
     full-remat and per-step-loop baselines, about twice the time);
  d  FlashVideo decoding at 16,384 tokens: RetNet recurrent form against the KV-cache twin;
  f  `python -m pytest -m gpu tests/test_gpu.py` (pass/fail counts);
  e  the Bouncing Digits "N-minute GPU run": scripts/train.py on configs/quickstart.py with --e_* step
     counts, stopped at the deadline if it has not finished (the latest checkpoint is then judged), then
     `scripts/eval.py --num 256 --seed 1234`. It runs last and takes the time that is left, so N is
     whatever the run measured; the row says so.

Sizes chosen to fit 9 minutes (all flags): the DiT parts time 1 warm-up + --*_repeats steps; a's
sampling run is 1 DDIM step (--sampling_steps; 50 steps at 88x720p would take minutes alone), b's is
1 step of Allegro's own sampler (only its train step is reported); Allegro's T5-XXL text encoder,
frozen in Allegro's own training, is cut to 1 layer (width 4096 kept, so the DiT is unchanged) because
the benchmark's train step trains the text encoder with the DiT and 24 layers would add 4.7B trained
parameters that the FLOP count leaves out. The time per part is estimated, not yet measured on an
H200: the first real run's JSON says what each part took; the summary table printed at the end, and
in gpu_benchmarks.md, shows which parts finished. With no GPU visible to JAX it stops after the
environment probe rather than run the full-size parts on a CPU.

What it assumes about the GPU machine (see /work/.library/device/KINDS.md): Python 3.12 (`python3`)
with jax 0.11 + CUDA, flax, optax, orbax-checkpoint, torch, transformers, huggingface-hub, safetensors,
scikit-learn, pytest and their usual dependencies installed; no diffusers, ml-collections, grain,
array-record, tensorflow-datasets (and its small dependencies), tensorboardX or imageio-ffmpeg; no
network. --install puts the carried wheels that are missing there, or older there than carried, into
--site_dir (never jax, jaxlib, numpy or torch: none is carried) and prepends it to PYTHONPATH for every
part; then `pip install --no-deps -e .` (pyproject pins jax<0.11, so never with dependencies), and the
repository root goes on PYTHONPATH as well in case the editable install fails offline.
"""

import argparse
import datetime
import glob
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
ORDER = ("b", "c", "a", "d", "f", "e")
TITLES = {
    "a": "DiT train step and sampling at Allegro 88x720p",
    "b": "DiT train-step MFU, Allegro 40x360p",
    "c": "Allegro DiT denoising step vs diffusers",
    "d": "FlashVideo decoding at 16k tokens: RetNet vs KV cache",
    "e": "Bouncing Digits N-minute GPU run",
    "f": "GPU tests (pytest -m gpu)",
}
# BENCHMARKS.md's section titles and table headers, verbatim (tests/test_gpu_benchmarks.py checks them).
SECTIONS = {
    "a": "DiT train step and sampling",
    "b": "DiT train-step MFU on one GPU (bf16)",
    "c": "Allegro DiT denoising step vs diffusers",
    "d": "FlashVideo decoding: RetNet recurrent form vs a KV-cache Transformer",
    "e": "Bouncing Digits prompt accuracy (judge, test-set glyphs)",
}
HEADERS = {
    "a": ("config", "device", "date", "train step", "vs full remat", "sampling run (DDIM 50, CFG)",
          "vs per-step loop"),
    "b": ("config", "device", "date", "MFU", "TFLOP/s", "vs full remat", "profile-guided changes"),
    "c": ("config", "device", "date", "ours", "diffusers", "speed-up", "peak memory ours / diffusers"),
    "d": ("device", "date", "total length", "RetNet ms/token", "RetNet tokens/s", "RetNet decode memory",
          "KV-cache ms/token", "KV-cache tokens/s", "KV-cache decode memory", "speed-up"),
    "e": ("run", "device", "date", "train time", "all three", "digit", "colour", "direction", "identity"),
}
# Per part: (timeout when the deadline allows it, least time worth starting it with), seconds.
BUDGETS = {"b": (170, 60), "c": (150, 60), "a": (160, 60), "d": (60, 20), "f": (60, 20), "e": (400, 100)}
DRY_BUDGETS = {"b": (400, 30), "c": (400, 30), "a": (400, 30), "d": (300, 20), "f": (200, 10), "e": (700, 60)}
E_EVAL_RESERVE = {False: 60, True: 150}  # seconds of part e kept for judging the model
STOP_GRACE = 5  # seconds a timed-out part may take to stop (SIGINT, then SIGTERM, then SIGKILL)
CARRIED_NEVER = {"jax", "jaxlib", "numpy", "torch", "ml-dtypes", "scipy"}
# A carried wheel replaces an installed version older than this (default: older than the wheel).
MIN_INSTALLED = {"protobuf": "6.33.5"}

# Tiny sizes for --dry_run (CPU): the DiT, Allegro's text encoder and the video, given on the command line.
TINY_DIT = ["--config.dit.num_layers=2", "--config.dit.width=192", "--config.dit.num_heads=2",
            "--config.dit.dtype=float32", "--config.dit.param_dtype=float32", "--config.dit.attention=xla",
            "--config.data.num_frames=8", "--config.data.canvas=64", "--config.data.width=64",
            "--config.text.max_length=16", "--config.text.encoder.num_layers=1", "--config.text.encoder.width=64",
            "--config.text.encoder.num_heads=2", "--config.text.encoder.head_dim=32",
            "--config.text.encoder.mlp_dim=128", "--config.dit.caption_channels=64"]
GPU_DIT = ["--config.dit.attention=cudnn", "--config.text.encoder.num_layers=1"]
OOM_PATTERNS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemory")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="gpu_results", help="Where gpu_benchmarks.json/.md/.log go (also $OUT "
                   "if set); the parts' own JSON and logs go to --work_dir.")
    p.add_argument("--work_dir", default=None, help="Per-part JSON, logs, the training workdir (and, "
                   "with --dry_run, an XLA cache); default OUT_DIR/parts, or a temporary folder when OUT_DIR is $OUT.")
    p.add_argument("--dry_run", action="store_true", help="Every part at tiny sizes on CPU.")
    p.add_argument("--install", action="store_true", help="Install the carried wheels, then the project.")
    p.add_argument("--wheels_dir", default="gpu_wheels", help="Wheels from scripts/gpu_wheels.sh.")
    p.add_argument("--site_dir", default="/tmp/t2v_jax_site", help="Where --install puts the wheels.")
    p.add_argument("--parts", default=",".join(ORDER), help="Comma-separated subset of a,b,c,d,e,f "
                   "(always run in the order b,c,a,d,f,e).")
    p.add_argument("--deadline", type=float, default=None, help="Seconds for the whole run, install included "
                   "(default 525 on GPU: under 9 minutes; 1800 with --dry_run).")
    p.add_argument("--mfu_batch", default="4,2", help="b: batch sizes to try in order (next on out-of-memory).")
    p.add_argument("--mfu_repeats", type=int, default=3, help="b: timed steps after the warm-up.")
    p.add_argument("--mem_fraction", default="0.95", help="XLA_PYTHON_CLIENT_MEM_FRACTION for the JAX-only "
                   "DiT parts a and b (JAX's default, 0.75, leaves a quarter of the card unused).")
    p.add_argument("--allegro_remat", default="full", help="a: remat policy at 88x720p batch 1.")
    p.add_argument("--allegro_baselines", action="store_true", help="a: also time the full-remat train step "
                   "and the per-step sampling loop (about doubles part a).")
    p.add_argument("--allegro_repeats", type=int, default=1, help="a: timed repetitions after the warm-up.")
    p.add_argument("--sampling_steps", type=int, default=1, help="Steps of the timed sampling run: DDIM in a, "
                   "Allegro's own sampler in b.")
    p.add_argument("--diffusers_repeats", type=int, default=1, help="c: timed steps after the warm-up.")
    p.add_argument("--decode_repeats", type=int, default=3, help="d: timed decoding runs after the warm-up.")
    p.add_argument("--e_vae_steps", type=int, default=1000, help="e: VAE steps (at most).")
    p.add_argument("--e_dit_steps", type=int, default=6000, help="e: DiT steps (at most; the deadline may "
                   "stop the run first, and the latest checkpoint is judged).")
    p.add_argument("--e_batch", type=int, default=64, help="e: batch size of both stages.")
    p.add_argument("--e_checkpoint_every", type=int, default=250, help="e: steps between checkpoints.")
    p.add_argument("--e_eval_num", type=int, default=256, help="e: test-set prompts judged.")
    p.add_argument("--e_workdir", default=None, help="e: training workdir, emptied first "
                   "(default WORK_DIR/gpu_quickstart).")
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(ORDER))
    if unknown:
        p.error(f"--parts: unknown part(s) {unknown}; choose from {','.join(sorted(ORDER))}")
    args.parts = [s for s in ORDER if s in parts]
    if args.deadline is None:
        args.deadline = 1800.0 if args.dry_run else 525.0
    return args


# ----------------------------------------------------------------------------------------- running


class Runner:
    """Runs commands in subprocesses with timeouts, against one deadline, logging everything."""

    def __init__(self, args, work_dir, env):
        self.args = args
        self.work_dir = work_dir
        self.env = env
        self.start = time.monotonic()
        self.logs = []  # (name, path)

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.start)

    def run(self, name, cmd, timeout, env=None) -> dict:
        """cmd (a list) from the repository root; stdout and stderr to WORK_DIR/NAME.log."""
        log_path = os.path.join(self.work_dir, f"{name}.log")
        self.logs.append((name, log_path))
        full_env = dict(self.env, **(env or {}))
        started = time.monotonic()
        timed_out = False
        with open(log_path, "w") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                returncode = proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                timed_out = True
                returncode = _stop(proc)
        with open(log_path, errors="replace") as log:
            text = log.read()
        return dict(cmd=cmd, returncode=returncode, timed_out=timed_out, timeout_s=round(timeout, 1),
                    seconds=round(time.monotonic() - started, 2), log=log_path, text=text)


def _stop(proc) -> int:
    """SIGINT, then SIGTERM, then SIGKILL to the process group this script started."""
    for sig, grace in ((signal.SIGINT, 3), (signal.SIGTERM, 2), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    text = text.replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-chars:]


def last_json_line(text: str):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def display(cmd, work_dir=None) -> str:
    """The command as a reader would type it: `python`, paths from the repository root, no --out or
    --verbose, and the run's scratch folder shown as runs/gpu_benchmarks."""
    shown, skip = ["python"], False
    for arg in cmd[1:]:
        if skip:
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        if arg.startswith("--out=") or arg == "--verbose":
            continue
        if work_dir:
            arg = arg.replace(work_dir, "runs/gpu_benchmarks")
        shown.append(arg.replace(REPO + os.sep, ""))
    return shlex.join(shown)


def benchmark_cmd(config, out, extra):
    return [PYTHON, "scripts/benchmark.py", "--config", config, "--out", out, "--verbose", *extra]


# ------------------------------------------------------------------------------------------- parts


def part_b(runner, args, timeout):
    """MFU at 40x360p: the largest batch of --mfu_batch that fits."""
    sizes = TINY_DIT if args.dry_run else GPU_DIT
    env = {} if args.dry_run else {"XLA_PYTHON_CLIENT_MEM_FRACTION": args.mem_fraction}
    deadline = time.monotonic() + timeout
    attempts = []
    for batch in [int(b) for b in args.mfu_batch.split(",")]:
        out = os.path.join(runner.work_dir, f"b_batch{batch}.json")
        cmd = benchmark_cmd("configs/allegro_40x360p.py", out, [
            f"--config.train_dit.batch_size={batch}", "--repeats", str(args.mfu_repeats),
            # Allegro's own sampler, which has no per-step-loop baseline: this part only needs the train step.
            f"--config.sampling.num_steps={args.sampling_steps}", *sizes])
        run = runner.run(f"b_batch{batch}", cmd, deadline - time.monotonic(), env)
        attempts.append(dict(batch=batch, returncode=run["returncode"], timed_out=run["timed_out"],
                             seconds=run["seconds"]))
        if run["returncode"] == 0:
            with open(out) as f:
                result = json.load(f)
            ts = result["train_step"]
            summary = dict(batch=batch, train_step_seconds=ts["seconds"], tflops=ts["tflops"], mfu=ts["mfu"],
                           speedup_vs_full_remat=ts.get("speedup_vs_full_remat"),
                           baseline_full_remat_seconds=ts.get("baseline_full_remat_seconds"),
                           remat_policy=ts["remat_policy"])
            return dict(run, result=result, summary=summary, attempts=attempts)
        oom = any(p in run["text"] for p in OOM_PATTERNS)
        attempts[-1]["out_of_memory"] = oom
        if not oom or run["timed_out"] or deadline - time.monotonic() < 30:
            return dict(run, attempts=attempts)
    return dict(run, attempts=attempts)


def part_c(runner, args, timeout):
    out = os.path.join(runner.work_dir, "c.json")
    sizes = TINY_DIT if args.dry_run else GPU_DIT
    cmd = benchmark_cmd("configs/allegro_88x720p.py", out,
                        ["--vs_diffusers", "--repeats", str(args.diffusers_repeats), *sizes])
    run = runner.run("c", cmd, timeout)
    if run["returncode"] != 0:
        return run
    with open(out) as f:
        result = json.load(f)
    step = result["denoise_step"]
    summary = dict(ours_seconds=step["ours_seconds_per_step"], diffusers_seconds=step["diffusers_seconds_per_step"],
                   speedup=step["speedup_vs_diffusers"], ours_peak_bytes=step["ours_peak_bytes"],
                   diffusers_peak_bytes=step["diffusers_peak_bytes"])
    return dict(run, result=result, summary=summary)


def part_a(runner, args, timeout):
    out = os.path.join(runner.work_dir, "a.json")
    sizes = TINY_DIT if args.dry_run else GPU_DIT
    env = {} if args.dry_run else {"XLA_PYTHON_CLIENT_MEM_FRACTION": args.mem_fraction}
    extra = ["--config.train_dit.batch_size=1", "--repeats", str(args.allegro_repeats),
             f"--config.dit.remat_policy={args.allegro_remat}", "--config.sampling.method=ddim",
             f"--config.sampling.num_steps={args.sampling_steps}", *sizes]
    if not args.allegro_baselines:
        extra.append("--skip_baselines")
    run = runner.run("a", benchmark_cmd("configs/allegro_88x720p.py", out, extra), timeout, env)
    if run["returncode"] != 0:
        return run
    with open(out) as f:
        result = json.load(f)
    ts, sp = result["train_step"], result["sampling"]
    summary = dict(train_step_seconds=ts["seconds"], train_tflops=ts["tflops"], train_mfu=ts["mfu"],
                   speedup_vs_full_remat=ts.get("speedup_vs_full_remat"), sampling_seconds=sp["seconds"],
                   sampling_tflops=sp["tflops"], sampling_steps=args.sampling_steps,
                   speedup_vs_python_loop=sp.get("speedup_vs_python_loop"), remat_policy=ts["remat_policy"])
    return dict(run, result=result, summary=summary)


def part_d(runner, args, timeout):
    out = os.path.join(runner.work_dir, "d.json")
    lengths, steps = ("256", "32") if args.dry_run else ("16384", "128")
    cmd = benchmark_cmd("configs/flashvideo.py", out, ["--lengths", lengths, "--decode_steps", steps,
                                                        "--repeats", str(args.decode_repeats)])
    run = runner.run("d", cmd, timeout)
    if run["returncode"] != 0:
        return run
    with open(out) as f:
        result = json.load(f)
    row = result["decoding"]["rows"][-1]
    r, k = row["retention"], row["attention"]
    summary = dict(length=row["length"], retnet_ms_per_token=r["ms_per_token"],
                   retnet_tokens_per_sec=r["tokens_per_sec"],
                   retnet_decode_memory_bytes=r["decode_memory_bytes"], kv_ms_per_token=k["ms_per_token"],
                   kv_tokens_per_sec=k["tokens_per_sec"], kv_decode_memory_bytes=k["decode_memory_bytes"],
                   speedup=row["speedup_retention_vs_kv_cache"])
    return dict(run, result=result, summary=summary)


def part_f(runner, args, timeout):
    cmd = [PYTHON, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider"]
    run = runner.run("f", cmd, timeout)
    counts = {key: 0 for key in ("passed", "failed", "skipped", "errors")}
    summary_lines = [line for line in run["text"].replace("\r", "\n").splitlines()
                     if re.search(r"\d+ (passed|failed|skipped|errors?|no tests ran)", line)]
    if summary_lines:
        for number, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary_lines[-1]):
            counts["errors" if what.startswith("error") else what] += int(number)
    ok = run["returncode"] == 0 and not run["timed_out"] and bool(summary_lines)
    if args.dry_run is False and counts["skipped"] and not counts["passed"]:
        ok = False  # on the GPU machine a skipped GPU test means JAX did not see the GPU
    return dict(run, summary=counts, ok=ok)


def part_e(runner, args, timeout):
    """Train the quickstart system with --e_* step counts until done or out of time, then judge it."""
    import shutil

    workdir = args.e_workdir or os.path.join(runner.work_dir, "gpu_quickstart")
    shutil.rmtree(workdir, ignore_errors=True)
    data = []
    if args.dry_run:
        data = [f"--config.data.dir={os.path.join(runner.work_dir, 'data_cache')}", "--config.data.train_size=64",
                "--config.data.test_size=16"]
    vae_steps, dit_steps = (4, 4) if args.dry_run else (args.e_vae_steps, args.e_dit_steps)
    batch = 8 if args.dry_run else args.e_batch
    train_cmd = [PYTHON, "scripts/train.py", "--config", "configs/quickstart.py", "--workdir", workdir, "--verbose",
                 f"--config.train_vae.num_steps={vae_steps}", f"--config.train_dit.num_steps={dit_steps}",
                 f"--config.train_vae.batch_size={batch}", f"--config.train_dit.batch_size={batch}",
                 f"--config.train_vae.checkpoint_every={args.e_checkpoint_every}",
                 f"--config.train_dit.checkpoint_every={args.e_checkpoint_every}", *data]
    num = 8 if args.dry_run else args.e_eval_num
    eval_cmd = [PYTHON, "scripts/eval.py", "--config", "configs/quickstart.py", "--checkpoint", workdir, "--verbose",
                "--num", str(num), "--seed", "1234", *data]
    if args.dry_run:
        eval_cmd.append("--config.sampling.num_steps=2")
    started = time.monotonic()
    reserve = E_EVAL_RESERVE[args.dry_run]
    train = runner.run("e_train", train_cmd, timeout - reserve, {"TQDM_DISABLE": "1"})
    train_seconds = train["seconds"]
    steps = {stage: _last_step(os.path.join(workdir, stage, "metrics.jsonl")) for stage in ("vae", "dit")}
    checkpoints = [int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "dit", "checkpoints", "*"))
                   if os.path.basename(p).isdigit()]
    if train["timed_out"] and checkpoints:
        steps["dit"] = max(checkpoints)  # what the judge loads: the latest checkpoint, not the latest log line
    commands = [train_cmd, eval_cmd]
    if train["returncode"] != 0 and not (train["timed_out"] and checkpoints):
        return dict(train, commands=commands, train=_brief(train), steps=steps)
    judge = runner.run("e_eval", eval_cmd, timeout - (time.monotonic() - started), {"TQDM_DISABLE": "1"})
    scores = last_json_line(judge["text"]) if judge["returncode"] == 0 else None
    result = dict(train=_brief(train), eval=_brief(judge), steps=steps, scores=scores,
                  planned_steps=dict(vae=vae_steps, dit=dit_steps), batch=batch,
                  stopped_by_deadline=train["timed_out"],
                  stage_seconds={m[0]: float(m[1]) for m in re.findall(r"\[(\w+)\] step \d+: loss \S+ in (\d+) s",
                                                                        train["text"])})
    if scores is None:
        return dict(judge, commands=commands, result=result)
    summary = dict(train_seconds=train_seconds, total_seconds=round(time.monotonic() - started, 2),
                   vae_steps=steps["vae"], dit_steps=steps["dit"], all=scores["all"], digit=scores["digit"],
                   colour=scores["colour"], direction=scores["direction"],
                   identity=scores["identity_consistency"], num_videos=scores["num_videos"])
    return dict(judge, commands=commands, result=result, summary=summary, returncode=0)


def _brief(run):
    return {k: run[k] for k in ("returncode", "timed_out", "timeout_s", "seconds")}


def _last_step(path):
    try:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e, "f": part_f}


# ------------------------------------------------------------------------------------------ install


def install(args, env, log) -> dict:
    """The carried wheels into --site_dir (those missing here or older here), then the project."""
    from importlib import metadata

    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
        from packaging.version import Version
    except ImportError:  # pip always has its own copy
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
        from pip._vendor.packaging.version import Version

    supported = set(sys_tags())
    wheels_dir = os.path.join(REPO, args.wheels_dir) if not os.path.isabs(args.wheels_dir) else args.wheels_dir
    chosen = {}
    for path in sorted(glob.glob(os.path.join(wheels_dir, "*.whl"))):
        name, version, _, tags = parse_wheel_filename(os.path.basename(path))
        if not supported & set(tags) or name in CARRIED_NEVER:
            continue
        if name not in chosen or version > chosen[name][0]:
            chosen[name] = (version, path)
    report = dict(wheels_dir=wheels_dir, site_dir=args.site_dir, wheels_found=len(chosen), installed=[], kept=[],
                  failed=[])
    to_install = []
    for name, (version, path) in sorted(chosen.items()):
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            have = None
        except Exception:  # an installed version that does not parse: keep it
            report["kept"].append(f"{name} (installed, version unreadable)")
            continue
        wanted = Version(MIN_INSTALLED.get(name, str(version)))
        if have is None or have < wanted:
            to_install.append(path)
            report["installed"].append(f"{name}=={version}" + (f" (over {have})" if have else ""))
        else:
            report["kept"].append(f"{name}=={have}")
    pip = [PYTHON, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", args.site_dir]
    if to_install:
        done = subprocess.run(pip + to_install, capture_output=True, text=True)
        log.write(done.stdout + done.stderr)
        if done.returncode != 0:  # one at a time, so that one bad wheel costs only itself
            for path in to_install:
                one = subprocess.run(pip + [path], capture_output=True, text=True)
                log.write(one.stdout + one.stderr)
                if one.returncode != 0:
                    report["failed"].append(os.path.basename(path))
    editable = subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                               "--no-build-isolation", "-e", REPO], capture_output=True, text=True, env=env)
    log.write(editable.stdout + editable.stderr)
    report["editable_install"] = "ok" if editable.returncode == 0 else tail(editable.stderr, 5, 600)
    log.flush()
    return report


PROBE = r"""
import json, platform, subprocess, sys
from importlib import metadata
info = dict(python=platform.python_version(), platform=platform.platform())
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "grain", "tensorflow-datasets",
             "array-record", "protobuf", "torch", "diffusers", "transformers", "t2v_jax"):
    try:
        info[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        info[name] = None
missing = []
for module in ("t2v_jax", "ml_collections", "grain", "tensorflow_datasets", "array_record", "tensorboardX",
               "imageio_ffmpeg"):
    try:
        __import__(module)
    except Exception as error:
        missing.append(f"{module}: {type(error).__name__}: {error}")
info["import_errors"] = missing
import jax
devices = jax.devices()
info.update(backend=jax.default_backend(), device=devices[0].device_kind, num_devices=len(devices))
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
except Exception:
    info["nvidia_smi"] = None
print(json.dumps(info))
"""


# ----------------------------------------------------------------------------------------- markdown


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _table(key, row) -> list:
    header = HEADERS[key]
    return [_row(header), "|" + "---|" * len(header), _row(row)]


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def _num(x, digits=3) -> str:
    """3 significant figures, thousands separated."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{max(0, digits - 1 - int(math.floor(math.log10(abs(x)))) if x else 0)}f}"


def _speedup(x) -> str:
    return "n/a" if x is None else f"x{_num(x)}"


def _gib(n) -> str:
    return "n/a" if not n else f"{n / 2**30:.1f} GiB"


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def _failed(part) -> str:
    return f"{part['status']} on this run (see gpu_benchmarks.json)"


def markdown(report) -> str:
    env, parts, dry = report["environment"], report["parts"], report["dry_run"]
    device = env.get("device") or "unknown device"
    date = report["date"]
    lines = [f"# GPU benchmark rows: {device}, {date}", ""]
    if dry:
        lines += ["**DRY RUN** (tiny sizes on CPU): these rows test the run-book, they are not figures for "
                  "BENCHMARKS.md.", ""]
    lines += [f"Produced by `python scripts/gpu_benchmarks.py{' --dry_run' if dry else ' --install'}` in "
              f"{report['total_seconds']:.0f} s (deadline {report['deadline_s']:.0f} s); jax "
              f"{env.get('jax')}, torch {env.get('torch')}, diffusers {env.get('diffusers')}"
              + (f"; nvidia-smi: {env['nvidia_smi']}" if env.get("nvidia_smi") else "") + ".", ""]

    def cmd_of(part, index=0):
        cmds = part.get("commands") or [part.get("cmd")]
        return display(cmds[index], report.get("work_dir")) if len(cmds) > index and cmds[index] else "not run"

    for key in ("a", "b", "c", "d", "e"):
        part = parts.get(key)
        if part is None:
            continue
        lines += [f"## {SECTIONS[key]}", ""]
        s = part.get("summary") if part["status"] == "ok" else None
        dev = (part.get("result") or {}).get("device", device)
        if key == "a":
            config = f"allegro 88x720p, batch 1 (`{cmd_of(part)}`)"
            if s is None:
                row = [config, dev, date, _failed(part), "", _failed(part), ""]
            else:
                mfu = f", MFU {_pct(s['train_mfu'])}" if s["train_mfu"] else ""
                if s["speedup_vs_full_remat"] is not None:
                    remat = _speedup(s["speedup_vs_full_remat"])
                elif s["remat_policy"] == "full":
                    remat = "n/a: ran under full remat"
                else:
                    remat = "not measured (--allegro_baselines)"
                loop = (_speedup(s["speedup_vs_python_loop"]) if s["speedup_vs_python_loop"] is not None
                        else "not measured (--allegro_baselines)")
                steps = s["sampling_steps"]
                row = [config, dev, date,
                       f"{_num(1 / s['train_step_seconds'])} steps/s ({_num(s['train_step_seconds'])} s/step), "
                       f"{_num(s['train_tflops'])} TFLOP/s{mfu}, {s['remat_policy']} remat", remat,
                       f"DDIM {steps} step{'s' if steps != 1 else ''}, CFG: {_num(s['sampling_seconds'])} s, "
                       f"{_num(s['sampling_tflops'])} TFLOP/s", loop]
        elif key == "b":
            batch = (s or {}).get("batch") or "N"
            config = (f"Allegro 40x360p DiT, bf16, cuDNN attention, batch {batch}"
                      f" (`{cmd_of(part)}`)")
            if s is None:
                row = [config, dev, date, _failed(part), _failed(part), "", "none yet"]
            else:
                row = [config, dev, date, _pct(s["mfu"]) if s["mfu"] else "n/a (no known peak)", _num(s["tflops"]),
                       _speedup(s["speedup_vs_full_remat"]), "none yet: first GPU run"]
        elif key == "c":
            dit = (part.get("result") or {}).get("dit", {})
            step = (part.get("result") or {}).get("denoise_step", {})
            if s is None:
                config = f"88x720p full size (`{cmd_of(part)}`)"
                row = [config, dev, date, _failed(part), _failed(part), "", _failed(part)]
            else:
                t, h, w, _ = step["latent_thwc"]
                ph = dit.get("patch_thw", [1, 2, 2])
                tokens = (t // ph[0]) * (h // ph[1]) * (w // ph[2])
                config = (f"{'88x720p full size' if not dry else 'tiny'}: {dit['num_layers']} layers, width "
                          f"{dit['width']}, {t}x{h}x{w} latents ({tokens:,} tokens), text {step['text_len']}, "
                          f"{step['dtype']}, {step['attention']} attention (`{cmd_of(part)}`)")
                row = [config, dev, date, f"{_num(s['ours_seconds'])} s", f"{_num(s['diffusers_seconds'])} s",
                       _speedup(s["speedup"]),
                       f"{_gib(s['ours_peak_bytes'])} / {_gib(s['diffusers_peak_bytes'])}"
                       if s["ours_peak_bytes"] else "n/a on CPU"]
        elif key == "d":
            if s is None:
                row = [dev, date, "16,384", _failed(part), "", "", _failed(part), "", "", _failed(part)]
            else:
                row = [dev, date, f"{s['length']:,}", _num(s["retnet_ms_per_token"]),
                       f"{s['retnet_tokens_per_sec']:,.0f}", _mib(s["retnet_decode_memory_bytes"]),
                       _num(s["kv_ms_per_token"]), f"{s['kv_tokens_per_sec']:,.0f}",
                       _mib(s["kv_decode_memory_bytes"]), f"**{_speedup(s['speedup'])}**"]
        else:
            r = part.get("result") or {}
            if s is None:
                run = f"N-minute GPU run (`{cmd_of(part, 0)}`, then `{cmd_of(part, 1)}`)"
                row = [run, device, date, _failed(part), "", "", "", "", ""]
            else:
                minutes = max(0.5, round(s["train_seconds"] / 30) / 2)
                planned = r.get("planned_steps", {})
                stopped = (f", stopped by the time budget at VAE {s['vae_steps']} / DiT {s['dit_steps']} of "
                           f"{planned.get('vae')} / {planned.get('dit')} steps" if r.get("stopped_by_deadline") else "")
                run = (f"{minutes:g}-minute GPU run: VAE {s['vae_steps']} + DiT {s['dit_steps']} steps, batch "
                       f"{r.get('batch')}{stopped}, {s['num_videos']} prompts (`{cmd_of(part, 0)}`, then "
                       f"`{cmd_of(part, 1)}`)")
                row = [run, device, date, f"{s['train_seconds']:.0f} s ({s['total_seconds']:.0f} s with judging)",
                       _pct(s["all"]), _pct(s["digit"]), _pct(s["colour"]), _pct(s["direction"]),
                       f"{100 * s['identity']:.2f}%"]
        lines += _table(key, row)
        if key == "d":
            lines += ["", f"Command: `{cmd_of(part)}`"]
        lines.append("")
    if "f" in parts:
        part = parts["f"]
        c = part.get("summary") or {}
        lines += ["## GPU tests", "",
                  f"`python -m pytest -m gpu tests/test_gpu.py` on {device}, {date}: {c.get('passed', 0)} passed, "
                  f"{c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped, {c.get('errors', 0)} errors"
                  f" ({part['status']}).", ""]
    lines += ["## Parts", "", _row(("part", "status", "seconds", "timeout", "result")), "|---|---|---|---|---|"]
    for key in ORDER:
        if key in parts:
            p = parts[key]
            lines.append(_row((f"{key}: {TITLES[key]}", p["status"], f"{p.get('seconds', 0):.0f}",
                               f"{p.get('timeout_s', 0):.0f}", p.get("headline", ""))))
    return "\n".join(lines) + "\n"


def headline(key, s) -> str:
    if not s:
        return ""
    if key == "a":
        return (f"train {_num(s['train_step_seconds'])} s/step, {_num(s['train_tflops'])} TFLOP/s; sampling "
                f"{_num(s['sampling_seconds'])} s")
    if key == "b":
        mfu = f"MFU {_pct(s['mfu'])}, " if s["mfu"] else ""
        return (f"batch {s['batch']}: {mfu}{_num(s['tflops'])} TFLOP/s, "
                f"{_speedup(s['speedup_vs_full_remat'])} vs full remat")
    if key == "c":
        return f"{_num(s['ours_seconds'])} s vs {_num(s['diffusers_seconds'])} s ({_speedup(s['speedup'])})"
    if key == "d":
        return (f"{s['length']}: {_num(s['retnet_ms_per_token'])} vs {_num(s['kv_ms_per_token'])} ms/token "
                f"({_speedup(s['speedup'])})")
    if key == "e":
        return (f"{s['train_seconds']:.0f} s, VAE {s['vae_steps']} + DiT {s['dit_steps']} steps: all three "
                f"{_pct(s['all'])}, digit {_pct(s['digit'])}")
    return f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped, {s['errors']} errors"


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    mirror = os.environ.get("OUT")
    mirror = os.path.abspath(mirror) if mirror and os.path.abspath(mirror) != out_dir else None
    if args.work_dir:
        work_dir = os.path.abspath(args.work_dir)
    elif os.environ.get("OUT") and os.path.abspath(os.environ["OUT"]) == out_dir:
        work_dir = tempfile.mkdtemp(prefix="gpu_benchmarks_")  # $OUT brings back 8 files at most
    else:
        work_dir = os.path.join(out_dir, "parts")
    os.makedirs(work_dir, exist_ok=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    python_path = [REPO] + ([args.site_dir] if args.install else [])
    env["PYTHONPATH"] = os.pathsep.join(python_path[::-1] + [p for p in [env.get("PYTHONPATH")] if p])
    if args.dry_run:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        if "JAX_COMPILATION_CACHE_DIR" not in env:  # the parts share many small CPU compiles
            env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(work_dir, "xla_cache"),
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

    runner = Runner(args, work_dir, env)
    report = dict(script="scripts/gpu_benchmarks.py", argv=sys.argv[1:], dry_run=args.dry_run,
                  date=datetime.date.today().isoformat(),
                  started=datetime.datetime.now().isoformat(timespec="seconds"), deadline_s=args.deadline,
                  total_seconds=0.0, work_dir=work_dir, environment={}, parts={})
    print(f"gpu_benchmarks: parts {','.join(args.parts)}, deadline {args.deadline:.0f} s, work dir {work_dir}",
          flush=True)

    if args.install:
        with open(os.path.join(work_dir, "install.log"), "w") as log:
            report["install"] = install(args, env, log)
        runner.logs.append(("install", os.path.join(work_dir, "install.log")))
        print(f"install: {len(report['install']['installed'])} wheels into {args.site_dir}, "
              f"{len(report['install']['kept'])} kept, failed {report['install']['failed']}, "
              f"editable install {report['install']['editable_install']}", flush=True)
    probe = runner.run("environment", [PYTHON, "-c", PROBE], min(180, max(30, runner.left())))
    report["environment"] = last_json_line(probe["text"]) or dict(error=tail(probe["text"]))
    env_info = report["environment"]
    print(f"environment: {json.dumps(env_info)}", flush=True)
    write(report, runner, out_dir, mirror)
    if not args.dry_run and env_info.get("backend") != "gpu":
        reason = (f"JAX sees no GPU (backend {env_info.get('backend')!r}): nothing run; see the environment "
                  f"entry of gpu_benchmarks.json")
        for key in args.parts:
            report["parts"][key] = dict(title=TITLES[key], status="skipped", seconds=0, timeout_s=0,
                                        error_tail=reason, headline=reason)
        print(write(report, runner, out_dir, mirror))
        print(reason, flush=True)
        return 1

    budgets = DRY_BUDGETS if args.dry_run else BUDGETS
    for index, key in enumerate(args.parts):
        later = sum(budgets[k][1] for k in args.parts[index + 1:]) + STOP_GRACE * (len(args.parts) - index)
        # e, the training run, comes last and takes the time that is left; the others their own budget.
        timeout = runner.left() - later if key == "e" else min(budgets[key][0], runner.left() - later)
        if timeout < budgets[key][1]:
            entry = dict(title=TITLES[key], status="skipped", seconds=0, timeout_s=0,
                         error_tail=f"skipped: {runner.left():.0f} s left before the deadline, {later} s kept for "
                                    f"the parts after it")
            entry["headline"] = entry["error_tail"]
        else:
            print(f"[{key}] {TITLES[key]} (timeout {timeout:.0f} s) ...", flush=True)
            entry = run_part(runner, args, key, timeout)
        report["parts"][key] = entry
        print(f"[{key}] {entry['status']} in {entry['seconds']:.0f} s: {entry['headline']}", flush=True)
        write(report, runner, out_dir, mirror)

    report["total_seconds"] = round(time.monotonic() - runner.start, 1)
    report["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    md = write(report, runner, out_dir, mirror)
    print("\n" + md)
    print(f"-> {os.path.join(out_dir, 'gpu_benchmarks.json')}, gpu_benchmarks.md, gpu_benchmarks.log"
          + (f" (and in {mirror})" if mirror else ""), flush=True)
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


def run_part(runner, args, key, timeout) -> dict:
    """One part, as its entry in the report: status, seconds, commands, raw result, summary, error tail."""
    started = time.monotonic()
    try:
        part = PARTS[key](runner, args, timeout)
    except Exception as error:  # a part's parser failing must not stop the others
        part = dict(returncode=-1, timed_out=False, text=f"{type(error).__name__}: {error}")
    status = "ok" if part.get("summary") is not None and part.get("ok", part.get("returncode") == 0) else (
        "timeout" if part.get("timed_out") else "failed")
    text = part.pop("text", "")
    entry = {k: v for k, v in part.items() if k not in ("ok", "timeout_s", "seconds")}
    entry = dict(title=TITLES[key], status=status, seconds=round(time.monotonic() - started, 1),
                 timeout_s=round(timeout, 1), **entry)
    if status != "ok":
        entry["error_tail"] = tail(text)
    entry["headline"] = headline(key, part.get("summary")) if status == "ok" else (tail(text, 1, 200) or status)
    return entry


def write(report, runner, out_dir, mirror) -> str:
    """The combined JSON, markdown and log, rewritten after every part (a killed run keeps what it had)."""
    report["total_seconds"] = round(time.monotonic() - runner.start, 1)
    report["markdown"] = md = markdown(report)
    log_text = []
    for name, path in runner.logs:
        try:
            with open(path, errors="replace") as f:
                text = f.read().replace("\r", "\n")
        except OSError:
            continue
        log_text.append(f"===== {name} ({path}) =====\n{text[-300_000:]}\n")
    for folder in [out_dir] + ([mirror] if mirror else []):
        os.makedirs(folder, exist_ok=True)
        for name, content in (("gpu_benchmarks.json", json.dumps(report, indent=2, default=str)),
                              ("gpu_benchmarks.md", md), ("gpu_benchmarks.log", "".join(log_text))):
            with open(os.path.join(folder, name), "w") as f:
                f.write(content)
    return md


if __name__ == "__main__":
    sys.exit(main())
