"""The system registry: one module per system, each declaring a `System` (see `base.py`).

Adding a system is a new module here (its config checks, stage graph, pipeline loading, sampling
summary and benchmark) plus its model files and configs, and one entry in `SYSTEMS` below. Scripts,
`train/run.py`, `pipelines/load.py` and `config.py` find it through `get(config)`.
"""

from t2v_jax.checks import one_of
from t2v_jax.systems import allegro, flashvideo, latent_diffusion, lavie, malt
from t2v_jax.systems.base import BenchmarkOptions, Stage, System

SYSTEMS = {system.name: system for system in (latent_diffusion.SYSTEM, allegro.SYSTEM, flashvideo.SYSTEM, lavie.SYSTEM,
                                              malt.SYSTEM)}
DEFAULT_SYSTEM = "latent_diffusion"

__all__ = ["SYSTEMS", "BenchmarkOptions", "Stage", "System", "get"]


def get(config) -> System:
    """The system `config.system` names (the latent text-to-video system when unset)."""
    name = config.get("system", DEFAULT_SYSTEM)
    one_of(name, "system", sorted(SYSTEMS))
    return SYSTEMS[name]
