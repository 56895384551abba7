"""Trains a whole system from one config, stage after stage, each resuming from its checkpoints.

latent_diffusion: the VAE, then the DiT + text encoder on its frozen latents.
flashvideo: the video tokenizer, then the keyframe decoder and the interpolation decoder on its codes.
"""

import os
import time

import jax

from t2v_jax.config import system, validate
from t2v_jax.data.loader import build_dataset, make_loader
from t2v_jax.train.checkpoint import dump_json
from t2v_jax.train.stages import DiTStage, TokenDecoderStage, VAEStage, VQStage
from t2v_jax.train.trainer import fit, read_metrics, restore_params

SYSTEM_STAGES = {"latent_diffusion": ("vae", "dit"), "flashvideo": ("vq", "keyframes", "interpolation")}


def _frozen_stage(config):
    """The first stage of a system, whose params the later stages train on: (stage, train config)."""
    if system(config) == "flashvideo":
        return VQStage(config), config.train_vq
    return VAEStage(config), config.train_vae


def _make_stage(config, name: str, frozen_params):
    if name == "dit":
        return DiTStage(config, frozen_params)
    return TokenDecoderStage(config, frozen_params, name)


def stages_of(config) -> tuple[str, ...]:
    """The stages this config's system trains, in order (the interpolation decoder only when there
    are frames between keyframes)."""
    stages = SYSTEM_STAGES[system(config)]
    if system(config) == "flashvideo" and config.flashvideo.keyframe_stride == 1:
        stages = stages[:2]
    return stages


def train(config, workdir: str, stages=None, *, progress: bool = True) -> dict:
    """Runs the requested stages in order, resuming each from its last checkpoint.

    Returns {stage: last logged metrics}. The first stage (VAE or tokenizer) must have finished before
    the later ones start, because they learn on its frozen latents or codes.
    """
    validate(config)
    allowed = stages_of(config)
    stages = allowed if stages is None else tuple(stages)
    unknown = [s for s in stages if s not in allowed]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} for system {system(config)!r}; allowed: {list(allowed)}")
    os.makedirs(workdir, exist_ok=True)
    dump_json(os.path.join(workdir, "config.json"), config.to_dict())
    build_dataset(config.data)
    first, first_cfg = _frozen_stage(config)
    summary = {}
    frozen_params = None
    for offset, name in enumerate(allowed):
        if name not in stages:
            continue
        stage_dir = os.path.join(workdir, name)
        if name == first.name:
            stage, train_cfg = first, first_cfg
        else:
            if frozen_params is None:
                frozen_params = restore_params(os.path.join(workdir, first.name), first, first_cfg,
                                               mesh_cfg=config.mesh)
            stage, train_cfg = _make_stage(config, name, frozen_params), config[f"train_{name}"]
        iterator = iter(make_loader(config.data, "train", batch_size=train_cfg.batch_size, seed=config.seed + offset))
        start = time.perf_counter()
        fit(stage, train_cfg, iterator, stage_dir, mesh_cfg=config.mesh, seed=config.seed + offset,
            progress=progress)
        summary[name] = dict(read_metrics(stage_dir)[-1], seconds=time.perf_counter() - start)
    jax.effects_barrier()
    return summary
