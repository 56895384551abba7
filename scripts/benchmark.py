"""Times one DiT train step and one full sampling run; writes JSON.

  python scripts/benchmark.py --config configs/quickstart.py --out benchmark.json
  python scripts/benchmark.py --config configs/allegro.py --config.train_dit.batch_size=1 ...

Each figure comes with a baseline measured in the same run:
- train step: the configured remat policy against full rematerialisation ("full"), the policy a
  memory-bound run falls back to;
- sampling: the whole sampler as one jax.lax.scan in one jit (what the pipelines do) against a
  Python loop that dispatches one jitted denoising step at a time (diffusers' pattern).
TFLOP/s counts model FLOPs (t2v_jax/parallel/flops.py); MFU is printed only where the device's
peak is known.
"""

import datetime
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from t2v_jax.cli import quiet_library_logs
from t2v_jax.config import dit_token_grid, latent_shape, validate
from t2v_jax.diffusion import samplers
from t2v_jax.parallel import flops
from t2v_jax.parallel.rules import unbox
from t2v_jax.train.stages import DiTStage
from t2v_jax.train.trainer import TrainState, make_optimizer, make_rng, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=False)
_OUT = flags.DEFINE_string("out", "benchmark.json", "Where the JSON goes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions after one warm-up.")
_SKIP_BASELINES = flags.DEFINE_bool("skip_baselines", False, "Time only our configuration.")
flags.mark_flags_as_required(["config"])


def _time(fn, repeats):
    """Median wall time of fn() after one warm-up call (which also compiles)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _train_step_seconds(config, remat_policy, repeats):
    config = config.copy_and_resolve_references()
    config.dit.remat_policy = remat_policy
    stage = DiTStage(config, vae_params=None)
    batch = config.train_dit.batch_size
    rng = make_rng(0)
    latents = jax.random.normal(rng, (batch, *latent_shape(config)))
    ids, mask = stage.model.tokenizer(["a red 3 moving left"] * batch)
    optimizer = make_optimizer(config.train_dit)
    params = unbox(stage.init_params(rng))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                       opt_state=optimizer.init(params), rng=jax.random.key_data(rng))
    loss_fn = lambda p, b, r: stage.latent_loss(p, b["latents"], b["ids"], b["mask"], r)
    step = jax.jit(make_train_step(loss_fn, optimizer, config.train_dit.ema_decay))
    batch_arrays = {"latents": latents, "ids": jnp.asarray(ids), "mask": jnp.asarray(mask)}
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch_arrays)
        return metrics["loss"]

    return _time(run, repeats)


def _sampling_seconds(config, repeats, *, scanned: bool):
    stage = DiTStage(config, vae_params=None)
    model = stage.model
    batch = config.train_dit.batch_size
    rng = make_rng(0)
    params = unbox(stage.init_params(rng))
    ids, mask = model.tokenizer(["a red 3 moving left"] * batch)
    null_ids, null_mask = model.tokenizer([""] * batch)
    noise = jax.random.normal(rng, (batch, *latent_shape(config)))
    sampling = config.sampling
    kwargs = dict(prediction_type=config.diffusion.prediction_type, guidance_scale=sampling.guidance_scale)

    def conds(params):
        return ((model.encode_text(params, ids, mask), mask),
                (model.encode_text(params, null_ids, null_mask), null_mask))

    if scanned:
        @jax.jit
        def run_all(params, noise, rng):
            cond, uncond = conds(params)
            return samplers.sample(lambda x, t, c: model.denoise(params, x, t, c), model.schedule, noise, rng,
                                   method=sampling.method, num_steps=sampling.num_steps, cond=cond,
                                   uncond=uncond, eta=sampling.eta, **kwargs)

        return _time(lambda: run_all(params, noise, rng), repeats)

    # Baseline: the same single steps, one jitted call per step from a Python loop.
    t_n, t_prev_n = samplers.timesteps(sampling.method, sampling.num_steps, model.schedule)
    cond_fn = jax.jit(conds)

    @jax.jit
    def one_step(params, x, t, t_prev, cond, uncond):
        predict = samplers.guided_predictor(lambda x, t, c: model.denoise(params, x, t, c), cond, uncond,
                                            sampling.guidance_scale)
        pred = predict(x, jnp.full((x.shape[0],), t))
        x0, eps = samplers.to_x0_eps(pred, x, t, model.schedule, config.diffusion.prediction_type)
        return samplers.ddim_step(x, x0, eps, t, t_prev, model.schedule, eta=0.0)

    def run_loop():
        cond, uncond = cond_fn(params)
        x = noise
        for t, t_prev in zip(t_n, t_prev_n):
            x = one_step(params, x, t, t_prev, cond, uncond)
        return x

    return _time(run_loop, repeats)


def main(argv):
    del argv
    quiet_library_logs()
    config = validate(_CONFIG.value)
    device = jax.devices()[0]
    grid = dit_token_grid(config)
    text_len = config.text.max_length
    batch = config.train_dit.batch_size
    peak = flops.peak_tflops(device)
    train_flops = flops.dit_train_flops(config.dit, grid, text_len, batch)
    guidance_batches = 2 if config.sampling.guidance_scale != 1 else 1
    sample_flops = config.sampling.num_steps * flops.dit_forward_flops(config.dit, grid, text_len,
                                                                        batch * guidance_batches)

    result = dict(date=datetime.date.today().isoformat(), device=device.device_kind, backend=jax.default_backend(),
                  num_devices=jax.device_count(), host=platform.node(), jax=jax.__version__,
                  batch=batch, token_grid=grid, text_len=text_len, dit=config.dit.to_dict(),
                  sampling=config.sampling.to_dict(), peak_tflops=peak)

    step_s = _train_step_seconds(config, config.dit.remat_policy, _REPEATS.value)
    result["train_step"] = dict(seconds=step_s, steps_per_sec=1 / step_s, tflops=train_flops / step_s / 1e12,
                                mfu=(train_flops / step_s / 1e12 / (peak * jax.device_count())) if peak else None,
                                remat_policy=config.dit.remat_policy)
    sample_s = _sampling_seconds(config, _REPEATS.value, scanned=True)
    result["sampling"] = dict(seconds=sample_s, denoising_steps_per_sec=config.sampling.num_steps / sample_s,
                              tflops=sample_flops / sample_s / 1e12,
                              mfu=(sample_flops / sample_s / 1e12 / (peak * jax.device_count())) if peak else None)
    if not _SKIP_BASELINES.value:
        base_step_s = _train_step_seconds(config, "full", _REPEATS.value)
        result["train_step"]["baseline_full_remat_seconds"] = base_step_s
        result["train_step"]["speedup_vs_full_remat"] = base_step_s / step_s
        if config.sampling.method == "ddim":
            base_sample_s = _sampling_seconds(config, _REPEATS.value, scanned=False)
            result["sampling"]["baseline_python_loop_seconds"] = base_sample_s
            result["sampling"]["speedup_vs_python_loop"] = base_sample_s / sample_s

    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    ts, sp = result["train_step"], result["sampling"]
    print(f"device {result['device']} x{result['num_devices']}, batch {batch}, tokens {np.prod(grid)}")
    print(f"train step: {ts['steps_per_sec']:.2f} steps/s, {ts['tflops']:.3f} TFLOP/s"
          + (f", MFU {ts['mfu']:.1%}" if ts["mfu"] else "")
          + (f", x{ts['speedup_vs_full_remat']:.2f} vs full remat" if "speedup_vs_full_remat" in ts else ""))
    print(f"sampling ({config.sampling.method}, {config.sampling.num_steps} steps): {sp['seconds']:.2f} s, "
          f"{sp['tflops']:.3f} TFLOP/s"
          + (f", MFU {sp['mfu']:.1%}" if sp["mfu"] else "")
          + (f", x{sp['speedup_vs_python_loop']:.2f} vs per-step Python loop"
             if "speedup_vs_python_loop" in sp else ""))
    print(f"-> {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
