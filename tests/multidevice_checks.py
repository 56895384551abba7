"""The 8-device half of test_sharding_equivalence.py: every sharding preset against one device.

Run as a script, in its own process, because the device count is fixed when JAX starts and the
pytest process must keep its single CPU device:

    python tests/multidevice_checks.py OUT.json [CHECK ...]

CHECK is any of train, sample, vae, checkpoint (default: all of these) and malt_train (named only). The script fakes 8 CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8), builds each preset's mesh from MESHES,
and writes per-leaf differences to the 1-device reference (same process, same initial
parameters, mesh of jax.devices()[:1]) as JSON: {check: {preset: {name: [[path, max|a - b|,
max|ref|], ...]}}}. Tolerances are decided by the test, not here.

Not collected by pytest (the name does not start with test_); importing it (for MESHES and
equivalence_config) does not touch XLA_FLAGS or the device count.
"""

import os
import sys

if __name__ == "__main__":
    # 8 fake CPU devices, and xla_flags' cheapest code generation (not partitioning; the reference shares it, same
    # process): it cuts compile time about 8x (a train step: 20 s -> 2.5 s on a loaded 2-core CPU), which is most
    # of this script's run time.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from xla_flags import with_fast_compile
    os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS")) + " --xla_force_host_platform_device_count=8"

import functools
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.models.text_to_video import latent_shape
from t2v_jax.diffusion.samplers import timesteps
from t2v_jax.models.video_vae import VideoVAE, vae_decode
from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.mesh import make_mesh
from t2v_jax.parallel.programs import denoising_step
from t2v_jax.parallel.report import collectives
from t2v_jax.train.checkpoint import Checkpointer, abstract_like
from t2v_jax.train.stages import DiTStage, VAEStage
from t2v_jax.train.trainer import (
    RNG_IMPL, TrainState, make_optimizer, make_rng, make_train_step, sharding_context, train_state_shardings)
from t2v_jax.systems.malt import MALTStage
from tiny import load_config, tiny_config

NUM_DEVICES = 8
BATCH = 8
# One mesh per preset, each giving every mesh axis its preset names a size above 1 (checked in
# the test), so that each rule really splits something.
MESHES = {
    "dp": {"data": 8},
    "fsdp": {"data": 2, "fsdp": 4},
    "tp": {"data": 2, "tensor": 4},
    "fsdp_tp": {"fsdp": 2, "tensor": 4},
    "context": {"fsdp": 2, "context": 4},
}
CHECKPOINT_FROM, CHECKPOINT_TO = "fsdp", "tp"
REFERENCE_MESH = {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}
CHECKS = ("train", "sample", "vae", "checkpoint")
# Run only when named (the slow set): the MALT train step, with its own setup (MALTSetup).
EXTRA_CHECKS = ("malt_train",)
CAPTIONS = ["a red 3 moving left", "a blue 7 moving up", "a green 1 moving right", "a white 0",
            "a yellow 5 moving down", "an 8", "a purple 2 moving left", ""]


def equivalence_config():
    """tiny_config with 4 heads everywhere (the tensor axis is 4) and 4 x 6 = 24 DiT width
    (3D RoPE needs a head dim divisible by 6); 16 px, 8 frames -> (4, 8, 8, 8) latents ->
    4 x 4 x 4 = 64 tokens, divisible by the context axis. Every sharded dimension divides its
    axis: widths 16/24, mlp 32/96, VAE channels 4/8/16."""
    config = tiny_config(tempfile.gettempdir())
    # The geometry these checks were sized for (time and space halved, patch (1, 2, 2)), whatever the
    # quickstart's VAE and patch are.
    config.vae.update(block_out_channels=(4, 8), temporal_layers=True, temporal_downsample=(True, False),
                      spatial_downsample=(True, False))
    config.dit.update(num_layers=1, width=24, num_heads=4, caption_channels=16, patch_thw=(1, 2, 2))
    config.text.encoder.update(width=16, num_layers=1, num_heads=4, head_dim=4, mlp_dim=32)
    for train_cfg in (config.train_vae, config.train_dit):
        train_cfg.batch_size = BATCH
    # Two linear-warmup steps: step 0 runs at learning rate 0, so the checkpoint check needs a
    # second step before the saved params differ from the initial ones.
    config.train_dit.update(warmup_steps=2, num_steps=10)
    # Small VAE tiles (in pixels; latent cells are half as many), so a small latent has 8 tiles.
    config.vae.update(tile_frames=4, tile_size=8, tile_overlap_frames=2, tile_overlap=(4, 4))
    return config


def random_like(abstract, data):
    """Random parameters for a tree of ShapeDtypeStructs, of about the scales of an init: kernels
    ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), everything else ~ N(0, 0.1^2).

    Rather than the models' flax init: that compiles a whole forward pass (seconds for the DiT
    and text encoder, 20 s for the VAE on a loaded 2-core CPU), and it zero-initialises output layers
    (DiT proj_out, cross-attention out, VAE convs), which would make most gradients exactly zero
    and most outputs trivially equal."""
    def leaf(path, x):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            std, mean = np.prod(x.shape[:-1]) ** -0.5, 0.0
        else:
            std, mean = 0.1, 1.0 if "scale" in name else 0.0
        return (mean + std * data.standard_normal(x.shape)).astype(x.dtype)
    return jax.tree_util.tree_map_with_path(leaf, abstract)


def leaf_diffs(got, ref):
    """[[path, max|got - ref|, max|ref|], ...] over the leaves of two pytrees of equal structure."""
    got_leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(got))
    ref_leaves = jax.tree.leaves(jax.device_get(ref))
    assert len(got_leaves) == len(ref_leaves)
    rows = []
    for (path, g), r in zip(got_leaves, ref_leaves):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        assert g.shape == r.shape, (jax.tree_util.keystr(path), g.shape, r.shape)
        rows.append([jax.tree_util.keystr(path), float(np.max(np.abs(g - r), initial=0.0)),
                     float(np.max(np.abs(r), initial=0.0))])
    return rows


def num_split_leaves(shardings):
    """How many leaves a sharding tree actually splits (not fully replicated)."""
    return sum(not s.is_fully_replicated for s in jax.tree.leaves(shardings))


class Setup:
    """Config, models, initial parameters and data, built once on the host and shared by every mesh."""

    def __init__(self):
        self.config = config = self.make_config()
        self.stage = self.make_stage(config)
        self.train_config = config[f"train_{self.stage.name}"]
        self.model = self.stage.model
        self.optimizer = make_optimizer(self.train_config)
        self.rng = make_rng(0)
        init_rng, self.train_rng = jax.random.split(self.rng)
        data = np.random.default_rng(0)
        # Parameters: random, of the init's shapes and about its scales, drawn on the host once.
        abstract_params = sharding_rules.unbox(jax.eval_shape(self.stage.init_params, init_rng))
        params = random_like(abstract_params, data)
        # The EMA starts as its own random tree (own generator: the draws above and below are unchanged),
        # so that a step moves it by (1 - decay) * (params - ema), not by ~0 as when it equals params.
        ema_params = random_like(abstract_params, np.random.default_rng(1))
        self.state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                                opt_state=jax.jit(self.optimizer.init)(params),
                                rng=np.asarray(jax.random.key_data(self.train_rng)))
        self.params = params
        ids, mask = self.model.tokenizer(CAPTIONS[:BATCH])
        null_ids, null_mask = self.model.tokenizer([""] * BATCH)
        shape = latent_shape(config)
        self.batches = [self.make_batch(data, ids, mask, shape) for _ in range(3)]
        self.sample_batch = {"x": data.standard_normal((BATCH, *shape)).astype(np.float32),
                             "ids": ids, "mask": mask, "null_ids": null_ids, "null_mask": null_mask}
        self.vae = VideoVAE(config.vae)
        self.vae_init = VAEStage(config).init_params
        self.vae_abstract = jax.eval_shape(self.vae_init, make_rng(2))  # boxed: logical axis names
        self.vae_params = random_like(sharding_rules.unbox(self.vae_abstract), data)
        # 3 x 6 x 6 latents in (2, 4, 4)-cell tiles overlapping by (1, 2, 2): 2 x 2 x 2 tiles.
        self.vae_latents = data.standard_normal((BATCH, 3, 6, 6, shape[-1])).astype(np.float32)

    @staticmethod
    def make_config():
        return equivalence_config()

    @staticmethod
    def make_stage(config):
        return DiTStage(config, vae_params=None)  # latent_loss does not use the VAE

    @staticmethod
    def make_batch(data, ids, mask, latent_thwc):
        return {"latents": data.standard_normal((BATCH, *latent_thwc)).astype(np.float32), "ids": ids, "mask": mask}

    def loss_fn(self, params, batch, rng):
        return self.stage.latent_loss(params, batch["latents"], batch["ids"], batch["mask"], rng)


class MALTSetup(Setup):
    """The MALT train step on the same tiny model: 3 segments a video (one memory-gradient cut), 4 memory
    tokens per layer (the `memory` axis goes to `tensor`, 4 wide), memory noise on; batches of cached latent
    moments, so that MALTStage.loss_fn runs whole (its scan over segments, caption dropout, memory updates)."""

    SEGMENTS = 3

    @staticmethod
    def make_config():
        config = load_config("malt_digits")
        tiny = equivalence_config()
        for section in ("data", "vae", "text", "dit", "sampling", "train_vae", "eval"):
            config[section] = tiny[section]
        config.dit.memory_tokens = 4
        config.malt.update(train_segments=MALTSetup.SEGMENTS, truncation=2, num_segments=2)
        config.train_malt.update(batch_size=BATCH, warmup_steps=2, num_steps=10, cache_latents=True)
        return config

    @staticmethod
    def make_stage(config):
        return MALTStage(config, vae_params=None)  # cached moments: the VAE's params are not read

    @staticmethod
    def make_batch(data, ids, mask, latent_thwc):
        frames, *rest = latent_thwc
        moments = data.standard_normal((BATCH, 2, MALTSetup.SEGMENTS * frames, *rest)).astype(np.float32)
        moments[:, 1] = -4.0  # log-variance: posterior samples close to the mean
        # A different caption per segment: each video's captions rolled by one per segment.
        return {"latent_moments": moments, "ids": np.stack([np.roll(ids, -s, axis=0) for s in range(MALTSetup.SEGMENTS)], 1),
                "mask": np.stack([np.roll(mask, -s, axis=0) for s in range(MALTSetup.SEGMENTS)], 1)}

    def loss_fn(self, params, batch, rng):
        return self.stage.loss_fn(params, batch, rng)


class Placement:
    """One preset's mesh, rules, shardings and jitted functions, as trainer.fit builds them."""

    def __init__(self, setup: Setup, preset: str, mesh_shape: dict, devices):
        self.setup, self.preset = setup, preset
        self.mesh = make_mesh(mesh_shape, devices=devices)
        self.rules = sharding_rules.logical_rules(preset)
        self.batch_sharding = sharding_rules.batch_sharding(self.mesh)
        self.replicated = sharding_rules.replicated(self.mesh)
        self._step = self._sample = self._decode = None

    def context(self):
        return sharding_context(self.mesh, self.rules)

    @functools.cached_property
    def _state_shapes_and_shardings(self):
        return train_state_shardings(self.setup.stage.init_params, self.setup.optimizer, self.setup.rng,
                                     self.mesh, self.rules)

    @property
    def state_shape(self):
        return self._state_shapes_and_shardings[0]

    @property
    def state_shardings(self):
        return self._state_shapes_and_shardings[1]

    @property
    def param_shardings(self):
        return self.state_shardings.params

    def put_state(self, state):
        return jax.device_put(state, self.state_shardings)

    def shard_batch(self, batch):
        return sharding_rules.shard_batch(batch, self.mesh)

    def train_step(self, state, batch):
        """trainer.make_train_step's step, jitted with the state and batch shardings as trainer.fit
        does, returning also the loss and gradients of jax.value_and_grad(loss_fn) at the step's
        params and rng, the gradients on the params' shardings. One program rather than two halves
        the compile time; XLA computes the duplicate forward and backward pass once."""
        if self._step is None:
            setup = self.setup
            step_fn = make_train_step(setup.loss_fn, setup.optimizer, setup.train_config.ema_decay)

            def step_and_grads(state, batch):
                rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=RNG_IMPL), state.step)
                (loss, _), grads = jax.value_and_grad(setup.loss_fn, has_aux=True)(state.params, batch, rng)
                new_state, metrics = step_fn(state, batch)
                return new_state, metrics, loss, grads

            jitted = jax.jit(step_and_grads, in_shardings=(self.state_shardings, self.batch_sharding),
                             out_shardings=(self.state_shardings, None, self.replicated, self.param_shardings))
            with self.context():
                self._step = jitted.lower(state, self.shard_batch(batch)).compile()
            self.step_collectives = {kind: entry["count"] for kind, entry in collectives(self._step).items()}
        with self.context():
            return self._step(state, self.shard_batch(batch))

    def sample_step(self, params, batch, t, t_prev):
        """One classifier-free-guided DDIM step (guidance 4, eta 0) from the sampling loop's parts."""
        if self._sample is None:
            model = self.setup.model

            denoise = denoising_step(model, self.setup.config)

            def step(params, batch, t, t_prev):
                cond = (model.encode_text(params, batch["ids"], batch["mask"]), batch["mask"])
                uncond = (model.encode_text(params, batch["null_ids"], batch["null_mask"]), batch["null_mask"])
                return denoise(params, batch["x"], t, t_prev, cond, uncond)

            with self.context():
                self._sample = jax.jit(step, in_shardings=(self.param_shardings, self.batch_sharding,
                                                           self.replicated, self.replicated),
                                       out_shardings=self.batch_sharding)
        with self.context():
            return self._sample(params, self.shard_batch(batch), t, t_prev)

    def vae_shardings(self):
        with self.context():
            return sharding_rules.state_shardings(self.setup.vae_abstract, self.mesh, self.rules)

    def decode(self, vae_params, vae_shardings, latents):
        if self._decode is None:
            vae = self.setup.vae
            with self.context():
                self._decode = jax.jit(lambda p, z: vae_decode(vae, p, z, tiled=True),
                                       in_shardings=(vae_shardings, self.batch_sharding),
                                       out_shardings=self.batch_sharding)
        with self.context():
            return self._decode(vae_params, self.shard_batch(latents))


def _error(error: Exception) -> dict:
    """A preset that raises is recorded (type, first lines of the message) rather than aborting
    the other presets; the test fails for that preset and shows it."""
    message = "\n".join(str(error).splitlines()[:6])
    return {"error": f"{type(error).__name__}: {message[:1500]}"}


def per_preset(placements, fn):
    results = {}
    for preset, placement in placements.items():
        start = time.perf_counter()
        try:
            if isinstance(placement, Exception):
                raise placement
            results[preset] = fn(preset, placement)
            results[preset]["seconds"] = round(time.perf_counter() - start, 2)
        except Exception as error:  # noqa: BLE001 - reported per preset, see _error
            results[preset] = _error(error)
    return results


def check_train(setup, placements, reference):
    """Loss and gradients (jax.value_and_grad of the loss, params on the preset's shardings) and
    one trainer step (loss, grad norm, the whole new state, and how far it moved the params and the
    EMA) against the one-device results.

    The compared step is the second of training: the first runs at learning rate 0 (linear warmup
    from 0) and would leave the params where they are. So every placement starts from the same
    one-device state after a first step (moments filled, params unmoved), and the compared step
    runs at learning rate / warmup_steps."""
    start = jax.device_get(reference.train_step(reference.put_state(setup.state), setup.batches[0])[0])
    batch = setup.batches[1]
    ref_state, ref_metrics, ref_loss, ref_grads = reference.train_step(reference.put_state(start), batch)
    ref_state = jax.device_get(ref_state)

    def moved(state, tree):
        return jax.tree.map(lambda new, old: np.asarray(new, np.float64) - np.asarray(old, np.float64),
                            getattr(state, tree), getattr(start, tree))

    def check(preset, placement):
        state, metrics, loss, grads = placement.train_step(placement.put_state(start), batch)
        state = jax.device_get(state)
        return {
            "loss": leaf_diffs(loss, ref_loss),
            "grads": leaf_diffs(grads, ref_grads),
            "step_metrics": leaf_diffs(metrics, ref_metrics),
            "step_state": leaf_diffs(state, ref_state),
            "param_updates": leaf_diffs(moved(state, "params"), moved(ref_state, "params")),
            "ema_updates": leaf_diffs(moved(state, "ema_params"), moved(ref_state, "ema_params")),
            "start_step": int(start.step),
            "split_param_leaves": num_split_leaves(placement.param_shardings),
            "step_collectives": placement.step_collectives,
            "loss_value": float(loss),
        }
    return per_preset(placements, check)


def check_sample(setup, placements, reference):
    t_n, t_prev_n = timesteps("ddim", setup.config.sampling.num_steps, setup.model.schedule)
    t, t_prev = t_n[1], t_prev_n[1]
    ref = reference.sample_step(jax.device_put(setup.params, reference.param_shardings), setup.sample_batch,
                                t, t_prev)

    def check(preset, placement):
        out = placement.sample_step(jax.device_put(setup.params, placement.param_shardings), setup.sample_batch,
                                    t, t_prev)
        return {"x_prev": leaf_diffs(out, ref),
                "x_prev_change": float(np.max(np.abs(np.asarray(ref) - setup.sample_batch["x"])))}
    return per_preset(placements, check)


def check_vae(setup, placements, reference):
    ref = reference.decode(setup.vae_params, reference.vae_shardings(), setup.vae_latents)

    def check(preset, placement):
        shardings = placement.vae_shardings()
        entry = {"split_param_leaves": num_split_leaves(shardings)}
        try:
            params = jax.device_put(setup.vae_params, shardings)
        except ValueError as error:
            # Record it and decode with replicated VAE parameters, so the batch split is still checked.
            entry["param_placement_error"] = str(error).splitlines()[0][:400]
            shardings = jax.tree.map(lambda _: placement.replicated, setup.vae_params)
            params = jax.device_put(setup.vae_params, shardings)
        entry["video"] = leaf_diffs(placement.decode(params, shardings, setup.vae_latents), ref)
        entry["video_shape"] = list(ref.shape)
        return entry
    return per_preset(placements, check)


def check_checkpoint(setup, placements, reference, directory):
    """Two steps under CHECKPOINT_FROM, save, restore onto CHECKPOINT_TO's shardings, third step;
    against a third step under CHECKPOINT_FROM without the round trip."""
    source, target = placements[CHECKPOINT_FROM], placements[CHECKPOINT_TO]
    for placement in (source, target):
        if isinstance(placement, Exception):
            raise placement
    state = source.put_state(setup.state)
    for batch in setup.batches[:2]:
        state = source.train_step(state, batch)[0]
    checkpointer = Checkpointer(directory, every=1, async_save=False)
    checkpointer.save(2, state, force=True)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            target.state_shape, target.state_shardings)
    restored, data_state = checkpointer.restore(abstract)
    checkpointer.close()
    continued, continued_metrics, _, continued_grads = source.train_step(state, setup.batches[2])
    resumed, resumed_metrics, _, resumed_grads = target.train_step(restored, setup.batches[2])
    # And the same round trip onto the source's own shardings, as trainer.fit resumes.
    same = Checkpointer(directory, every=1, async_save=False)
    restored_same, _ = same.restore(abstract_like(state))
    same.close()
    return {
        "restored_vs_saved": leaf_diffs(restored, state),
        "restored_same_vs_saved": leaf_diffs(restored_same, state),
        "restored_on_target_shardings": all(
            x.sharding.is_equivalent_to(s, x.ndim)
            for x, s in zip(jax.tree.leaves(restored), jax.tree.leaves(target.state_shardings))),
        "target_split_leaves": num_split_leaves(target.state_shardings),
        "step": int(restored.step),
        "data_state": data_state,
        "next_loss": leaf_diffs(resumed_metrics["loss"], continued_metrics["loss"]),
        "next_metrics": leaf_diffs(resumed_metrics, continued_metrics),
        "next_grads": leaf_diffs(resumed_grads, continued_grads),
        "next_state": leaf_diffs(resumed, continued),
        "losses": [float(continued_metrics["loss"]), float(resumed_metrics["loss"])],
        "params_changed_by_two_steps": float(max(
            np.max(np.abs(np.asarray(a) - np.asarray(b)))
            for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(setup.params)))),
    }


def placements_of(setup):
    """The one-device reference and each preset's placement (or the error that building it raised)."""
    reference = Placement(setup, "dp", REFERENCE_MESH, jax.devices()[:1])
    placements = {}
    for preset, shape in MESHES.items():
        try:
            placements[preset] = Placement(setup, preset, shape, jax.devices())
        except Exception as error:  # noqa: BLE001 - reported by every check of this preset
            placements[preset] = error
    return reference, placements


def main(argv):
    out_path, checks = argv[0], argv[1:] or list(CHECKS)
    unknown = set(checks) - set(CHECKS + EXTRA_CHECKS)
    if unknown:
        raise SystemExit(f"unknown checks {sorted(unknown)}; choose from {CHECKS + EXTRA_CHECKS}")
    if jax.device_count() != NUM_DEVICES:
        raise SystemExit(f"expected {NUM_DEVICES} devices, got {jax.device_count()} (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
    times = {}
    start = time.perf_counter()
    setup = Setup()
    reference, placements = placements_of(setup)
    times["setup"] = time.perf_counter() - start
    results = {"device_count": jax.device_count(),
               "meshes": {p: dict(pl.mesh.shape) for p, pl in placements.items()
                          if not isinstance(pl, Exception)}}
    for check in checks:
        start = time.perf_counter()
        if check == "train":
            results[check] = check_train(setup, placements, reference)
        elif check == "malt_train":
            malt_setup = MALTSetup()
            results[check] = check_train(malt_setup, *reversed(placements_of(malt_setup)))
        elif check == "sample":
            results[check] = check_sample(setup, placements, reference)
        elif check == "vae":
            results[check] = check_vae(setup, placements, reference)
        else:
            with tempfile.TemporaryDirectory() as directory:
                try:
                    results[check] = check_checkpoint(setup, placements, reference,
                                                      os.path.join(directory, "ckpt"))
                except Exception as error:  # noqa: BLE001 - reported by the test
                    results[check] = _error(error)
        times[check] = time.perf_counter() - start
    results["times"] = times
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
