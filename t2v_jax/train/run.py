"""Trains the whole latent text-to-video system from one config: VAE first, then DiT."""

import os
import time

import jax

from t2v_jax.config import validate
from t2v_jax.data.loader import build_dataset, make_loader
from t2v_jax.train.checkpoint import dump_json
from t2v_jax.train.stages import DiTStage, VAEStage
from t2v_jax.train.trainer import fit, read_metrics, restore_params

STAGES = ("vae", "dit")


def _train_iterator(config, train_cfg, seed_offset: int):
    loader = make_loader(config.data, "train", batch_size=train_cfg.batch_size,
                         seed=config.seed + seed_offset)
    return iter(loader)


def train(config, workdir: str, stages=STAGES, *, progress: bool = True) -> dict:
    """Runs the requested stages in order, resuming each from its last checkpoint.

    Returns {stage: last logged metrics}. The VAE stage must have finished before the DiT
    stage starts, because the DiT learns on the frozen VAE's latents.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; allowed: {list(STAGES)}")
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    dump_json(os.path.join(workdir, "config.json"), config.to_dict())
    build_dataset(config.data)
    summary = {}
    if "vae" in stages:
        stage_dir = os.path.join(workdir, "vae")
        start = time.perf_counter()
        fit(VAEStage(config), config.train_vae, _train_iterator(config, config.train_vae, 0), stage_dir,
            mesh_cfg=config.mesh, seed=config.seed, progress=progress)
        summary["vae"] = dict(read_metrics(stage_dir)[-1], seconds=time.perf_counter() - start)
    if "dit" in stages:
        vae_params = restore_params(os.path.join(workdir, "vae"), VAEStage(config), config.train_vae,
                                    mesh_cfg=config.mesh)
        stage_dir = os.path.join(workdir, "dit")
        start = time.perf_counter()
        fit(DiTStage(config, vae_params), config.train_dit, _train_iterator(config, config.train_dit, 1),
            stage_dir, mesh_cfg=config.mesh, seed=config.seed + 1, progress=progress)
        summary["dit"] = dict(read_metrics(stage_dir)[-1], seconds=time.perf_counter() - start)
    jax.effects_barrier()
    return summary
