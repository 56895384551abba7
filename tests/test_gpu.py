"""GPU-only checks: the cuDNN flash path and bfloat16 compute agree with the XLA reference.

Skipped cleanly on CPU and TPU (see conftest.py); run with `python -m pytest -m gpu tests/test_gpu.py`.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.layers.attention import attention
from t2v_jax.models.video_dit import VideoDiT
from test_video_dit import inputs, random_params, tiny_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("with_mask", [False, True])
def test_cudnn_attention_matches_xla_in_bfloat16(with_mask):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 256, 4, 64)), jnp.bfloat16) for _ in range(3))
    kv_mask = jnp.asarray(rng.random((2, 256)) > 0.2) if with_mask else None
    reference = attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                          kv_mask_bs=kv_mask, implementation="xla")
    fused = attention(q, k, v, kv_mask_bs=kv_mask, implementation="cudnn")
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(reference), atol=3e-2)


def test_dit_bfloat16_cudnn_matches_float32_xla():
    x, t, context, mask = inputs()
    reference_model = VideoDiT(tiny_config(width=24 * 4, num_heads=2))
    params = {"params": random_params(reference_model, x, t, context, mask)}
    reference = reference_model.apply(params, x, t, context, mask)
    fast = VideoDiT(tiny_config(width=24 * 4, num_heads=2, attention="cudnn", dtype="bfloat16")).apply(
        params, x, t, context, mask)
    assert fast.dtype == x.dtype
    error = float(jnp.max(jnp.abs(fast - reference)) / jnp.max(jnp.abs(reference)))
    assert error < 5e-2, error
