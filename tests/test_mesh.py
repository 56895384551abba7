"""Mesh construction from config: ICI shape per slice, DCN shape across slices, and joining a
multi-host run only when one is configured."""

import jax
import pytest

from t2v_jax.parallel import distributed
from t2v_jax.parallel.mesh import MESH_AXES, make_mesh, resolve_dcn_shape, resolve_mesh_shape


def test_fill_axis_takes_the_remaining_devices():
    assert resolve_mesh_shape(dict(data=2, fsdp=-1), 8) == (2, 4, 1, 1)


@pytest.mark.parametrize("shape, devices, message", [
    (dict(data=3, fsdp=1), 8, "multiplies to 3, but there are 8 devices"),
    (dict(data=3, fsdp=-1), 8, "multiply to 3, which does not divide the 8 devices"),
    (dict(data=-1, fsdp=-1), 8, "at most one axis may be -1"),
    (dict(sequence=2), 8, "unknown axes"),
])
def test_bad_mesh_shapes_name_the_numbers(shape, devices, message):
    with pytest.raises(ValueError, match=message):
        resolve_mesh_shape(shape, devices)


def test_dcn_shape_defaults_to_one_slice_and_rejects_nonsense():
    assert resolve_dcn_shape(None) == (1, 1, 1, 1)
    assert resolve_dcn_shape(dict(data=2)) == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="unknown axes"):
        resolve_dcn_shape(dict(slices=2))
    with pytest.raises(ValueError, match="does not divide the 1 devices"):
        make_mesh(dict(data=-1), dcn_shape=dict(data=2))


def test_single_slice_mesh_has_all_axes_and_explicit_types():
    mesh = make_mesh(dict(data=-1), dcn_shape=dict(data=1))
    assert mesh.axis_names == MESH_AXES
    assert mesh.devices.size == jax.device_count()
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_distributed_is_left_alone_on_a_single_host(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False


def test_distributed_needs_process_count_and_id_with_an_address(monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: pytest.fail("must not be called"))
    cfg = distributed.default_config()
    cfg.coordinator_address = "10.0.0.1:1234"
    with pytest.raises(ValueError, match="num_processes"):
        distributed.initialize(cfg)


def test_distributed_passes_the_configured_coordinator(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    cfg = distributed.default_config()
    cfg.coordinator_address = "10.0.0.1:1234"
    assert distributed.initialize(cfg) is True
    assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)]
