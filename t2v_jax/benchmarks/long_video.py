"""Any-length generation (MALT): device memory and time against the number of segments, in one run.

For each segment count, the generation program (one scan over segments) is compiled for one video and its
memory read from XLA's buffer assignment (`parallel.report.memory_per_device`): with the memory as the scan's
only carry, temporaries must stay flat and only the returned video grow. It is then run `repeats` times
after a warm-up; the time per segment at each count is reported against the smallest count's (the
baseline, same run): flat means total time linear in length. Random weights: speed and memory do not
depend on training.
"""

import time

import jax
import numpy as np

from t2v_jax.parallel.report import memory_per_device


def long_video_benchmark(pipeline, segment_counts, *, repeats: int = 3) -> dict:
    """{"segments": [...], "temporaries_bytes", "output_bytes", "seconds_per_segment", and the ratios of each
    to the first count}; prints one line per count."""
    rows = []
    for segments in segment_counts:
        args, kwargs, _ = pipeline.generation_call([["a red 3 moving left"] * segments])
        memory = memory_per_device(pipeline.compile(*args, **kwargs))
        jax.block_until_ready(pipeline.run(*args, **kwargs))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(pipeline.run(*args, **kwargs))
            times.append(time.perf_counter() - start)
        rows.append(dict(segments=segments, temporaries_bytes=memory["temporaries"], output_bytes=memory["outputs"],
                         seconds_per_segment=float(np.median(times)) / segments))
    base = rows[0]
    for row in rows:
        row.update(temporaries_ratio=row["temporaries_bytes"] / base["temporaries_bytes"],
                   output_ratio=row["output_bytes"] / base["output_bytes"],
                   time_per_segment_ratio=row["seconds_per_segment"] / base["seconds_per_segment"])
        print(f"{row['segments']:>4} segments: temporaries {row['temporaries_bytes'] / 2**20:.2f} MiB "
              f"(x{row['temporaries_ratio']:.3f}), output {row['output_bytes'] / 2**20:.2f} MiB "
              f"(x{row['output_ratio']:.2f}), {row['seconds_per_segment'] * 1e3:.1f} ms per segment "
              f"(x{row['time_per_segment_ratio']:.2f})")
    return {"long_video": rows}
