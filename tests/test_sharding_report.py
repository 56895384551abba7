"""Per-device memory and collectives read from compiled programs, and scripts/compare_sharding.py.

The pytest process keeps its single CPU device, so whatever needs 8 devices runs in a subprocess
that asks XLA for 8 host devices. Subprocesses also get flags that only change CPU code generation,
not partitioning or buffer sizes, and cut compile time several fold.
"""

import json
import os
import subprocess
import sys

import pytest

from t2v_jax.parallel import report
from xla_flags import FAST_CPU_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Async pairs, a tuple-shaped all-reduce, an async-wrapped reduce-scatter and a loop of known trip count.
HAND_WRITTEN_HLO = """\
HloModule m, num_partitions=8

add {
  x = f32[] parameter(0)
  y = f32[] parameter(1)
  ROOT s = f32[] add(x, y)
}

wrapped_reduce_scatter {
  p = f32[64]{0} parameter(0)
  ROOT rs = f32[8]{0} reduce-scatter(p), dimensions={0}, to_apply=add
}

body {
  c = (s32[], bf16[4,16]{1,0}) parameter(0)
  i = s32[] get-tuple-element(c), index=0
  x = bf16[4,16]{1,0} get-tuple-element(c), index=1
  ag-start = (bf16[4,16]{1,0}, bf16[32,16]{1,0}) all-gather-start(x), dimensions={0}
  ag-done = bf16[32,16]{1,0} all-gather-done(ag-start)
  ROOT t = (s32[], bf16[4,16]{1,0}) tuple(i, x)
}

cond {
  c = (s32[], bf16[4,16]{1,0}) parameter(0)
  ROOT p = pred[] constant(true)
}

ENTRY main {
  a = f32[64]{0} parameter(0)
  b = bf16[4,16]{1,0} parameter(1)
  ar = (f32[64]{0}, f32[2,3]{1,0}) all-reduce(a, a), to_apply=add
  ars = f32[64]{0} all-reduce-start(a), to_apply=add
  ard = f32[64]{0} all-reduce-done(ars)
  rs-start = ((f32[64]{0}), f32[8]{0}) async-start(a), calls=wrapped_reduce_scatter
  rs-done = f32[8]{0} async-done(rs-start), calls=wrapped_reduce_scatter
  cps = (f32[64]{0}, f32[64]{0}, u32[], u32[]) collective-permute-start(a), source_target_pairs={{0,1}}
  cpd = f32[64]{0} collective-permute-done(cps)
  zero = s32[] constant(0)
  t0 = (s32[], bf16[4,16]{1,0}) tuple(zero, b)
  w = (s32[], bf16[4,16]{1,0}) while(t0), condition=cond, body=body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT out = f32[64]{0} add(ard, cpd)
}
"""


def test_collectives_count_async_pairs_once_and_loops_per_iteration():
    result = report.collectives(HAND_WRITTEN_HLO)
    # The tuple all-reduce (256 + 24 bytes) and the async one (256 bytes, counted at its done op).
    assert result["all-reduce"] == {"count": 2, "bytes": 256 + 24 + 256}
    # Inside the async wrapper, which runs once although both start and done name it.
    assert result["reduce-scatter"] == {"count": 1, "bytes": 32}
    assert result["collective-permute"] == {"count": 1, "bytes": 256}
    # Five iterations of a gather to bf16[32,16].
    assert result["all-gather"] == {"count": 5, "bytes": 5 * 32 * 16 * 2}
    assert result["all-to-all"] == {"count": 0, "bytes": 0}


def _run(args, timeout=240):
    env = dict(os.environ, XLA_FLAGS=FAST_CPU_COMPILE, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


KNOWN_PROGRAM = r'''
import json, os
os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from t2v_jax.parallel import report

mesh = jax.make_mesh((8,), ("x",))

def local(x_ld):
    # A sum over devices per iteration (it depends on the carry, so it cannot leave the loop),
    # then one gather of the result.
    y_ld = jax.lax.fori_loop(0, 3, lambda i, c: c + jax.lax.psum(c, "x"), x_ld)
    return jax.lax.all_gather(y_ld, "x", tiled=True)

x = jax.ShapeDtypeStruct((8 * 16, 32), jnp.float32, sharding=NamedSharding(mesh, P("x")))
w = jax.ShapeDtypeStruct((32, 32), jnp.float32, sharding=NamedSharding(mesh, P()))
program = jax.jit(lambda x, w: jax.shard_map(local, mesh=mesh, in_specs=P("x"), out_specs=P(), check_vma=False)(x) @ w)
compiled = program.lower(x, w).compile()
print(json.dumps(dict(collectives=report.collectives(compiled),
                      memory=report.memory_per_device(compiled, {"x": x, "w": w}))))
'''


def test_report_reads_a_compiled_program_on_8_devices():
    result = _run(["-c", KNOWN_PROGRAM])
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    collectives = out["collectives"]
    assert collectives["all-reduce"] == {"count": 3, "bytes": 3 * 16 * 32 * 4}
    assert collectives["all-gather"] == {"count": 1, "bytes": 128 * 32 * 4}
    memory = out["memory"]
    # One 16-row shard of x and all of w per device; nothing else is an argument.
    assert memory["x"] == 16 * 32 * 4 and memory["w"] == 32 * 32 * 4
    assert memory["arguments"] == memory["x"] + memory["w"] and memory["other_arguments"] == 0
    assert memory["outputs"] == 128 * 32 * 4


def _tiny_config_file(tmp_path):
    """tiny_config with widths every preset can split over 8 devices: DiT 48 = 4 heads x 12, text 16."""
    path = tmp_path / "tiny_sharding.py"
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
        "from tiny import tiny_config\n\n"
        "def get_config():\n"
        f"    config = tiny_config({str(tmp_path / 'data')!r})\n"
        "    config.dit.update(width=48, num_heads=4)\n"
        "    config.train_dit.batch_size = 8\n"
        "    return config\n")
    return str(path)


def test_compare_sharding_fsdp_shards_the_state_that_dp_replicates(tmp_path):
    out = tmp_path / "table.json"
    result = _run(["scripts/compare_sharding.py", f"--config={_tiny_config_file(tmp_path)}", "--host_devices=8",
                   "--presets=dp,fsdp", "--steps=train", "--repeats=0", f"--out={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| dp | 8/1/1/1 |" in result.stdout and "| fsdp | 1/8/1/1 |" in result.stdout
    table = json.loads(out.read_text())
    assert table["num_devices"] == 8
    dp, fsdp = (row["train_step"] for row in table["presets"])

    def state_bytes(step):
        return sum(step["memory"][part] for part in ("params", "ema_params", "opt_state"))

    # fsdp splits every parameter's embed axis 8 ways; what stays whole (norms' and biases' of
    # other axes, the caption projection's input) is small.
    assert state_bytes(fsdp) < state_bytes(dp) / 3
    assert dp["memory"]["opt_state"] > dp["memory"]["params"] > 0
    # dp: the gradients, all of them, are summed over devices and nothing is gathered.
    assert dp["collectives"]["all-reduce"]["bytes"] >= dp["memory"]["params"]
    assert dp["collectives"]["all-gather"]["count"] == 0
    # fsdp gathers parameters before using them.
    assert fsdp["collectives"]["all-gather"]["bytes"] > fsdp["memory"]["params"]
    assert dp["seconds"] is None and dp["model_flops"] > 0


def test_compare_sharding_times_tp_and_rejects_a_batch_that_does_not_split(tmp_path):
    """Batch 4 cannot split over dp's 8 devices: dp is refused before compiling, naming the numbers;
    tp (data 2 x tensor 4) runs, and its forward pass all-reduces activations, which dp's never does."""
    out = tmp_path / "table.json"
    result = _run(["scripts/compare_sharding.py", f"--config={_tiny_config_file(tmp_path)}", "--host_devices=8",
                   "--config.train_dit.batch_size=4", "--presets=dp,tp", "--steps=sampling", "--repeats=1",
                   f"--out={out}"])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "[dp] sampling_step: compiling" not in result.stdout
    dp, tp = json.loads(out.read_text())["presets"]
    assert "train_dit.batch_size: 4 is not divisible by the data-parallel size 8" in dp["error"]
    assert tp["mesh"] == {"data": 2, "fsdp": 1, "context": 1, "tensor": 4}
    step = tp["sampling_step"]
    assert step["collectives"]["all-reduce"]["count"] > 0
    assert step["seconds"] > 0 and step["tflops_per_device"] > 0
    assert step["mfu"] is None  # no known peak for a CPU


@pytest.mark.parametrize("preset, expected", [
    ("dp", {"data": 8}), ("fsdp", {"fsdp": 8}), ("tp", {"data": 2, "tensor": 4}),
    ("fsdp_tp", {"fsdp": 4, "tensor": 2}), ("context", {"fsdp": 4, "context": 2})])
def test_default_mesh_shapes(preset, expected, tmp_path):
    import importlib.util

    from t2v_jax.parallel.programs import default_mesh_shape

    spec = importlib.util.spec_from_file_location("tiny_sharding", _tiny_config_file(tmp_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert default_mesh_shape(preset, 8, module.get_config()) == expected
