"""What a compiled sharded program costs on each device: memory, collectives, time.

Figures come from the compiled program itself, so they hold for whatever mesh and rules built it:
- memory from XLA's buffer assignment (`compiled.memory_analysis()`), with the arguments split
  into named parts (params, optimizer state, ...) by the bytes of one shard of each array;
- collectives from the optimised, partitioned HLO (`compiled.as_text()`): per kind, how many run
  in one call and the bytes of their results (per device), with ops inside a loop of known trip
  count (the scanned layer stack) counted once per iteration.
"""

import math
import re
import time

import jax
import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# Computations an instruction runs: `body=%b`, `calls=%c`, `branch_computations={%x, %y}`, ...
_CALLEE = re.compile(r"\b(body|condition|calls|to_apply|branch_computations|true_computation|"
                     r"false_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


def shard_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded arrays (or ShapeDtypeStructs with shardings)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


def memory_per_device(compiled, argument_parts: dict | None = None) -> dict:
    """Bytes per device of a compiled program, from XLA's memory analysis.

    `argument_parts` names pieces of the arguments ({"params": state.params, ...}); each is
    measured by its shard bytes and the rest of the arguments is "other_arguments".
    "total" counts arguments, outputs that do not reuse a donated argument, temporaries and code.
    """
    stats = compiled.memory_analysis()
    parts = {name: shard_bytes(tree) for name, tree in (argument_parts or {}).items()}
    result = dict(parts)
    result.update(
        other_arguments=stats.argument_size_in_bytes - sum(parts.values()),
        arguments=stats.argument_size_in_bytes,
        outputs=stats.output_size_in_bytes,
        aliased=stats.alias_size_in_bytes,
        temporaries=stats.temp_size_in_bytes,
        generated_code=stats.generated_code_size_in_bytes,
    )
    result["total"] = (result["arguments"] + result["outputs"] - result["aliased"] + result["temporaries"]
                       + result["generated_code"])
    return result


def _shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO result shape such as `f32[8,128]{1,0}` or a tuple of them; pred is one byte,
    tokens none."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        bits = re.search(r"\d+", dtype)
        bits = 8 if dtype == "pred" else int(bits.group()) if bits else 0
        total += math.prod(int(d) for d in dims.split(",") if d) * bits // 8
    return total


def _split_instruction(line: str):
    """(result shape text, opcode, rest) of an HLO instruction line, or None for any other line."""
    match = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*", line)
    if not match:
        return None
    text = line[match.end():]
    if text.startswith("("):  # a tuple shape: up to its matching parenthesis
        depth = 0
        for end, char in enumerate(text):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        shape, rest = text[:end + 1], text[end + 1:].lstrip()
    else:
        shape, _, rest = text.partition(" ")
    opcode = rest.split("(", 1)[0]
    return shape, opcode, rest


def _computations(hlo_text: str):
    """{computation name: instruction lines} in text order (callees before callers), and the entry."""
    computations, entry, current = {}, None, None
    for line in hlo_text.splitlines():
        header = re.match(r"(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    return computations, entry


def _executions(computations: dict, entry: str) -> dict:
    """How many times each computation runs per call of the entry: while bodies times their trip count."""
    runs = dict.fromkeys(computations, 0)
    runs[entry] = 1
    for name in reversed(list(computations)):  # callers come after their callees in HLO text
        if not runs[name]:
            continue
        for line in computations[name]:
            parsed = _split_instruction(line)
            if parsed is None or parsed[1].endswith(("-done", "-update")):
                continue  # an async op's computation runs once, at its start
            trip = _TRIP_COUNT.search(line)
            for attribute, callees in _CALLEE.findall(line):
                factor = int(trip.group(1)) if trip and attribute == "body" else 1
                for callee in re.findall(r"%?([\w.\-]+)", callees.strip("{}")):
                    if callee in runs:
                        runs[callee] += runs[name] * factor
    return runs


def collectives(compiled_or_text) -> dict:
    """{kind: {"count", "bytes"}} of the collectives that one call of the program runs, per device.

    An async pair (`all-gather-start` / `all-gather-done`) counts once, at its done op, whose result
    is the collective's output; bytes are result bytes (an all-gather's gathered array, a
    reduce-scatter's shard), not the traffic on the wire. A loop without a known trip count
    counts once.
    """
    text = compiled_or_text if isinstance(compiled_or_text, str) else compiled_or_text.as_text()
    computations, entry = _computations(text)
    runs = _executions(computations, entry)
    result = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
    for name, lines in computations.items():
        for line in lines:
            parsed = _split_instruction(line)
            if parsed is None:
                continue
            shape, opcode, _ = parsed
            kind = opcode.removesuffix("-done")
            if kind in result:
                result[kind]["count"] += runs[name]
                result[kind]["bytes"] += runs[name] * _shape_bytes(shape)
    return result


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls after one warm-up call (which may compile)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))
