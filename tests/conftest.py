"""Shared test setup: CPU-friendly defaults and hardware markers that skip cleanly."""

import os
import sys
import tempfile

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xla_flags import accelerator_plugin_installed, with_fast_compile  # noqa: E402

# Read when the backend starts (after this), here and in every subprocess, which inherits the environment.
if not accelerator_plugin_installed():
    os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS"))

# Tests build the same small programs many times (each `fit` jits its own step, scripts run in
# subprocesses); a compilation cache shared by the session and its subprocesses turns the
# repeats into cache hits. Environment variables carry it into the subprocesses.
_CACHE_SETTINGS = {
    "jax_compilation_cache_dir": tempfile.mkdtemp(prefix="t2v_jax_test_xla_cache_"),
    "jax_persistent_cache_min_compile_time_secs": 0.5,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}
for _name, _value in _CACHE_SETTINGS.items():
    jax.config.update(_name, _value)
    os.environ[_name.upper()] = str(_value)


def pytest_collection_modifyitems(config, items):
    backend = jax.default_backend()
    for item in items:
        if "gpu" in item.keywords and backend != "gpu":
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "tpu" in item.keywords and backend != "tpu":
            item.add_marker(pytest.mark.skip(reason="needs a TPU"))
