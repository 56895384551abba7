"""Ring (context-parallel) attention on 8 host devices, its key slices folded 3 keys at a time (with
padding), equals one-device attention, values and gradients, and communicates by passing key/value
slices (collective-permute), never gathering them.

The pytest process keeps its single CPU device, so the check runs in a subprocess that asks XLA
for 8 host devices.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r'''
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from t2v_jax.layers.attention import attention
from t2v_jax.parallel.mesh import make_mesh
from t2v_jax.parallel.rules import logical_rules
from t2v_jax.train.trainer import sharding_context

rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.standard_normal((2, 32, 3, 8)), jnp.float32) for _ in range(3))
mask = jnp.asarray(rng.random((2, 32)) > 0.3).at[:, 0].set(True)

def loss(q, k, v, **kw):
    return (attention(q, k, v, kv_mask_bs=mask, **kw) ** 2).sum()

reference = attention(q, k, v, kv_mask_bs=mask)
reference_grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
results = {}
for shape in (dict(context=8), dict(fsdp=2, context=4), dict(data=2, context=2, tensor=2)):
    mesh = make_mesh(dict(dict(data=1, fsdp=1, context=1, tensor=1), **shape))
    with sharding_context(mesh, logical_rules("context")):
        forward = jax.jit(lambda q, k, v: attention(q, k, v, kv_mask_bs=mask, sequence_parallel=True, chunk_size=3))
        out = forward(q, k, v)
        grads = jax.jit(jax.grad(lambda q, k, v: loss(q, k, v, sequence_parallel=True, chunk_size=3), argnums=(0, 1, 2)))(q, k, v)
        hlo = forward.lower(q, k, v).compile().as_text()
    results[json.dumps(shape)] = dict(
        out_error=float(jnp.abs(out - reference).max()),
        grad_error=max(float(jnp.abs(a - b).max()) for a, b in zip(grads, reference_grads)),
        permutes=hlo.count("collective-permute"), gathers=hlo.count("all-gather"))
print(json.dumps(results))
'''


def test_ring_attention_matches_one_device_and_only_passes_slices():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(results) == 3
    for shape, r in results.items():
        # Float32 sums in another order: differences of a few ulps of values of size ~10.
        assert r["out_error"] < 1e-5 and r["grad_error"] < 1e-4, (shape, r)
        assert r["permutes"] > 0 and r["gathers"] == 0, (shape, r)
