"""XLA's cheapest CPU code generation, for the test suite and the subprocesses it starts.

Tests run tiny models, so compiling is most of their time. These flags change code generation only, not
partitioning (results agree to rounding), and cut compile time severalfold (a LaVie UNet init: 17 s -> 12 s;
an 8-device train step: 20 s -> 2.5 s). With them (and one LaVie test tracing shapes instead of compiling an
init) the README suite went from 754 s to 499 s on an idle 2-core CPU. Where jax has a GPU or TPU plugin
they are left off: they would slow the kernels the accelerator tests run.
"""

import importlib.metadata

FAST_CPU_COMPILE = ("--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 "
                    "--xla_llvm_disable_expensive_passes=true")
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def with_fast_compile(xla_flags: str | None) -> str:
    """`xla_flags` (the XLA_FLAGS value, possibly unset) with FAST_CPU_COMPILE added once."""
    xla_flags = xla_flags or ""
    return xla_flags if FAST_CPU_COMPILE in xla_flags else f"{xla_flags} {FAST_CPU_COMPILE}".strip()


def accelerator_plugin_installed() -> bool:
    """Whether a GPU or TPU plugin for jax is installed, found without starting a backend."""
    names = (dist.metadata["Name"] or "" for dist in importlib.metadata.distributions())
    return any(name.lower().startswith(_ACCELERATOR_PLUGINS) for name in names)
