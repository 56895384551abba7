"""One trainer for every stage: train state, jitted step, EMA, metrics, checkpoints, resume.

A stage (see `stages.py`) supplies `init_params(rng)`, a pure `loss_fn(params, batch, rng)`
and `prepare_batch(numpy_batch)`; everything else (optimizer, sharding, logging, exact
resume) lives here once.
"""

import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from tqdm.auto import tqdm

from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.mesh import mesh_from_config
from t2v_jax.parallel.rules import sharding_context
from t2v_jax.train.checkpoint import Checkpointer, abstract_like, abstract_on


RNG_IMPL = "rbg"


def make_rng(seed: int) -> jax.Array:
    """Typed key of the "rbg" generator: XLA's RngBitGenerator compiles in seconds where
    threefry takes a minute for a model with a few hundred initialisers on a CPU."""
    return jax.random.key(seed, impl=RNG_IMPL)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # raw key data (uint32), so that checkpoints hold a plain array


def train_config(**overrides) -> ml_collections.ConfigDict:
    """A stage's optimizer, logging and checkpoint fields (CPU-sized defaults), `overrides` applied:
    what `fit` and `make_optimizer` read from config.train_<stage>."""
    cfg = ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=16, learning_rate=1e-3, warmup_steps=50, final_lr_fraction=0.1,
        grad_clip=1.0, adam_b2=0.99, weight_decay=0.0, ema_decay=0.99, log_every=25,
        checkpoint_every=250, keep_checkpoints=2))
    cfg.update(overrides)
    return cfg


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay, after global-norm gradient clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_cfg.learning_rate,
        warmup_steps=max(1, train_cfg.warmup_steps),
        decay_steps=max(train_cfg.num_steps, train_cfg.warmup_steps + 1),
        end_value=train_cfg.learning_rate * train_cfg.final_lr_fraction)
    return optax.chain(
        optax.clip_by_global_norm(train_cfg.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=train_cfg.adam_b2, weight_decay=train_cfg.weight_decay))


def make_train_step(loss_fn, optimizer, ema_decay: float):
    """Returns step(state, batch) -> (state, metrics); randomness is fold_in(rng, step) so that
    a resumed run draws exactly the numbers an uninterrupted one would."""

    def step_fn(state: TrainState, batch):
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=RNG_IMPL), state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                  state.ema_params, params)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                                  opt_state=opt_state)
        return new_state, metrics

    return step_fn


def jit_train_step(loss_fn, optimizer, ema_decay: float, state_shardings, mesh, *, donate: bool = True):
    """The train step jitted with the state's shardings and the batch split over the data axes, as
    `fit` runs it; call it (or lower it) inside `sharding_context` so that logical constraints apply."""
    return jax.jit(make_train_step(loss_fn, optimizer, ema_decay),
                   in_shardings=(state_shardings, sharding_rules.batch_sharding(mesh)),
                   out_shardings=(state_shardings, None), donate_argnums=0 if donate else ())


def _init_fn(init_params, optimizer, train_rng):
    def init(init_rng):
        params = sharding_rules.unbox(init_params(init_rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          ema_params=jax.tree.map(jnp.copy, params),
                          opt_state=optimizer.init(params), rng=jax.random.key_data(train_rng))
    return init


def train_state_shardings(init_params, optimizer, rng, mesh, rules):
    """Shardings of the whole train state: optimizer moments follow their parameter."""
    init_rng, train_rng = jax.random.split(rng)
    with sharding_context(mesh, rules):
        param_shardings = sharding_rules.state_shardings(jax.eval_shape(init_params, init_rng), mesh, rules)
    state_shape = jax.eval_shape(_init_fn(init_params, optimizer, train_rng), init_rng)
    replicated = sharding_rules.replicated(mesh)
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, state_shape.opt_state, param_shardings,
        transform_non_params=lambda _: replicated)
    return state_shape, TrainState(step=replicated, params=param_shardings, ema_params=param_shardings,
                                   opt_state=opt_shardings, rng=replicated)


def create_train_state(init_params, optimizer, rng, mesh, rules) -> TrainState:
    """Initialises params directly onto their shardings (no host-side full copy)."""
    init_rng, train_rng = jax.random.split(rng)
    _, shardings = train_state_shardings(init_params, optimizer, rng, mesh, rules)
    with sharding_context(mesh, rules):
        return jax.jit(_init_fn(init_params, optimizer, train_rng), out_shardings=shardings)(init_rng)


class MetricsLogger:
    """Scalars to TensorBoard and to a JSON-lines file that scripts and tests can read."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict):
        scalars = {k: float(v) for k, v in metrics.items()}
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")

    def close(self):
        self.writer.close()


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fit(stage, train_cfg, data_iterator, workdir: str, *, mesh_cfg, seed: int,
        num_steps: int | None = None, progress: bool = True) -> TrainState:
    """Trains `stage` to `train_cfg.num_steps`, resuming from `workdir` when a checkpoint exists.

    `data_iterator` must offer get_state()/set_state() (grain's does); its position is saved
    with every checkpoint. `num_steps` stops early (e.g. to simulate an interruption) without
    changing the learning-rate schedule, which always spans train_cfg.num_steps.
    """
    total_steps = train_cfg.num_steps if num_steps is None else num_steps
    mesh = mesh_from_config(mesh_cfg)
    rules = sharding_rules.logical_rules(mesh_cfg.preset)
    optimizer = make_optimizer(train_cfg)
    state = create_train_state(stage.init_params, optimizer, make_rng(seed), mesh, rules)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every=train_cfg.checkpoint_every,
                                keep=train_cfg.keep_checkpoints)
    start_step = 0
    if checkpointer.latest_step() is not None:
        state, data_state = checkpointer.restore(abstract_like(state))
        if data_state is not None:
            data_iterator.set_state(data_state)
        start_step = int(state.step)
        print(f"[{stage.name}] resumed from step {start_step} in {checkpointer.directory}")

    train_step = jit_train_step(stage.loss_fn, optimizer, train_cfg.ema_decay,
                                jax.tree.map(lambda x: x.sharding, state), mesh)

    logger = MetricsLogger(workdir)
    bar = tqdm(total=total_steps, initial=start_step, desc=f"train {stage.name}", disable=not progress,
               dynamic_ncols=True)
    last_time, last_step = time.perf_counter(), start_step
    try:
        for step in range(start_step, total_steps):
            batch = stage.prepare_batch(next(data_iterator))
            with sharding_context(mesh, rules):
                state, metrics = train_step(state, sharding_rules.shard_batch(batch, mesh))
            done = step + 1
            if done % train_cfg.log_every == 0 or done == total_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                metrics["steps_per_sec"] = (done - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                logger.write(done, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{metrics['steps_per_sec']:.2f}")
            bar.update(1)
            if done % train_cfg.checkpoint_every == 0 or done == total_steps:
                checkpointer.save(done, state, data_iterator.get_state(), force=done == total_steps)
    finally:
        bar.close()
        logger.close()
        checkpointer.close()
    return state


def restore_params(workdir: str, stage, train_cfg, *, mesh_cfg, use_ema: bool = True, seed: int = 0):
    """Latest params of a trained stage (EMA by default), placed on the mesh, without its
    optimizer or data state."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every=1, async_save=False)
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint under {checkpointer.directory}; train this stage first")
    mesh = mesh_from_config(mesh_cfg)
    rules = sharding_rules.logical_rules(mesh_cfg.preset)
    state_shape, shardings = train_state_shardings(stage.init_params, make_optimizer(train_cfg),
                                                   make_rng(seed), mesh, rules)
    state, _ = checkpointer.restore(abstract_on(state_shape, shardings), with_data=False)
    checkpointer.close()
    return state.ema_params if use_ema else state.params
