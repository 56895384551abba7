"""Multi-scale retention (RetNet, Sun et al. 2023) in its three equivalent forms.

Retention replaces softmax attention by a causal, exponentially decayed linear attention, so the
same layer can be trained in parallel over a sequence, decoded token by token from a fixed-size
state, or run chunk by chunk over long sequences (FlashVideo's use). `mode` selects the form:

- ``parallel``: O = (Q K^T * D) V with D[n, m] = gamma^(n-m) for n >= m, else 0.
- ``recurrent``: S_n = gamma S_{n-1} + k_n^T v_n, o_n = q_n S_n; a `lax.scan` over tokens.
- ``chunkwise``: parallel inside each chunk plus the recurrent state across chunks; a `lax.scan`
  over chunks (a shorter last chunk is one more step outside the scan).

Numerics follow torchscale's `MultiScaleRetention` + `RetNetRelPos` (so weights and outputs can
be compared with it): per-head decay gamma_h = 1 - 2^(-5-h), rotate-every-two (xPos-style) rotation
of q and k with angles 1/10000^linspace(0, 1, d/2), k scaled by d^-0.5, value heads
`value_factor` times wider, D divided by the square root of its row sums, the scores divided by
their |row sum| clamped at 1 (no gradient through that divisor), RMS group norm per head without
affine (eps 1e-6), swish gate, output projection.

Unlike torchscale, the three forms here are the same function: the recurrent state carries,
beside torchscale's normalised k^T v sum and its decay-sum `scale`, the equally normalised sum of
keys, so the recurrent and chunkwise forms reproduce the parallel score row sums (and hence the
clamp) exactly. torchscale's recurrent form omits that clamp and its chunkwise form uses a
different normalisation, so both differ from its own parallel form.

The state is an explicit pytree (`RetentionState`) passed in and returned: prefill a prompt in
any mode, then continue in any other.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2v_jax.layers.dense import dense
from t2v_jax.layers.norms import RMSNorm
from t2v_jax.layers.rope import apply_rope

MODES = ("parallel", "recurrent", "chunkwise")


class RetentionState(NamedTuple):
    """Everything the sequence so far contributes to later tokens, normalised as torchscale's
    `incremental_state`: with scale_h = sum_{j<n} gamma^j (0 before any token),
    kv = sum_m gamma^(n-1-m) k_m^T v_m / sqrt(scale) and ksum the same sum of k_m alone."""

    kv_bhkv: jax.Array
    ksum_bhk: jax.Array
    scale_h: jax.Array
    pos: jax.Array  # int32 scalar: tokens consumed, the position of the next one


def init_retention_state(batch: int, num_heads: int, key_dim: int, value_dim: int) -> RetentionState:
    """The empty state (no tokens yet); `key_dim`/`value_dim` are per head."""
    return RetentionState(jnp.zeros((batch, num_heads, key_dim, value_dim), jnp.float32),
                          jnp.zeros((batch, num_heads, key_dim), jnp.float32),
                          jnp.zeros((num_heads,), jnp.float32), jnp.zeros((), jnp.int32))


def retention_log_decay(num_heads: int):
    """log gamma_h = log(1 - 2^(-5-h)) (torchscale `RetNetRelPos.decay`): head h looks back about
    2^(5+h) tokens, which is what makes the retention multi-scale."""
    return jnp.log(1.0 - 2.0 ** (-5.0 - jnp.arange(num_heads, dtype=jnp.float32)))


def retention_rotation(positions_l, head_dim: int):
    """(cos_ld, sin_ld) for rotate-every-two, torchscale's angles 1/10000^linspace(0, 1, d/2)
    (not RoPE's 1/10000^(2i/d)), each repeated for its feature pair."""
    if head_dim % 2:
        raise ValueError(f"retention needs an even key head dim, got {head_dim}")
    angle_f = 1.0 / 10000.0 ** jnp.linspace(0.0, 1.0, head_dim // 2, dtype=jnp.float32)
    angles_ld = jnp.repeat(jnp.asarray(positions_l, jnp.float32)[:, None] * angle_f[None, :], 2, axis=-1)
    return jnp.cos(angles_ld), jnp.sin(angles_ld)


def _decay_mask_hll(length: int, log_decay_h):
    """D[h, n, m] = gamma_h^(n-m) for n >= m, else 0 (unnormalised)."""
    idx = jnp.arange(length)
    diff_ll = idx[:, None] - idx[None, :]
    causal_ll = diff_ll >= 0
    powers_hll = jnp.exp(jnp.where(causal_ll, diff_ll, 0)[None] * log_decay_h[:, None, None])
    return jnp.where(causal_ll[None], powers_hll, 0.0)


def _clamped(num_bhlv, den_bhl):
    """Divides by |score row sum| clamped at 1 (torchscale's detached divisor)."""
    den_bhl = jnp.maximum(jnp.abs(jax.lax.stop_gradient(den_bhl)), 1.0)
    return num_bhlv / den_bhl[..., None]


def _parallel(q_bhlk, k_bhlk, v_bhlv, log_decay_h):
    """(Q K^T * D / sqrt(rowsum D)) V over the whole sequence, as torchscale's parallel form."""
    d_hll = _decay_mask_hll(q_bhlk.shape[2], log_decay_h)
    d_hll = d_hll / jnp.sqrt(d_hll.sum(-1, keepdims=True))
    scores_bhll = jnp.einsum("bhnk,bhmk->bhnm", q_bhlk, k_bhlk) * d_hll
    return _clamped(jnp.einsum("bhnm,bhmv->bhnv", scores_bhll, v_bhlv), scores_bhll.sum(-1))


def _advance(state: RetentionState, k_bhck, v_bhcv, log_decay_h) -> RetentionState:
    """The state after C more tokens: S' = gamma^C S + sum_j gamma^(C-1-j) k_j^T v_j, kept
    normalised by sqrt(scale) (for C = 1 exactly torchscale's recurrent update)."""
    chunk = k_bhck.shape[2]
    gamma_c_h = jnp.exp(chunk * log_decay_h)
    weights_hc = jnp.exp((chunk - 1 - jnp.arange(chunk))[None, :] * log_decay_h[:, None])
    new_scale_h = gamma_c_h * state.scale_h + weights_hc.sum(-1)
    carry_h = gamma_c_h * jnp.sqrt(state.scale_h) / jnp.sqrt(new_scale_h)
    inv_h = 1.0 / jnp.sqrt(new_scale_h)
    wk_bhck = k_bhck * weights_hc[None, :, :, None]
    kv_bhkv = (state.kv_bhkv * carry_h[None, :, None, None]
               + jnp.einsum("bhck,bhcv->bhkv", wk_bhck, v_bhcv) * inv_h[None, :, None, None])
    ksum_bhk = state.ksum_bhk * carry_h[None, :, None] + wk_bhck.sum(2) * inv_h[None, :, None]
    return RetentionState(kv_bhkv, ksum_bhk, new_scale_h, state.pos + chunk)


def _recurrent(state, q_bhlk, k_bhlk, v_bhlv, log_decay_h):
    """Token by token: update the state with (k_n, v_n), then read it with q_n."""
    def step(state, qkv):
        q_bhk, k_bhk, v_bhv = qkv
        state = _advance(state, k_bhk[:, :, None], v_bhv[:, :, None], log_decay_h)
        num_bhv = jnp.einsum("bhk,bhkv->bhv", q_bhk, state.kv_bhkv)
        den_bh = jnp.einsum("bhk,bhk->bh", q_bhk, state.ksum_bhk)
        return state, _clamped(num_bhv, den_bh)

    seq = tuple(jnp.moveaxis(x, 2, 0) for x in (q_bhlk, k_bhlk, v_bhlv))
    state, o_lbhv = jax.lax.scan(step, state, seq)
    return state, jnp.moveaxis(o_lbhv, 0, 2)


def _chunk(state, q_bhck, k_bhck, v_bhcv, log_decay_h):
    """One chunk: parallel retention inside it plus the decayed state of everything before.

    Row i (position n = pos + i) of the parallel form is
    [sum_{j<=i} gamma^(i-j) q.k_j (.) + gamma^(i+1) sqrt(scale) q.(state)] / sqrt(rowsum_n), with
    rowsum_n = gamma^(i+1) scale + sum_{j<=i} gamma^j; numerator (.) = v_j / kv, divisor = 1 / ksum.
    """
    chunk = q_bhck.shape[2]
    d_hcc = _decay_mask_hll(chunk, log_decay_h)
    gamma_pow_hc = jnp.exp((jnp.arange(chunk) + 1)[None, :] * log_decay_h[:, None])
    cross_hc = gamma_pow_hc * jnp.sqrt(state.scale_h)[:, None]
    norm_hc = 1.0 / jnp.sqrt(gamma_pow_hc * state.scale_h[:, None] + d_hcc.sum(-1))
    scores_bhcc = jnp.einsum("bhik,bhjk->bhij", q_bhck, k_bhck) * d_hcc
    num_bhcv = (jnp.einsum("bhij,bhjv->bhiv", scores_bhcc, v_bhcv)
                + cross_hc[None, :, :, None] * jnp.einsum("bhik,bhkv->bhiv", q_bhck, state.kv_bhkv))
    den_bhc = scores_bhcc.sum(-1) + cross_hc[None] * jnp.einsum("bhik,bhk->bhi", q_bhck, state.ksum_bhk)
    o_bhcv = _clamped(num_bhcv * norm_hc[None, :, :, None], den_bhc * norm_hc[None])
    return _advance(state, k_bhck, v_bhcv, log_decay_h), o_bhcv


def _chunkwise(state, q_bhlk, k_bhlk, v_bhlv, log_decay_h, chunk_size: int):
    """Full chunks through a scan, then the shorter remainder (if any) as one more chunk, so the
    returned state covers exactly the real tokens (no padding enters it)."""
    length = q_bhlk.shape[2]
    full = length // chunk_size * chunk_size
    outputs = []
    if full:
        def split(x):  # (B, H, N*C, F) -> (N, B, H, C, F)
            b, h, _, f = x.shape
            return jnp.moveaxis(x[:, :, :full].reshape(b, h, full // chunk_size, chunk_size, f), 2, 0)

        def step(state, qkv):
            return _chunk(state, *qkv, log_decay_h)

        state, o_nbhcv = jax.lax.scan(step, state, tuple(split(x) for x in (q_bhlk, k_bhlk, v_bhlv)))
        o_bhnv = jnp.moveaxis(o_nbhcv, 0, 2)
        outputs.append(o_bhnv.reshape(o_bhnv.shape[:2] + (full, o_bhnv.shape[-1])))
    if full < length:
        state, o_bhrv = _chunk(state, q_bhlk[:, :, full:], k_bhlk[:, :, full:], v_bhlv[:, :, full:],
                               log_decay_h)
        outputs.append(o_bhrv)
    return state, jnp.concatenate(outputs, axis=2) if len(outputs) > 1 else outputs[0]


def _xavier(gain: float):
    """torchscale's `xavier_uniform_(weight, gain)`."""
    return nn.initializers.variance_scaling(gain ** 2, "fan_avg", "uniform")


class MultiScaleRetention(nn.Module):
    """RetNet's multi-scale retention; `__call__(x_bld, state)` returns `(y_bld, state)`.

    `state` (a `RetentionState`, None = empty) holds the tokens before `x_bld`; the returned one
    includes `x_bld`. The parallel form starts from an empty state only (it has no cross term).
    Parameters are the same in every mode, so one set of weights can train in parallel and decode
    recurrently (`mode` may also be given per call). Key head dim = embed / heads, value head dim
    = value_factor * embed / heads.
    """

    num_heads: int
    value_factor: int = 2
    mode: str = "parallel"
    chunk_size: int = 64
    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def initial_state(self, batch: int, embed_dim: int) -> RetentionState:
        key_dim = embed_dim // self.num_heads
        return init_retention_state(batch, self.num_heads, key_dim, key_dim * self.value_factor)

    @nn.compact
    def __call__(self, x_bld, state: RetentionState | None = None, *, mode: str | None = None):
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"retention mode {mode!r} is unknown; choose one of {list(MODES)}")
        batch, length, embed = x_bld.shape
        heads = self.num_heads
        if embed % heads:
            raise ValueError(f"embed dim {embed} is not divisible by num_heads={heads}")
        key_dim = embed // heads
        value_dim = key_dim * self.value_factor
        if mode == "parallel" and state is not None:
            raise ValueError("parallel retention starts from an empty state; use chunkwise to continue one")
        if state is None:
            state = self.initial_state(batch, embed)

        proj = functools.partial(dense, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)

        def project(name, features, head_features, gain):
            y = proj(features, ("embed", "heads"), kernel_init=_xavier(gain), name=name)(x_bld)
            return y.reshape(batch, length, heads, head_features)

        q_blhk = project("q_proj", embed, key_dim, 2 ** -2.5)
        k_blhk = project("k_proj", embed, key_dim, 2 ** -2.5) * key_dim ** -0.5
        v_blhv = project("v_proj", embed * self.value_factor, value_dim, 2 ** -2.5)
        g_bld = proj(embed * self.value_factor, ("embed", "heads"), kernel_init=_xavier(2 ** -2.5),
                     name="g_proj")(x_bld)

        cos_ld, sin_ld = retention_rotation(state.pos + jnp.arange(length), key_dim)
        q_bhlk, k_bhlk, v_bhlv = (
            jnp.swapaxes(t.astype(jnp.float32), 1, 2)
            for t in (apply_rope(q_blhk, cos_ld, sin_ld, interleaved=True),
                      apply_rope(k_blhk, cos_ld, sin_ld, interleaved=True), v_blhv))
        log_decay_h = retention_log_decay(heads)
        if mode == "parallel":
            o_bhlv = _parallel(q_bhlk, k_bhlk, v_bhlv, log_decay_h)
            state = _advance(state, k_bhlk, v_bhlv, log_decay_h)
        elif mode == "recurrent":
            state, o_bhlv = _recurrent(state, q_bhlk, k_bhlk, v_bhlv, log_decay_h)
        else:
            state, o_bhlv = _chunkwise(state, q_bhlk, k_bhlk, v_bhlv, log_decay_h, self.chunk_size)

        o_blhv = RMSNorm(eps=self.eps, use_affine=False, name="group_norm")(jnp.swapaxes(o_bhlv, 1, 2))
        o_bld = nn.silu(g_bld.astype(jnp.float32)) * o_blhv.reshape(batch, length, heads * value_dim)
        out = proj(embed, ("heads", "embed"), kernel_init=_xavier(1.0), name="out_proj")
        y_bld = out(o_bld.astype(self.dtype))
        return y_bld, state
