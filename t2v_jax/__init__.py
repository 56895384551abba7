"""t2v_jax: text-to-video generation in JAX/Flax on one shared, pure-functional core."""

__version__ = "0.1.0"
