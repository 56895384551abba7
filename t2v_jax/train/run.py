"""Trains a whole system from one config: its stages in order, each resuming from its checkpoints.

The config's system (`t2v_jax/systems/`) declares the stage graph; a stage trains on the frozen
params of the stages it consumes, restored from their latest checkpoints in the same workdir.
"""

import os
import time

import jax

from t2v_jax import systems
from t2v_jax.config import validate
from t2v_jax.data.loader import build_dataset, data_source, make_loader
from t2v_jax.systems.base import restore_stages
from t2v_jax.train.checkpoint import (SAVED_CONFIG, CheckpointMismatchError, dump_json, mismatch_with_saved_config,
                                      read_saved_config)
from t2v_jax.train.trainer import fit, read_metrics


def stage_names(config) -> tuple[str, ...]:
    """The stages this config's system trains, in order."""
    return tuple(stage.name for stage in systems.get(config).stages(config))


def train(config, workdir: str, stages=None, *, progress: bool = True) -> dict:
    """Runs the requested stages (default: all) in order, resuming each from its last checkpoint.

    Returns {stage: last logged metrics}. A stage's consumed stages must have finished before it
    starts, because it learns on their frozen params.
    """
    validate(config)
    graph = systems.get(config).stages(config)
    allowed = tuple(stage.name for stage in graph)
    stages = allowed if stages is None else tuple(stages)
    unknown = [s for s in stages if s not in allowed]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} for system {systems.get(config).name!r}; "
                         f"allowed: {list(allowed)}")
    os.makedirs(workdir, exist_ok=True)
    saved_before = read_saved_config(workdir)
    dump_json(os.path.join(workdir, SAVED_CONFIG), config.to_dict())
    try:
        return _train_stages(config, workdir, graph, stages, progress)
    except CheckpointMismatchError as error:
        # The run's checkpoints still follow the config it saved before: put that record back, and name
        # the fields this call changed.
        if saved_before is not None:
            dump_json(os.path.join(workdir, SAVED_CONFIG), saved_before)
        raise mismatch_with_saved_config(error, config, workdir) from error


def _train_stages(config, workdir: str, graph, stages, progress: bool) -> dict:
    build_dataset(config.data)
    summary, frozen = {}, {}
    for offset, stage_spec in enumerate(graph):
        if stage_spec.name not in stages:
            continue
        consumed = restore_stages(config, graph, workdir, stage_spec.consumes, restored=frozen)
        stage = stage_spec.build(config, {name: consumed[name] for name in stage_spec.consumes})
        train_cfg = config[stage_spec.train_field]
        stage_dir = os.path.join(workdir, stage_spec.name)
        start = time.perf_counter()
        # A cascade stage may train on the same clips rendered at another frame rate or size.
        data_cfg = getattr(stage, "data_config", config.data)
        build_dataset(data_cfg)
        source = data_source(data_cfg, "train")
        if hasattr(stage, "training_source"):
            source = stage.training_source(source, stage_dir, progress=progress)
        iterator = iter(make_loader(data_cfg, "train", batch_size=train_cfg.batch_size, seed=config.seed + offset,
                                    source=source))
        fit(stage, train_cfg, iterator, stage_dir, mesh_cfg=config.mesh, seed=config.seed + offset,
            progress=progress)
        summary[stage_spec.name] = dict(read_metrics(stage_dir)[-1], seconds=time.perf_counter() - start)
    jax.effects_barrier()
    return summary
