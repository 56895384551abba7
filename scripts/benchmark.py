"""Runs the speed benchmark the config's system declares and writes JSON; every figure comes with a
baseline measured in the same run (what each benchmark times, and against what, is in its module
under t2v_jax/benchmarks/; the commands behind every published figure are in BENCHMARKS.md).

  python scripts/benchmark.py --config configs/quickstart.py --out benchmark.json   # DiT train step + sampling
  python scripts/benchmark.py --config CONFIG --vs_diffusers                        # DiT step vs the reference
  python scripts/benchmark.py --config CONFIG --lengths 256,16384                   # decoding benchmarks
  python scripts/benchmark.py --config configs/malt_digits.py --segments 4,16,64      # any-length generation

A diffusion system times one DiT train step (against full rematerialisation) and one whole sampling
run (one scanned jit against a per-step Python loop); --vs_diffusers times one denoising step against
diffusers' implementation of the same model. An autoregressive system times recurrent decoding against
a KV-cache twin at each of --lengths. A long-video system compiles its generation program at each of
--segments and reports its memory and time per segment against the smallest count. TFLOP/s counts model FLOPs (t2v_jax/parallel/flops.py); MFU is
printed only where the device's peak is known.
"""

import datetime
import json
import os
import platform

import jax
from absl import flags
from ml_collections import config_flags

from t2v_jax import cli, systems
from t2v_jax.config import validate
from t2v_jax.parallel.distributed import initialize as initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=False)
_OUT = flags.DEFINE_string("out", "benchmark.json", "Where the JSON goes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions after one warm-up.")
_SKIP_BASELINES = flags.DEFINE_bool("skip_baselines", False, "Time only our configuration.")
_VS_DIFFUSERS = flags.DEFINE_bool("vs_diffusers", False, "Time one DiT denoising step against diffusers' "
                                  "implementation of the same model (needs the [ref] extra) instead of train/sampling.")
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024", "4096", "16384"], "Decoding benchmarks: total sequence lengths.")
_DECODE_STEPS = flags.DEFINE_integer("decode_steps", 128, "Decoding benchmarks: tokens decoded (and timed) at the end of "
                                     "each length.")
_SEGMENTS = flags.DEFINE_list("segments", ["4", "16", "64"], "Any-length generation (MALT): segment counts.")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", 1, "Decoding benchmarks: sequences decoded at once.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    if _VS_DIFFUSERS.value:
        # JAX and torch share the device in this mode: JAX must not grab 75% of it up front.
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    initialize_distributed(_CONFIG.value.get("distributed"))
    config = validate(_CONFIG.value)
    system = systems.get(config)
    if system.benchmark is None:
        raise ValueError(f"system {system.name!r} declares no benchmark")
    options = systems.BenchmarkOptions(
        repeats=_REPEATS.value, skip_baselines=_SKIP_BASELINES.value, vs_diffusers=_VS_DIFFUSERS.value,
        lengths=tuple(int(n) for n in _LENGTHS.value), decode_steps=_DECODE_STEPS.value,
        decode_batch=_DECODE_BATCH.value, segments=tuple(int(n) for n in _SEGMENTS.value))
    result = dict(date=datetime.date.today().isoformat(), system=system.name, device=jax.devices()[0].device_kind,
                  backend=jax.default_backend(), num_devices=jax.device_count(), host=platform.node(),
                  jax=jax.__version__, **system.benchmark(config, options))
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    print(f"-> {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
