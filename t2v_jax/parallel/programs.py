"""The sharded programs that sharding strategies are compared on, built in one place.

For a config, a mesh and logical rules this builds (i) the DiT train step exactly as
`trainer.fit` jits it (state and batch shardings from the rules, state donated) on a synthetic
latent batch, and (ii) one sampling step: the DiT with classifier-free guidance in one call
(`samplers.guided_predictor`) followed by one DDIM step. Latents stand in for videos, so no VAE
is involved. `scripts/compare_sharding.py` compiles and times these; tests import them to check
that every strategy computes the same numbers.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from t2v_jax.diffusion import samplers
from t2v_jax.models.text_to_video import latent_shape, num_dit_tokens
from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.rules import sharding_context
from t2v_jax.train.checkpoint import abstract_on
from t2v_jax.train.trainer import create_train_state, jit_train_step, make_optimizer, make_rng, train_state_shardings

CAPTION = "a red 3 moving left"


def _divisors(n: int):
    return [d for d in range(1, n + 1) if n % d == 0]


def default_mesh_shape(preset: str, num_devices: int, config) -> dict:
    """The mesh a preset is compared on: its axes take all the devices.

    dp: data=N. fsdp: fsdp=N. tp: tensor = the largest divisor of N that divides dit.num_heads,
    data the rest. fsdp_tp and context: the model-parallel axis (tensor, or context) takes the
    largest divisor of N up to sqrt(N) that divides the heads (the video tokens), fsdp the rest;
    8 devices give fsdp=4 x tensor=2 and fsdp=4 x context=2.
    """
    heads, tokens = config.dit.num_heads, num_dit_tokens(config)
    small = [d for d in _divisors(num_devices) if d <= math.isqrt(num_devices)]
    if preset == "dp":
        return {"data": num_devices}
    if preset == "fsdp":
        return {"fsdp": num_devices}
    if preset == "tp":
        tensor = max(d for d in _divisors(num_devices) if heads % d == 0)
        return {"data": num_devices // tensor, "tensor": tensor}
    if preset == "fsdp_tp":
        tensor = max(d for d in small if heads % d == 0)
        return {"fsdp": num_devices // tensor, "tensor": tensor}
    if preset == "context":
        context = max(d for d in small if tokens % d == 0)
        return {"fsdp": num_devices // context, "context": context}
    raise ValueError(f"no default mesh for preset {preset!r}; give the mesh shape explicitly")


@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted function with the arguments it was built for.

    Tracing must happen under the mesh and the logical rules (`nn.with_logical_constraint` is a
    no-op without them), so calling and lowering go through here. `args` are real arrays or
    ShapeDtypeStructs carrying their shardings.
    """

    jitted: Any
    args: tuple
    mesh: Mesh
    rules: tuple

    def __call__(self, *args):
        with sharding_context(self.mesh, self.rules):
            return self.jitted(*(args or self.args))

    def lower(self):
        with sharding_context(self.mesh, self.rules):
            return self.jitted.lower(*self.args)

    def compile(self):
        return self.lower().compile()


def latent_loss_fn(stage) -> Callable:
    """The DiT stage's loss on a batch of latents {"latents", "ids", "mask"} instead of videos."""
    return lambda params, batch, rng: stage.latent_loss(params, batch["latents"], batch["ids"], batch["mask"], rng)


def synthetic_latent_batch(stage, config, seed: int = 0) -> dict:
    """Host-side numpy batch of train_dit.batch_size standard-normal latents and one tokenised caption."""
    batch_size = config.train_dit.batch_size
    ids_bl, mask_bl = stage.model.tokenizer([CAPTION] * batch_size)
    latents_bthwc = np.random.default_rng(seed).standard_normal((batch_size, *latent_shape(config)), np.float32)
    return {"latents": latents_bthwc, "ids": ids_bl, "mask": mask_bl}


def train_step_program(stage, config, mesh: Mesh, rules, *, abstract: bool = True, seed: int = 0,
                       donate: bool = True) -> Program:
    """The train step of a denoiser stage (the system's `denoiser_stage`) on latents, args (state, batch).

    abstract=True gives ShapeDtypeStructs (enough to compile and read memory and collectives);
    False initialises the state on its shardings and places a synthetic batch, to run and time it.
    """
    optimizer = make_optimizer(config.train_dit)
    rng = make_rng(seed)
    state_shape, state_shardings = train_state_shardings(stage.init_params, optimizer, rng, mesh, rules)
    batch = synthetic_latent_batch(stage, config, seed)
    if abstract:
        state = abstract_on(state_shape, state_shardings)
        batch = abstract_on(batch, jax.tree.map(lambda _: sharding_rules.batch_sharding(mesh), batch))
    else:
        state = create_train_state(stage.init_params, optimizer, rng, mesh, rules)
        batch = jax.device_put(batch, sharding_rules.batch_sharding(mesh))  # the same on every host
    step = jit_train_step(latent_loss_fn(stage), optimizer, config.train_dit.ema_decay, state_shardings, mesh,
                          donate=donate)
    return Program(step, (state, batch), mesh, tuple(rules))


def denoising_step(model, config) -> Callable:
    """step(params, x_bthwc, t, t_prev, cond, uncond) -> x_prev: one guided DiT call, then DDIM (eta 0)."""
    guidance_scale = config.sampling.guidance_scale
    prediction_type = config.diffusion.prediction_type

    def step(params, x_bthwc, t, t_prev, cond, uncond):
        predict = samplers.guided_predictor(lambda x, t_b, c: model.denoise(params, x, t_b, c), cond, uncond,
                                            guidance_scale)
        pred_bthwc = predict(x_bthwc, jnp.full((x_bthwc.shape[0],), t))
        x0_bthwc, eps_bthwc = samplers.to_x0_eps(pred_bthwc, x_bthwc, t, model.schedule, prediction_type)
        return samplers.ddim_step(x_bthwc, x0_bthwc, eps_bthwc, t, t_prev, model.schedule, eta=0.0)

    return step


def sampling_step_program(stage, config, mesh: Mesh, rules, *, abstract: bool = True, seed: int = 0) -> Program:
    """One guided denoising step with args (params, x_bthwc, t, t_prev, cond, uncond).

    params are the DiT's alone ({"dit": ...}: the caption is encoded once per sampling run, outside
    the loop), sharded as in training; latents and caption features are split over the batch axes.
    Real args are a random initialisation, noise and random caption features at the first
    DDIM timestep.
    """
    model = stage.model
    rng = make_rng(seed)
    state_shape, state_shardings = train_state_shardings(stage.init_params, make_optimizer(config.train_dit),
                                                         rng, mesh, rules)
    params_shape = {"dit": state_shape.params["dit"]}
    params_shardings = {"dit": state_shardings.params["dit"]}
    batch_size, text_len = config.train_dit.batch_size, config.text.max_length
    data = sharding_rules.batch_sharding(mesh)
    replicated = sharding_rules.replicated(mesh)
    t_n, t_prev_n = samplers.timesteps("ddim", config.sampling.num_steps, model.schedule)
    caption = (jax.ShapeDtypeStruct((batch_size, text_len, config.text.encoder.width), jnp.float32),
               jax.ShapeDtypeStruct((batch_size, text_len), jnp.bool_))
    shapes = (params_shape, jax.ShapeDtypeStruct((batch_size, *latent_shape(config)), jnp.float32),
              t_n[0], t_prev_n[0], caption, caption)
    shardings = (params_shardings, data, replicated, replicated, (data, data), (data, data))
    if abstract:
        args = abstract_on(shapes, shardings)
    else:
        init_rng = jax.random.split(rng)[0]  # the key create_train_state initialises the params with
        with sharding_context(mesh, rules):
            params = jax.jit(lambda r: {"dit": sharding_rules.unbox(stage.init_params(r))["dit"]},
                             out_shardings=params_shardings)(init_rng)
        draws = np.random.default_rng(seed)
        noise_bthwc = draws.standard_normal(shapes[1].shape, np.float32)
        context_bld = draws.standard_normal(caption[0].shape, np.float32)
        mask_bl = np.ones(caption[1].shape, bool)
        args = jax.device_put((params, noise_bthwc, t_n[0], t_prev_n[0], (context_bld, mask_bl),
                               (context_bld[::-1], mask_bl)), shardings)
    jitted = jax.jit(denoising_step(model, config), in_shardings=shardings, out_shardings=data)
    return Program(jitted, args, mesh, tuple(rules))
