"""Compares sharding presets on one config: per-device memory, collectives, step time, TFLOP/s, MFU.

  python scripts/compare_sharding.py --config configs/allegro_sharding.py --host_devices 8 \\
      --presets dp,fsdp,tp,fsdp_tp,context --out sharding.json
  python scripts/compare_sharding.py --config configs/allegro_sharding.py:full --config.dit.attention=chunked \\
      --host_devices 8 --repeats 0
  python scripts/compare_sharding.py --config configs/allegro_40x360p.py --presets fsdp,fsdp_tp \\
      --mesh fsdp=16,tensor=4     # on a 64-chip slice, the same mesh for both presets

For each preset: build the mesh (the preset's default, see `programs.default_mesh_shape`, or
--mesh for every preset), validate the config against it (bad combinations stop here, naming the
numbers), compile the DiT train step and one guided DDIM sampling step with their shardings, read
per-device memory and the collectives from the compiled programs, then time them (median of
--repeats after one warm-up; --repeats 0 compiles only, which needs no device memory for the state:
a way to see whether a strategy would fit). --host_devices N simulates N devices on the CPU.
TFLOP/s per device counts model FLOPs (t2v_jax/parallel/flops.py); MFU only where the peak is known.
"""

import os
import sys


def _simulate_host_devices(argv):
    """--host_devices N must reach XLA before jax is imported, so it is read here, ahead of absl."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--host_devices=") else (
            argv[i + 1] if arg == "--host_devices" and i + 1 < len(argv) else None)
        if value:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + f" --xla_force_host_platform_device_count={int(value)}")
            os.environ["JAX_PLATFORMS"] = "cpu"


_simulate_host_devices(sys.argv)

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from t2v_jax import cli, systems  # noqa: E402
from t2v_jax.checks import ConfigError  # noqa: E402
from t2v_jax.models.text_to_video import dit_token_grid, latent_shape  # noqa: E402
from t2v_jax.parallel import flops, programs, report  # noqa: E402
from t2v_jax.parallel.distributed import initialize as initialize_distributed  # noqa: E402
from t2v_jax.parallel.mesh import MESH_AXES, mesh_from_config  # noqa: E402
from t2v_jax.parallel.rules import PRESETS, logical_rules  # noqa: E402
from t2v_jax.systems.latent_diffusion import validate_parallel  # noqa: E402

# What each --steps name compiles, and its title in the printed tables.
STEPS = {"train": ("train_step", programs.train_step_program, "DiT train step"),
         "sampling": ("sampling_step", programs.sampling_step_program, "one guided DDIM sampling step")}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=False)
_PRESETS = flags.DEFINE_list("presets", ["dp", "fsdp", "tp", "fsdp_tp", "context"],
                             f"Presets to compare, from {sorted(PRESETS)}.")
_MESH = flags.DEFINE_string("mesh", None, "Mesh for every preset, e.g. 'data=2,fsdp=4' (unstated axes 1, one "
                            "may be -1); default: each preset's own (see programs.default_mesh_shape).")
_STEPS = flags.DEFINE_list("steps", list(STEPS), f"Programs to compare, from {list(STEPS)}.")
_OUT = flags.DEFINE_string("out", None, "Where the JSON goes (optional).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after one warm-up; 0 compiles and analyses only.")
flags.DEFINE_integer("host_devices", None, "Simulate this many devices on the CPU (sets XLA_FLAGS and "
                     "JAX_PLATFORMS=cpu before jax starts).")
flags.mark_flags_as_required(["config"])

MIB = 2**20


def _parse_mesh(text: str) -> dict:
    shape = {}
    for item in text.split(","):
        axis, _, size = item.partition("=")
        if axis.strip() not in MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise app.UsageError(f"--mesh {text!r}: expected axis=size pairs over {MESH_AXES}, e.g. data=2,fsdp=4")
        shape[axis.strip()] = int(size)
    return shape


def _rates(model_flops: float, seconds, num_devices: int, peak) -> dict:
    if seconds is None:
        return dict(seconds=None, tflops_per_device=None, mfu=None)
    per_device = model_flops / seconds / num_devices / 1e12
    return dict(seconds=seconds, tflops_per_device=per_device, mfu=per_device / peak if peak else None)


def compare_one(config, preset: str, shape: dict, steps, repeats: int, peak) -> dict:
    """Validates, compiles, analyses and times the train and sampling steps under one preset."""
    num_devices = jax.device_count()
    config = config.copy_and_resolve_references()
    config.mesh.shape = dict(dict.fromkeys(MESH_AXES, 1), **shape)
    config.mesh.preset = preset
    validate_parallel(config, num_devices, train_fields=("train_dit",))
    mesh = mesh_from_config(config.mesh)
    rules = logical_rules(preset)
    grid, text_len, batch = dit_token_grid(config), config.text.max_length, config.train_dit.batch_size
    cfg_batch = 2 if config.sampling.guidance_scale != 1 else 1
    model_flops = {"train_step": flops.dit_train_flops(config.dit, grid, text_len, batch),
                   "sampling_step": flops.dit_forward_flops(config.dit, grid, text_len, cfg_batch * batch)}
    result = dict(preset=preset, mesh=dict(mesh.shape))
    for key in steps:
        name, build, _ = STEPS[key]
        print(f"[{preset}] {name}: building and compiling", flush=True)
        start = time.perf_counter()
        program = build(systems.get(config).denoiser_stage(config), config, mesh, rules, abstract=repeats == 0)
        compiled = program.compile()
        result[name] = _analyse(program, compiled, name)
        result[name].update(compile_seconds=time.perf_counter() - start, model_flops=model_flops[name])
        seconds = None
        if repeats:
            print(f"[{preset}] {name}: compiled in {result[name]['compile_seconds']:.0f} s; timing {repeats} "
                  "calls", flush=True)
            seconds = report.median_seconds(_caller(compiled, program.args, donates_state=name == "train_step"),
                                            repeats)
            print(f"[{preset}] {name}: median {seconds:.3f} s", flush=True)
        result[name].update(_rates(model_flops[name], seconds, num_devices, peak))
    return result


def _analyse(program, compiled, name: str) -> dict:
    """Memory (arguments split into the state's parts) and collectives of one compiled program."""
    if name == "train_step":
        state = program.args[0]
        parts = {"params": state.params, "ema_params": state.ema_params, "opt_state": state.opt_state}
    else:
        parts = {"params": program.args[0]}
    return dict(memory=report.memory_per_device(compiled, parts), collectives=report.collectives(compiled))


def _caller(compiled, args, *, donates_state: bool):
    """fn() running the compiled program once; the train step donates its state, so each call
    feeds the new state to the next, as training does."""
    if not donates_state:
        return lambda: compiled(*args)
    args = list(args)

    def call():
        args[0], metrics = compiled(*args)
        return metrics["loss"]

    return call


def _mib(value):
    return f"{value / MIB:,.1f}"


def _collective_cell(entry: dict) -> str:
    return f"{entry['count']} / {_mib(entry['bytes'])}" if entry["count"] else "-"


def table(rows: list[dict], step: str) -> str:
    """Markdown table of one program across presets: memory in MiB per device, collectives as count / MiB."""
    memory_columns = (("params", "params"), ("ema_params", "EMA"), ("opt_state", "opt state"),
                      ("temporaries", "temps"), ("total", "total"))
    if step == "sampling_step":
        memory_columns = (("params", "params"), ("temporaries", "temps"), ("total", "total"))
    header = (["preset", "mesh d/f/c/t"] + [title for _, title in memory_columns]
              + [kind for kind in report.COLLECTIVES] + ["step s", "TFLOP/s/dev", "MFU"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['preset']} | {row['error'].splitlines()[0][:200]} |")
            continue
        part = row[step]
        cells = [row["preset"], "/".join(str(row["mesh"][axis]) for axis in MESH_AXES)]
        cells += [_mib(part["memory"][key]) for key, _ in memory_columns]
        cells += [_collective_cell(part["collectives"][kind]) for kind in report.COLLECTIVES]
        cells += ["n/a" if part["seconds"] is None else f"{part['seconds']:.3f}",
                  "n/a" if part["tflops_per_device"] is None else f"{part['tflops_per_device']:.4f}",
                  "n/a" if part["mfu"] is None else f"{part['mfu']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    initialize_distributed(config.get("distributed"))
    if systems.get(config).denoiser_stage is None:
        raise ValueError(f"system {systems.get(config).name!r} has no diffusion denoiser stage to compare "
                         "sharding presets on (its System.denoiser_stage is None)")
    for flag, allowed in ((_PRESETS, PRESETS), (_STEPS, STEPS)):
        unknown = sorted(set(flag.value) - set(allowed))
        if unknown:
            raise app.UsageError(f"--{flag.name}: unknown {unknown}; allowed: {sorted(allowed)}")
    num_devices = jax.device_count()
    device = jax.devices()[0]
    peak = flops.peak_tflops(device)
    print(f"{num_devices} x {device.device_kind} ({jax.default_backend()}); batch {config.train_dit.batch_size}, "
          f"latents {latent_shape(config)}, DiT {config.dit.num_layers} layers x width {config.dit.width}, "
          f"{config.dit.num_heads} heads, tokens {dit_token_grid(config)}", flush=True)
    rows, failed = [], False
    for preset in _PRESETS.value:
        shape = _parse_mesh(_MESH.value) if _MESH.value else programs.default_mesh_shape(preset, num_devices, config)
        try:
            rows.append(compare_one(config, preset, shape, _STEPS.value, _REPEATS.value, peak))
        except ConfigError as error:
            print(f"[{preset}] skipped, the config does not fit mesh {shape}: {error}", flush=True)
            rows.append(dict(preset=preset, mesh=shape, error=str(error)))
            failed = True
        except Exception as error:  # noqa: BLE001 -- one broken preset must not lose the others' figures
            traceback.print_exc()
            print(f"[{preset}] failed on mesh {shape}: {type(error).__name__}: {error}", flush=True)
            rows.append(dict(preset=preset, mesh=shape, error=f"{type(error).__name__}: {error}"))
            failed = True
    result = dict(date=datetime.date.today().isoformat(), device=device.device_kind, backend=jax.default_backend(),
                  num_devices=num_devices, host=platform.node(), jax=jax.__version__, peak_tflops=peak,
                  batch=config.train_dit.batch_size, latent_thwc=latent_shape(config),
                  token_grid=dit_token_grid(config), text_len=config.text.max_length, dit=config.dit.to_dict(),
                  repeats=_REPEATS.value, presets=rows)
    for key in _STEPS.value:
        name, _, title = STEPS[key]
        print(f"\n{title}, per device (memory MiB; collectives: count / MiB of results per call):")
        print(table(rows, name))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)
        print(f"-> {_OUT.value}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
