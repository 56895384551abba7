"""What every pipeline shares: the config's mesh and rules, one compiled program per phase and batch
size, running a phase with its batch split over the data axes, and the caption-budget check.

A pipeline subclass names its phases in `program(phase, **static)`, which returns the function to
compile; `run` places the arguments (batch arguments split over the data axes when their count
allows it, the rest replicated; params stay where they were loaded) and calls the compiled phase
under the mesh and logical rules, so that `nn.with_logical_constraint` applies while tracing.
"""

import jax
import numpy as np

from t2v_jax.checks import check_caption_budget
from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.mesh import mesh_from_config


def free(tree) -> None:
    """Releases the device memory of every array in `tree` now rather than at garbage collection."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.delete()


class Pipeline:
    """Text in, uint8 video out; subclasses implement `program` and `generate`."""

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.mesh = mesh_from_config(config.mesh)
        self.rules = sharding_rules.logical_rules(config.mesh.preset)
        self._programs = {}

    def program(self, phase: str, **static):
        """The function `(params, *batch_args, *other_args) -> outputs` that compiles as `phase`."""
        raise NotImplementedError

    def _compiled(self, phase: str, count: int, static: dict):
        key = (phase, count, tuple(sorted(static.items())))
        if key not in self._programs:
            self._programs[key] = jax.jit(self.program(phase, **static),
                                          out_shardings=sharding_rules.split_or_replicated(self.mesh, count))
        return self._programs[key]

    def _placed(self, batch_args, other_args, count: int) -> tuple:
        return (jax.device_put(tuple(batch_args), sharding_rules.split_or_replicated(self.mesh, count))
                + jax.device_put(tuple(other_args), sharding_rules.replicated(self.mesh)))

    def run(self, phase: str, params, batch_args, other_args=(), *, count: int, **static):
        """Runs a phase for `count` videos; outputs are placed on the batch sharding."""
        args = self._placed(batch_args, other_args, count)
        with sharding_rules.sharding_context(self.mesh, self.rules):
            return self._compiled(phase, count, static)(params, *args)

    def compile(self, phase: str, params, batch_args, other_args=(), *, count: int, **static):
        """The compiled program `run` would run on these arguments, e.g. for XLA's memory analysis."""
        args = self._placed(batch_args, other_args, count)
        with sharding_rules.sharding_context(self.mesh, self.rules):
            return self._compiled(phase, count, static).lower(params, *args).compile()

    def tokenize(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """(ids_bl, mask_bl); a prompt over `config.text.max_length` is an error, never cut."""
        prompts = list(prompts)
        check_caption_budget(prompts, self.tokenizer.token_counts(prompts), self.config.text.max_length)
        return self.tokenizer(prompts)

    def generate(self, prompts, *, seed: int = 0) -> np.ndarray:
        """uint8 videos (N, frames, H, W, 3), one per prompt."""
        raise NotImplementedError
