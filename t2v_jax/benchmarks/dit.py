"""DiT speed: one train step and one whole sampling run, each against a baseline measured in the same run.

- train step: the configured remat policy against full rematerialisation ("full"), the policy a
  memory-bound run falls back to;
- sampling: the whole sampler as one jax.lax.scan in one jit (what the pipelines do) against a
  Python loop that dispatches one jitted denoising step at a time (diffusers' pattern).
TFLOP/s counts model FLOPs (t2v_jax/parallel/flops.py); MFU is given only where the device's peak is
known. Latents stand in for videos (no VAE), captions are one tokenised prompt.
"""

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.diffusion import samplers
from t2v_jax.models.text_to_video import dit_token_grid, latent_shape
from t2v_jax.parallel import flops
from t2v_jax.parallel.programs import denoising_step, latent_loss_fn
from t2v_jax.parallel.report import median_seconds
from t2v_jax.parallel.rules import unbox
from t2v_jax.train.trainer import TrainState, make_optimizer, make_rng, make_train_step


def _train_step_seconds(make_stage, config, remat_policy, repeats):
    config = config.copy_and_resolve_references()
    config.dit.remat_policy = remat_policy
    stage = make_stage(config)
    batch = config.train_dit.batch_size
    rng = make_rng(0)
    latents = jax.random.normal(rng, (batch, *latent_shape(config)))
    ids, mask = stage.model.tokenizer(["a red 3 moving left"] * batch)
    optimizer = make_optimizer(config.train_dit)
    params = unbox(stage.init_params(rng))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                       opt_state=optimizer.init(params), rng=jax.random.key_data(rng))
    step = jax.jit(make_train_step(latent_loss_fn(stage), optimizer, config.train_dit.ema_decay))
    batch_arrays = {"latents": latents, "ids": jnp.asarray(ids), "mask": jnp.asarray(mask)}
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch_arrays)
        return metrics["loss"]

    return median_seconds(run, repeats)


def _sampling_seconds(make_stage, config, repeats, *, scanned: bool):
    stage = make_stage(config)
    model = stage.model
    batch = config.train_dit.batch_size
    rng = make_rng(0)
    params = unbox(stage.init_params(rng))
    ids, mask = model.tokenizer(["a red 3 moving left"] * batch)
    null_ids, null_mask = model.tokenizer([""] * batch)
    noise = jax.random.normal(rng, (batch, *latent_shape(config)))
    sampling = config.sampling
    kwargs = dict(prediction_type=config.diffusion.prediction_type, guidance_scale=sampling.guidance_scale,
                  **samplers.spacing_options(sampling))

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

        return median_seconds(lambda: run_all(params, noise, rng), repeats)

    # Baseline: the same single steps, one jitted call per step from a Python loop.
    t_n, t_prev_n = samplers.timesteps(sampling.method, sampling.num_steps, model.schedule,
                                       **samplers.spacing_options(sampling))
    cond_fn = jax.jit(conds)

    one_step = jax.jit(denoising_step(model, config))

    def run_loop():
        cond, uncond = cond_fn(params)
        x = noise
        for t, t_prev in zip(t_n, t_prev_n):
            x = one_step(params, x, t, t_prev, cond, uncond)
        return x

    return median_seconds(run_loop, repeats)


def dit_benchmark(config, options, make_stage) -> dict:
    """Train step and sampling of the DiT stage that `make_stage(config)` builds; prints a summary."""
    device = jax.devices()[0]
    grid = dit_token_grid(config)
    text_len = config.text.max_length
    batch = config.train_dit.batch_size
    peak = flops.peak_tflops(device)
    train_flops = flops.dit_train_flops(config.dit, grid, text_len, batch)
    guidance_batches = 2 if config.sampling.guidance_scale != 1 else 1
    sample_flops = config.sampling.num_steps * flops.dit_forward_flops(config.dit, grid, text_len,
                                                                        batch * guidance_batches)

    result = dict(batch=batch, token_grid=grid, text_len=text_len, dit=config.dit.to_dict(),
                  sampling=config.sampling.to_dict(), peak_tflops=peak)

    step_s = _train_step_seconds(make_stage, config, config.dit.remat_policy, options.repeats)
    result["train_step"] = dict(seconds=step_s, steps_per_sec=1 / step_s, tflops=train_flops / step_s / 1e12,
                                mfu=(train_flops / step_s / 1e12 / (peak * jax.device_count())) if peak else None,
                                remat_policy=config.dit.remat_policy)
    sample_s = _sampling_seconds(make_stage, config, options.repeats, scanned=True)
    result["sampling"] = dict(seconds=sample_s, denoising_steps_per_sec=config.sampling.num_steps / sample_s,
                              tflops=sample_flops / sample_s / 1e12,
                              mfu=(sample_flops / sample_s / 1e12 / (peak * jax.device_count())) if peak else None)
    if not options.skip_baselines:
        base_step_s = _train_step_seconds(make_stage, config, "full", options.repeats)
        result["train_step"]["baseline_full_remat_seconds"] = base_step_s
        result["train_step"]["speedup_vs_full_remat"] = base_step_s / step_s
        if config.sampling.method == "ddim":
            base_sample_s = _sampling_seconds(make_stage, config, options.repeats, scanned=False)
            result["sampling"]["baseline_python_loop_seconds"] = base_sample_s
            result["sampling"]["speedup_vs_python_loop"] = base_sample_s / sample_s

    ts, sp = result["train_step"], result["sampling"]
    print(f"device {device.device_kind} x{jax.device_count()}, batch {batch}, tokens {np.prod(grid)}")
    print(f"train step: {ts['steps_per_sec']:.2f} steps/s, {ts['tflops']:.3f} TFLOP/s"
          + (f", MFU {ts['mfu']:.1%}" if ts["mfu"] else "")
          + (f", x{ts['speedup_vs_full_remat']:.2f} vs full remat" if "speedup_vs_full_remat" in ts else ""))
    print(f"sampling ({config.sampling.method}, {config.sampling.num_steps} steps): {sp['seconds']:.2f} s, "
          f"{sp['tflops']:.3f} TFLOP/s"
          + (f", MFU {sp['mfu']:.1%}" if sp["mfu"] else "")
          + (f", x{sp['speedup_vs_python_loop']:.2f} vs per-step Python loop"
             if "speedup_vs_python_loop" in sp else ""))
    return result
