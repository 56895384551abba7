"""LaVie's temporal attention against a PyTorch reference written from LaVie's equations
(base/models/temporal_attention.py) with `rotary_embedding_torch`, the package LaVie rotates with."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
rotary_embedding_torch = pytest.importorskip("rotary_embedding_torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from t2v_jax.models.lavie_unet import TemporalAttention  # noqa: E402

pytestmark = pytest.mark.ref


def _lavie_bucket(relative_position, num_buckets=32, max_distance=32):
    """LaVie's RelativePositionBias._relative_position_bucket (T5's, bidirectional)."""
    ret = 0
    n = -relative_position
    num_buckets //= 2
    ret += (n < 0).long() * num_buckets
    n = torch.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        torch.log(n.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    val_if_large = torch.min(val_if_large, torch.full_like(val_if_large, num_buckets - 1))
    return ret + torch.where(is_small, n, val_if_large)


def _lavie_temporal_attention(x_nfc, weights, heads, rotary_emb):
    """LaVie's TemporalAttention.forward: q scaled, then rotated (first channels of each head), plus the
    relative position bias, softmax over frames, output projection with bias."""
    n, f, _ = x_nfc.shape

    def split(t):
        return t.reshape(n, f, heads, -1).permute(0, 2, 1, 3)

    q, k, v = (split(x_nfc @ weights[name].T) for name in ("to_q", "to_k", "to_v"))
    q = q * q.shape[-1] ** -0.5
    if rotary_emb is not None:
        q, k = rotary_emb.rotate_queries_or_keys(q), rotary_emb.rotate_queries_or_keys(k)
    positions = torch.arange(f)
    bias_hff = weights["table"][_lavie_bucket(positions[None, :] - positions[:, None])].permute(2, 0, 1)
    scores = torch.einsum("nhid,nhjd->nhij", q, k) + bias_hff
    scores = scores - scores.amax(dim=-1, keepdim=True)
    out = torch.einsum("nhij,nhjd->nhid", scores.softmax(dim=-1), v).permute(0, 2, 1, 3).reshape(n, f, -1)
    return out @ weights["to_out"].T + weights["to_out_bias"]


@pytest.mark.parametrize("heads,head_dim,frames,rotary_dim", [
    (2, 64, 16, 32),   # LaVie's: RoPE on the first 32 of 64 channels, 16 frames
    (3, 16, 40, 32),   # head narrower than 32 (min(32, head_dim)); offsets past the exact buckets
    (2, 48, 61, 0),    # the interpolation model's: no RoPE, 61 frames
])
def test_temporal_attention_matches_lavie(heads, head_dim, frames, rotary_dim):
    channels, positions = 40, 3
    gen = torch.Generator().manual_seed(0)
    inner = heads * head_dim
    weights = {name: torch.randn(shape, generator=gen) * 0.2 for name, shape in [
        ("to_q", (inner, channels)), ("to_k", (inner, channels)), ("to_v", (inner, channels)),
        ("to_out", (channels, inner)), ("to_out_bias", (channels,)), ("table", (32, heads))]}
    x_nfc = torch.randn((positions, frames, channels), generator=gen)
    rotary_emb = (rotary_embedding_torch.RotaryEmbedding(min(rotary_dim, head_dim)) if rotary_dim else None)
    expected = _lavie_temporal_attention(x_nfc, weights, heads, rotary_emb).numpy()

    def as_jax(name):
        return jnp.asarray(weights[name].numpy())

    params = {"attention": {"query": {"kernel": as_jax("to_q").T}, "key": {"kernel": as_jax("to_k").T},
                            "value": {"kernel": as_jax("to_v").T},
                            "out": {"kernel": as_jax("to_out").T, "bias": as_jax("to_out_bias")}},
              "time_rel_pos_bias": {"embedding": as_jax("table")}}
    module = TemporalAttention(num_heads=heads, head_dim=head_dim, rotary_dim=rotary_dim)
    got = module.apply({"params": params}, jnp.asarray(x_nfc.numpy()))
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)


def test_temporal_attention_starts_as_zero_and_has_lavies_parameters():
    module = TemporalAttention(num_heads=2, head_dim=64)
    x_nfc = jax.random.normal(jax.random.key(0), (3, 16, 40))
    variables = module.init(jax.random.key(1), x_nfc)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, x_nfc)), 0.0)
    shapes = jax.tree.map(lambda p: p.value.shape, variables["params"],
                          is_leaf=lambda p: hasattr(p, "value"))
    assert shapes == {"attention": {"query": {"kernel": (40, 128)}, "key": {"kernel": (40, 128)},
                                    "value": {"kernel": (40, 128)}, "out": {"kernel": (128, 40), "bias": (40,)}},
                      "time_rel_pos_bias": {"embedding": (32, 2)}}
