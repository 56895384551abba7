"""Device mesh from config: axes ('data', 'fsdp', 'context', 'tensor'), -1 fills the rest.

`mesh.shape` is the layout inside one slice (ICI: the fast chip-to-chip links); for multi-slice
TPU runs `mesh.dcn_shape` says how many slices each axis spans (DCN: the data-centre network
between slices), so an axis's total size is shape x dcn_shape. Put `data` (or `fsdp`) across
slices: their collectives are the least frequent. Axis types are explicit (`Auto`): logical
sharding constraints guide the compiler rather than assert.
"""

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from t2v_jax.checks import ConfigError, one_of
from t2v_jax.parallel.rules import PRESETS

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


def resolve_dcn_shape(dcn_shape: dict | None) -> tuple[int, ...]:
    """Slices per axis, 1 where unstated."""
    dcn_shape = dict(dcn_shape or {})
    unknown = set(dcn_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh.dcn_shape has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}")
    sizes = tuple(int(dcn_shape.get(axis, 1)) for axis in MESH_AXES)
    if any(size < 1 for size in sizes):
        raise ValueError(f"mesh.dcn_shape: sizes must be positive, got {dict(zip(MESH_AXES, sizes))}")
    return sizes


def make_mesh(shape: dict, devices=None, *, dcn_shape: dict | None = None) -> Mesh:
    """Builds the 4-axis mesh with a topology-aware device order: `jax.make_mesh` within a slice,
    `create_hybrid_device_mesh` (ICI inside slices, DCN across them) when `dcn_shape` spans slices."""
    devices = jax.devices() if devices is None else list(devices)
    dcn = resolve_dcn_shape(dcn_shape)
    num_slices = math.prod(dcn)
    if len(devices) % num_slices:
        raise ValueError(f"mesh.dcn_shape {dict(zip(MESH_AXES, dcn))} spans {num_slices} slices, which "
                         f"does not divide the {len(devices)} devices")
    ici = resolve_mesh_shape(shape, len(devices) // num_slices)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if num_slices > 1:
        device_grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
        return Mesh(device_grid, MESH_AXES, axis_types=auto)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(ici, MESH_AXES, devices=devices, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(ici), MESH_AXES, axis_types=auto)


def mesh_from_config(mesh_cfg, devices=None) -> Mesh:
    """The mesh a config's `mesh` section describes (`shape`, optional `dcn_shape`)."""
    return make_mesh(dict(mesh_cfg.shape), devices, dcn_shape=dict(mesh_cfg.get("dcn_shape", None) or {}))


def mesh_sizes(mesh_cfg, num_devices: int) -> dict:
    """Size of every mesh axis (ICI x DCN) for `num_devices`, or a ConfigError naming the mesh field;
    what config validation checks models and batches against before anything compiles."""
    one_of(mesh_cfg.preset, "mesh.preset", sorted(PRESETS))
    try:
        dcn = resolve_dcn_shape(mesh_cfg.get("dcn_shape", None))
        slices = math.prod(dcn)
        if num_devices % slices:
            raise ValueError(f"mesh.dcn_shape spans {slices} slices, which does not divide the "
                             f"{num_devices} devices")
        ici = resolve_mesh_shape(dict(mesh_cfg.shape), num_devices // slices)
    except ValueError as error:
        raise ConfigError(f"config.{error}") from None
    return {axis: i * d for axis, i, d in zip(MESH_AXES, ici, dcn)}
