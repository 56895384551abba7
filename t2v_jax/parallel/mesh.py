"""Device mesh from config: axes ('data', 'fsdp', 'context', 'tensor'), -1 fills the rest."""

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "context", "tensor")


def resolve_mesh_shape(shape: dict, num_devices: int) -> tuple[int, ...]:
    """Turns {'data': -1, 'tensor': 2, ...} into sizes that multiply to num_devices."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh.shape has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    fills = [i for i, size in enumerate(sizes) if size == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh.shape: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(size == 0 or size < -1 for size in sizes):
        raise ValueError(f"mesh.shape: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(size for size in sizes if size != -1)
    if fills:
        if num_devices % known:
            raise ValueError(f"mesh.shape: fixed axes multiply to {known}, which does not divide "
                             f"the {num_devices} devices")
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh.shape {dict(zip(MESH_AXES, sizes))} multiplies to {math.prod(sizes)}, "
                         f"but there are {num_devices} devices")
    return tuple(sizes)


def make_mesh(shape: dict, devices=None) -> Mesh:
    """Builds the 4-axis mesh; jax.make_mesh picks a topology-aware device order where it can.

    Axes are `Auto` so that logical sharding constraints guide the compiler rather than assert.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = resolve_mesh_shape(shape, len(devices))
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, devices=devices, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)
