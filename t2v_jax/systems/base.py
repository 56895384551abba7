"""What a system module declares, and the stage-graph restore every system's pipeline loading shares.

A system is data: a `System` value built once in its module under `t2v_jax/systems/`. The scripts,
`train/run.py`, `pipelines/load.py` and `config.py` read these fields and never test a system's name.
"""

import dataclasses
import os
from typing import Any, Callable, Optional

from t2v_jax.train.checkpoint import CheckpointMismatchError, mismatch_with_saved_config
from t2v_jax.train.trainer import restore_params


@dataclasses.dataclass(frozen=True)
class Stage:
    """One trained stage of a system.

    build(config, consumed) returns what `trainer.fit` trains (`name`, `init_params`, `loss_fn`,
    `prepare_batch`); `consumed` maps every stage named in `consumes` to its frozen params, so a
    cascade (each model on the VAE's latents) and a memory model fit the same graph. The stage trains
    with config.train_<name> and checkpoints under <workdir>/<name>.
    """

    name: str
    build: Callable[[Any, dict], Any]
    consumes: tuple[str, ...] = ()

    @property
    def train_field(self) -> str:
        return f"train_{self.name}"


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """`scripts/benchmark.py`'s flags; each system's benchmark reads the ones it uses."""

    repeats: int = 5
    skip_baselines: bool = False
    vs_diffusers: bool = False
    lengths: tuple[int, ...] = (256, 1024, 4096, 16384)
    decode_steps: int = 128
    decode_batch: int = 1
    segments: tuple[int, ...] = (4, 16, 64)


@dataclasses.dataclass(frozen=True)
class System:
    """Everything shared code needs to know about one system.

    validate(config, num_devices): raises ConfigError naming the field, before anything compiles.
    stages(config): the ordered stage graph this config trains.
    load_pipeline(config, checkpoint, use_ema=True): a pipeline (`generate(prompts, seed=...)` ->
      uint8 (N, T, H, W, 3)) from a `scripts/train.py` workdir or the system's converted folder.
    sampling_summary(config): one line naming the sampling settings, for logs.
    benchmark(config, options): the system's speed benchmark as a JSON-ready dict (it prints its own
      summary lines), or None when it has none.
    denoiser_stage(config): the diffusion stage whose train and sampling steps
      `scripts/compare_sharding.py` compiles per sharding preset (no frozen params needed), or None.
    load_autoencoder(config, checkpoint, use_ema=True): the first stage's round trip, a jitted
      video_bthwc -> video_bthwc in [-1, 1] (VAE posterior mean, or tokenizer codes); judged, it is the
      ceiling of the whole system (`scripts/eval.py --reconstruct`). None when the system has none.
    """

    name: str
    description: str
    validate: Callable[[Any, int], None]
    stages: Callable[[Any], tuple[Stage, ...]]
    load_pipeline: Callable[..., Any]
    sampling_summary: Callable[[Any], str]
    benchmark: Optional[Callable[[Any, BenchmarkOptions], dict]] = None
    denoiser_stage: Optional[Callable[[Any], Any]] = None
    load_autoencoder: Optional[Callable[..., Callable]] = None


def stage_by_name(stages, name: str) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; this config's stages: {[s.name for s in stages]}")


def restore_stages(config, stages, workdir: str, names, *, use_ema: bool = True, restored=None) -> dict:
    """{name: params} of the named stages and of every stage they consume, from their latest
    checkpoints under `workdir` (EMA params by default), each restored once; `restored` (a dict,
    updated in place) carries what earlier calls restored. A checkpoint that does not fit this config's
    model raises `CheckpointMismatchError` naming the fields that differ from the run's saved config."""
    restored = {} if restored is None else restored

    def restore(name):
        if name not in restored:
            stage = stage_by_name(stages, name)
            consumed = {dependency: restore(dependency) for dependency in stage.consumes}
            try:
                restored[name] = restore_params(os.path.join(workdir, name), stage.build(config, consumed),
                                                config[stage.train_field], mesh_cfg=config.mesh, use_ema=use_ema)
            except CheckpointMismatchError as error:
                raise mismatch_with_saved_config(error, config, workdir) from error
        return restored[name]

    for name in names:
        restore(name)
    return restored
