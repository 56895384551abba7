"""XLA's cheapest CPU code generation, for the test suite and the subprocesses it starts.

Tests run tiny models, so compiling is most of their time. These flags change code generation only, not
numerics or partitioning, and cut compile time severalfold (a LaVie UNet init: 17 s -> 12 s; an 8-device
train step: 20 s -> 2.5 s): the README suite takes 522 s with them instead of 754 s on an idle 2-core CPU.
"""

FAST_CPU_COMPILE = ("--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 "
                    "--xla_llvm_disable_expensive_passes=true")


def with_fast_compile(xla_flags: str | None) -> str:
    """`xla_flags` (the XLA_FLAGS value, possibly unset) with FAST_CPU_COMPILE added once."""
    xla_flags = xla_flags or ""
    return xla_flags if FAST_CPU_COMPILE in xla_flags else f"{xla_flags} {FAST_CPU_COMPILE}".strip()
