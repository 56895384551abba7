"""Every sharding preset computes what one device computes, on 8 (fake) CPU devices.

The pytest process keeps its single CPU device, so the 8-device work runs once, in a subprocess
(`multidevice_checks.py`, all checks and presets in one process to pay JAX's import and the
compiles once), which writes per-leaf differences to the 1-device reference as JSON; the tests
below judge them. Config validation needs no devices and runs here.

What is compared, per preset (mesh in multidevice_checks.MESHES), against the same computation
on a 1-device mesh with the same parameters and data, all float32:
- train: loss and gradients (jax.value_and_grad of DiTStage.latent_loss) and one step of
  trainer.make_train_step (metrics, the whole new TrainState, and the step's change of the params
  and of the EMA), jitted with the state's and batch's shardings as trainer.fit does. The step is
  training's second, at a non-zero learning rate (the first runs at 0 and moves nothing);
- sample: one classifier-free-guided DDIM step (guided_predictor, to_x0_eps, ddim_step);
- vae: tiled vae_decode (2 x 2 x 2 tiles) of a latent batch split over the data axes;
- checkpoint: a TrainState saved under `fsdp` after two steps, restored onto `tp`'s shardings;
  the next step against the same step under `fsdp` without the round trip.
- malt_train (slow, its own subprocess): the train step comparison for MALTStage.loss_fn (a scan over
  3 segments carrying the memory, 4 memory tokens on the `tensor` axis), same tolerances.

Tolerances. Sharding changes the order of float32 reductions (partial sums per device, then an
all-reduce), so results agree to rounding, not bit for bit. Measured (loaded 2-core CPU,
jax 0.10.2): loss <= 3.5e-7 relative, per-leaf gradients <= 2e-6 of the leaf's largest value,
sampled latents and decoded video <= 1.2e-6 of their largest value. RTOL = 1e-5 leaves a 5x
margin over the worst of these, while a sharding bug (a wrong slice, a missing reduction, a
per-device random stream) moves results by percent. A step's change of the params (~ the learning
rate per element under Adam) agrees to <= 9e-5 of its leaf's largest change, of the EMA to <= 3e-5;
UPDATE_RTOL = 1e-3 keeps a 10x margin and still fails a learning rate 1% off, or half of each
gradient leaf 50% off (a uniform scale of all gradients does not reach the update through clipping
and Adam; the gradient and grad-norm comparisons catch that). Leaves whose true gradient is zero (the
cross-attention key bias: softmax ignores a constant added to every logit) hold rounding noise
only, which is why each tree also gets an absolute slack of ATOL_FRACTION of its largest
value; and why, after an Adam step with a non-zero learning rate, such leaves may differ by up
to the step size (Adam divides the noise by its own magnitude).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from multidevice_checks import (
    BATCH, CHECKPOINT_FROM, CHECKPOINT_TO, MESHES, NUM_DEVICES, MALTSetup, equivalence_config)
from t2v_jax.checks import ConfigError
from t2v_jax.config import validate
from t2v_jax.models.text_to_video import num_dit_tokens
from t2v_jax.systems.latent_diffusion import validate_parallel
from t2v_jax.parallel.mesh import MESH_AXES, resolve_mesh_shape
from t2v_jax.parallel.rules import PRESETS

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET_NAMES = sorted(PRESETS)
RTOL = 1e-5
ATOL_FRACTION = 1e-6
UPDATE_RTOL = 1e-3
# Integer leaves (step counter, raw RNG key) must match exactly.
EXACT_LEAVES = (".step", ".rng")


def _failures(rows, *, rtol=RTOL, atol_fraction=ATOL_FRACTION, exact=EXACT_LEAVES, slack=None):
    """Leaves where |got - ref| > rtol * max|ref leaf| + atol_fraction * max|ref tree| (float leaves),
    or != 0 (`exact` leaves). `slack` maps a leaf path to a larger allowed absolute difference."""
    scale = max((ref for path, _, ref in rows if path not in exact), default=0.0)
    failures = []
    for path, diff, ref in rows:
        if path in exact:
            allowed = 0.0
        else:
            allowed = rtol * ref + atol_fraction * scale
            allowed = max(allowed, (slack or {}).get(path, 0.0))
        if not diff <= allowed:
            failures.append(f"{path}: max|diff| {diff:.3g} > {allowed:.3g} (max|ref| {ref:.3g})")
    return failures


def _assert_close(rows, what, **kwargs):
    failures = _failures(rows, **kwargs)
    assert not failures, f"{what}: {len(failures)} of {len(rows)} leaves differ:\n" + "\n".join(failures[:20])


def _noise_leaves(grad_rows):
    """Parameter paths whose gradient is only rounding noise (true gradient zero; here the
    cross-attention key bias: softmax ignores a constant added to every logit). Adam turns noise into
    an update of noise / |noise| times the learning rate, so such a leaf's params (and EMA) may differ
    by up to a step, 2 x learning rate."""
    grad_scale = max(ref for _, _, ref in grad_rows)
    noise = [path for path, _, ref in grad_rows if ref <= ATOL_FRACTION * grad_scale]
    assert len(noise) <= 2, noise
    return noise


def _run_checks(out, *checks):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_checks.py"), str(out), *checks],
                          capture_output=True, text=True, timeout=900, cwd=os.path.dirname(HERE))
    if proc.returncode != 0:
        pytest.fail(f"multidevice_checks.py exited with {proc.returncode}:\n{proc.stderr[-5000:]}")
    with open(out) as f:
        data = json.load(f)
    assert data["device_count"] == NUM_DEVICES
    return data


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every multi-device check once: ~60 s on a loaded 2-core CPU (compiles: 6 meshes x
    (train step, sampling step, decode))."""
    return _run_checks(tmp_path_factory.mktemp("multidevice") / "results.json")


@pytest.fixture(scope="module")
def malt_results(tmp_path_factory):
    """The MALT train step under every preset: ~2 min on a 2-core CPU (a scan over 3 segments, each a
    denoiser and a memory-update pass, compiled for 6 meshes)."""
    return _run_checks(tmp_path_factory.mktemp("multidevice") / "malt.json", "malt_train")


def _preset_entry(results, check, preset):
    entry = results[check].get(preset)
    assert entry is not None, f"no {check} result for preset {preset!r}: add a mesh to multidevice_checks.MESHES"
    assert "error" not in entry, f"{check} under preset {preset!r} (mesh {MESHES[preset]}) raised:\n{entry['error']}"
    return entry


# ---------------------------------------------------------------------------------------------
# In-process: the meshes are meaningful, and bad settings fail in validation, before compiling.


def _model_mesh_axes(preset):
    """Mesh axes the preset maps a non-batch logical axis to (parameters, tokens)."""
    axes = set()
    for logical, mesh_axes in PRESETS[preset]:
        if logical != "batch" and mesh_axes is not None:
            axes.update((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes)
    return axes


def _config_for(preset, **mesh_shape):
    config = equivalence_config()
    config.mesh.shape = dict(mesh_shape)
    config.mesh.preset = preset
    return config


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_each_preset_has_a_valid_mesh_that_uses_its_axes(preset):
    assert preset in MESHES, f"preset {preset!r} has no mesh in multidevice_checks.MESHES"
    sizes = dict(zip(MESH_AXES, resolve_mesh_shape(MESHES[preset], NUM_DEVICES)))
    for axis in _model_mesh_axes(preset):
        assert sizes[axis] > 1, f"{preset}: mesh {MESHES[preset]} leaves its axis {axis!r} at 1"
    assert sizes["data"] * sizes["fsdp"] > 1, f"{preset}: mesh {MESHES[preset]} does not split the batch"
    config = _config_for(preset, **MESHES[preset])
    validate(config, num_devices=NUM_DEVICES)
    assert config.train_dit.batch_size == BATCH and num_dit_tokens(config) % sizes["context"] == 0


class _CompileWatch:
    """Records JAX tracing/compilation events while active."""

    def __enter__(self):
        self.events = []
        self._listener = lambda name, *args, **kwargs: (
            self.events.append(name) if name.startswith("/jax/core/compile/") else None)
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


@pytest.mark.parametrize("preset, mesh_shape, field, numbers", [
    # 3 x 2 devices on an 8-device machine.
    ("fsdp", dict(data=3, fsdp=2), "mesh.shape", ["multiplies to 6", "8 devices"]),
    # A -1 axis that cannot be filled: 3 does not divide 8.
    ("tp", dict(data=-1, tensor=3), "mesh.shape", ["3", "8 devices"]),
    # Batch 8 over data x fsdp = 16 (the mesh itself is fine on 16 devices).
    ("fsdp", dict(data=4, fsdp=4), "train_vae.batch_size", ["8 is not divisible", "data-parallel size 16"]),
    # 4 heads over a tensor axis of 8.
    ("tp", dict(data=1, tensor=8), "dit.num_heads", ["4 heads", "tensor=8"]),
    # 64 tokens over a context axis of 3 (on 6 devices).
    ("context", dict(data=2, context=3), "mesh.shape.context", ["64 video tokens", "(4, 4, 4)", "axis of 3"]),
])
def test_bad_parallel_settings_fail_in_validation_with_the_numbers(preset, mesh_shape, field, numbers):
    num_devices = {"train_vae.batch_size": 16, "mesh.shape.context": 6}.get(field, NUM_DEVICES)
    config = _config_for(preset, **mesh_shape)
    with _CompileWatch() as watch:
        for check in (lambda: validate_parallel(config, num_devices), lambda: validate(config, num_devices)):
            with pytest.raises(ConfigError) as error:
                check()
            message = str(error.value)
            assert f"config.{field}" in message, message
            for number in numbers:
                assert number in message, f"{number!r} missing from: {message}"
    assert watch.events == [], f"validation traced or compiled something: {watch.events}"


def test_batch_not_divisible_by_the_data_axes_names_the_dit_batch_too():
    config = _config_for("fsdp", data=2, fsdp=4)
    config.train_dit.batch_size = 12
    with pytest.raises(ConfigError, match=r"config\.train_dit\.batch_size: 12 is not divisible by the "
                                          r"data-parallel size 8 \(mesh data 2 x fsdp 4\)"):
        validate_parallel(config, NUM_DEVICES)


# ---------------------------------------------------------------------------------------------
# 8 devices (one subprocess for all of these).


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_train_step_matches_one_device(results, preset):
    _assert_train_step_matches(_preset_entry(results, "train", preset), preset, equivalence_config().train_dit)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_malt_train_step_matches_one_device(malt_results, preset):
    """MALTStage.loss_fn whole: the scan over segments carrying the memory, its updates and their gradient cut."""
    _assert_train_step_matches(_preset_entry(malt_results, "malt_train", preset), preset,
                               MALTSetup.make_config().train_malt)


def _assert_train_step_matches(entry, preset, config):
    _assert_close(entry["loss"], f"{preset}: loss")
    _assert_close(entry["grads"], f"{preset}: gradients")
    _assert_close(entry["step_metrics"], f"{preset}: step metrics (loss, grad_norm, latent_std)")
    # The compared step is training's second (the first, at learning rate 0, only fills the moments),
    # at learning rate / warmup_steps: Adam moves every parameter by about that much.
    step_size = 2 * config.learning_rate
    assert entry["start_step"] == 1 and config.warmup_steps == 2
    noise = _noise_leaves(entry["grads"])
    largest_update = max(ref for _, _, ref in entry["param_updates"])
    assert largest_update > 0.4 * config.learning_rate, largest_update
    _assert_close(entry["param_updates"], f"{preset}: change of the params in one step", rtol=UPDATE_RTOL,
                  atol_fraction=UPDATE_RTOL, slack={path: step_size for path in noise})
    _assert_close(entry["ema_updates"], f"{preset}: change of the EMA in one step", rtol=UPDATE_RTOL,
                  atol_fraction=UPDATE_RTOL, slack={path: (1 - config.ema_decay) * step_size for path in noise})
    slack = {f".{tree}{path}": step_size for tree in ("params", "ema_params") for path in noise}
    _assert_close(entry["step_state"], f"{preset}: state after one step", slack=slack)
    # The compiled step really is distributed (collectives in the partitioned HLO), and
    # parameters are split wherever the preset has rules beyond the batch.
    assert sum(entry["step_collectives"].values()) > 0, entry["step_collectives"]
    if len(PRESETS[preset]) > 1:
        assert entry["split_param_leaves"] > 0, f"{preset}: no parameter is sharded"


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_guided_ddim_step_matches_one_device(results, preset):
    entry = _preset_entry(results, "sample", preset)
    # The step moves the latents by far more than the tolerance, so equality is not trivial.
    assert entry["x_prev_change"] > 1.0
    _assert_close(entry["x_prev"], f"{preset}: x_prev of one guided DDIM step")


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_tiled_vae_decode_of_a_split_batch_matches_one_device(results, preset):
    entry = _preset_entry(results, "vae", preset)
    # Where the preset's VAE shardings cannot be placed (see the test below), this decodes with
    # replicated VAE parameters, so the split batch and tiling are still checked.
    assert entry["video_shape"] == [BATCH, 6, 12, 12, 3]
    _assert_close(entry["video"], f"{preset}: decoded video")


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_vae_parameters_can_be_placed_on_each_preset(results, preset):
    """The preset's VAE shardings can hold the VAE's parameters (every split dimension divides
    its mesh axes), as VAE training and the pipelines need."""
    entry = _preset_entry(results, "vae", preset)
    assert "param_placement_error" not in entry, entry["param_placement_error"]


def test_checkpoint_saved_under_fsdp_resumes_under_tp(results):
    entry = results["checkpoint"]
    assert "error" not in entry, entry.get("error")
    assert (CHECKPOINT_FROM, CHECKPOINT_TO) == ("fsdp", "tp")
    # Orbax reshards exactly: every restored leaf equals the saved one, on tp's shardings.
    assert entry["restored_on_target_shardings"] and entry["target_split_leaves"] > 0
    assert entry["step"] == 2 and entry["params_changed_by_two_steps"] > 1e-4
    _assert_close(entry["restored_vs_saved"], "restored vs saved", rtol=0, atol_fraction=0)
    _assert_close(entry["restored_same_vs_saved"], "restored onto fsdp vs saved", rtol=0, atol_fraction=0)
    # The next step under tp from the restored state vs under fsdp without the round trip.
    _assert_close(entry["next_loss"], "next loss")
    _assert_close(entry["next_metrics"], "next step's metrics")
    _assert_close(entry["next_grads"], "next step's gradients")
    # A leaf whose gradient is only rounding noise may differ by up to a step (see _noise_leaves).
    noise_leaves = _noise_leaves(entry["next_grads"])
    step_size = 2 * equivalence_config().train_dit.learning_rate
    slack = {f".{tree}{path}": step_size for tree in ("params", "ema_params") for path in noise_leaves}
    _assert_close(entry["next_state"], "state after the next step", slack=slack)
    np.testing.assert_allclose(*entry["losses"], rtol=RTOL)
