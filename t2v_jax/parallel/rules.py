"""Logical axis names -> mesh axes, with named presets so that comparing strategies is one flag.

Models annotate parameters (`nn.with_logical_partitioning`) and activations
(`nn.with_logical_constraint`) with logical names; a preset below maps those names to mesh
axes. A preset is data, not a code path.
"""

import contextlib
import math

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")

PRESETS = {
    # Pure data parallelism: parameters replicated, batch split over every device.
    "dp": (
        ("batch", BATCH_AXES),
    ),
    # ZeRO-3 style: batch split over data+fsdp, parameters' embed dimension split over fsdp.
    "fsdp": (
        ("batch", BATCH_AXES),
        ("embed", "fsdp"),
        ("conv_out", "fsdp"),
    ),
    # Megatron tensor parallelism: heads and mlp split over tensor; a recurrent memory's tokens (MALT) too.
    "tp": (
        ("batch", BATCH_AXES),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("memory", "tensor"),
    ),
    "fsdp_tp": (
        ("batch", BATCH_AXES),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("memory", "tensor"),
    ),
    # Sequence (context) parallelism: video tokens split over context, params as fsdp.
    "context": (
        ("batch", BATCH_AXES),
        ("length", "context"),
        ("embed", "fsdp"),
    ),
}


def logical_rules(preset: str):
    if preset not in PRESETS:
        raise ValueError(f"mesh.preset={preset!r} is unknown; allowed: {sorted(PRESETS)}")
    return PRESETS[preset]


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) axis split over the data-parallel mesh axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def divisible_spec(spec: PartitionSpec, shape, mesh) -> PartitionSpec:
    """`spec` with every dimension that its mesh axes do not divide left whole (replicated): a rule
    such as embed -> fsdp must not fail on a 3-channel RGB output conv."""
    entries = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        entries.append(axes if size % math.prod(mesh.shape[name] for name in names) == 0 else None)
    return PartitionSpec(*entries)


def state_shardings(abstract_state, mesh, rules):
    """Shardings for a pytree whose leaves may be nn.Partitioned (logical names) or plain arrays;
    dimensions the mapped mesh axes do not divide stay replicated."""
    logical_specs = nn.get_partition_spec(abstract_state)
    shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
    # The boxes' raw values: `unbox` would also apply their sharding constraints, which needs arrays.
    leaves = jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, abstract_state,
                          is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return jax.tree.map(lambda sharding, leaf: NamedSharding(mesh, divisible_spec(sharding.spec, leaf.shape, mesh)),
                        shardings, leaves)


def unbox(tree):
    """Drops nn.Partitioned boxes, leaving the raw arrays the optimizer and apply() use."""
    return nn.meta.unbox(tree)


def split_or_replicated(mesh, count: int) -> NamedSharding:
    """A batch of `count` items split over the data axes when they divide it, else replicated
    (a pipeline asked for fewer videos than there are data-parallel devices)."""
    return replicated(mesh) if count % data_parallel_size(mesh) else batch_sharding(mesh)


def data_parallel_size(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(batch, mesh):
    """Places a host-local numpy batch on the mesh (single process: the whole batch)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x) if hasattr(x, "shape") else x,
        batch)


@contextlib.contextmanager
def sharding_context(mesh, rules):
    """Mesh and logical rules in scope while tracing, for nn.with_logical_constraint."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
