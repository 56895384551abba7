"""Multi-head attention behind one function, with the kernel chosen by capability.

Models never write their own einsum-softmax: they call `attention()` (or the `Attention`
module) and the config names the kernel. Kernels:

- ``xla``: `jax.nn.dot_product_attention(implementation="xla")`, runs everywhere.
- ``cudnn``: the same API's fused flash kernel, NVIDIA GPUs only, bfloat16/float16 inputs.
- ``chunked``: a `lax.scan` over key/value chunks with an online softmax and a matching
  chunked backward pass (custom VJP), so neither pass holds the full L x S score matrix.
  Pure JAX, so it runs on CPU and scales to very long token sequences.
- ``splash``: the Pallas TPU splash-attention kernel, TPU only, no additive bias.

Autoregressive decoding keeps a `KVCache` (keys and values preallocated to the longest sequence):
`Attention(..., cache=...)` prefills it with a causal pass over a prompt, or appends one token
and attends over the filled part (a masked read of the whole static-size cache, so that the
decode step compiles once inside a `lax.scan`).

Under the ``context`` sharding preset, self-attention over video tokens (``sequence_parallel=True``)
runs as ring attention over the ``context`` mesh axis instead, whatever the kernel setting.

A kernel that the current backend cannot run raises a ValueError naming it and the backend;
nothing silently falls back. ``"auto"`` picks the best one available.

Conventions shared by every kernel: `kv_mask_bs` is a boolean key-padding mask (True =
attend); `bias_bhls` is an additive score bias (T5 relative position bias) broadcastable to
(B, H, L, S); `causal` needs L == S (query i sees keys 0..i); `scale` defaults to 1/sqrt(d)
(T5 uses 1.0). A query row with no key to attend outputs zeros instead of NaN (and gets zero
gradients).
"""

import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2v_jax.checks import one_of, require
from t2v_jax.layers.dense import dense
from t2v_jax.layers.rope import apply_rope
from t2v_jax.parallel import rules as sharding_rules

IMPLEMENTATIONS = ("xla", "cudnn", "chunked", "splash")
_REQUIRED_PLATFORM = {"cudnn": "cuda", "splash": "tpu"}
_PLATFORM_WORDS = {"cuda": "an NVIDIA GPU", "tpu": "a TPU"}
_SPLASH_MAX_BLOCK = 512


def _platform() -> str:
    """'cpu', 'tpu', 'cuda' or 'rocm': cuDNN needs NVIDIA, not just any GPU."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    version = jax.devices()[0].client.platform_version.lower()
    return "rocm" if "rocm" in version else "cuda"


def available_implementations() -> tuple[str, ...]:
    platform = _platform()
    return tuple(name for name in IMPLEMENTATIONS
                 if _REQUIRED_PLATFORM.get(name, platform) == platform)


def check_implementation(name: str, field: str, *, allow_auto: bool = True) -> None:
    """ConfigError naming `field` unless `name` is a kernel that runs on this backend."""
    allowed = IMPLEMENTATIONS + (("auto",) if allow_auto else ())
    one_of(name, field, allowed)
    runnable = available_implementations() + (("auto",) if allow_auto else ())
    require(name in runnable, field, f"{name!r} cannot run on this {jax.default_backend()} backend; available "
                                     f"here: {list(runnable)}")


def resolve_implementation(name: str, *, dtype=None, has_bias: bool = False) -> str:
    """Checks `name` against the current backend; "auto" becomes the best kernel available.

    "auto" picks splash on TPU (unless an additive bias is needed, which splash lacks),
    cuDNN on NVIDIA GPUs for bfloat16/float16 inputs, and xla otherwise. `dtype=None` means
    "unknown" and is treated as half precision.
    """
    platform = _platform()
    if name == "auto":
        half = dtype is None or jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        if platform == "tpu" and not has_bias:
            return "splash"
        if platform == "cuda" and half:
            return "cudnn"
        return "xla"
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is unknown; choose one of "
                         f"{list(IMPLEMENTATIONS) + ['auto']}")
    required = _REQUIRED_PLATFORM.get(name)
    if required is not None and required != platform:
        raise ValueError(
            f"attention implementation {name!r} is not available on backend {platform!r}: it "
            f"needs {_PLATFORM_WORDS[required]}. Available here: {list(available_implementations())}")
    return name


def _row_valid_bl(kv_mask_bs, num_queries: int, causal: bool):
    """True where a query row has at least one key to attend, or None when all rows do."""
    if kv_mask_bs is None:
        return None
    if causal:
        return jnp.cumsum(kv_mask_bs.astype(jnp.int32), axis=1) > 0
    return jnp.broadcast_to(jnp.any(kv_mask_bs, axis=1, keepdims=True),
                            (kv_mask_bs.shape[0], num_queries))


def _as_4d(bias):
    return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


def attention(q_blhd, k_bshd, v_bshd, *, kv_mask_bs=None, bias_bhls=None, causal: bool = False,
              implementation: str = "xla", chunk_size: int = 512, scale: float | None = None,
              sequence_parallel: bool = False):
    """Scaled dot-product attention softmax(scale q k^T + bias) v over heads; see module doc.

    `sequence_parallel=True` says q, k and v are one token sequence split like the model's
    "length" activations (self-attention over video tokens): under a mesh whose rules split
    "length" over the `context` axis, it runs as ring attention across that axis.
    """
    batch, num_queries, num_heads, head_dim = q_blhd.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    num_keys = k_bshd.shape[1]
    if causal and num_queries != num_keys:
        raise ValueError(f"causal attention needs as many queries as keys, got L={num_queries}, "
                         f"S={num_keys}")
    if kv_mask_bs is not None:
        kv_mask_bs = jnp.asarray(kv_mask_bs).astype(bool)
        if kv_mask_bs.shape != (batch, num_keys):
            raise ValueError(f"kv_mask_bs must have shape {(batch, num_keys)}, got {kv_mask_bs.shape}")
    if bias_bhls is not None:
        bias_bhls = _as_4d(jnp.asarray(bias_bhls))
    name = resolve_implementation(implementation, dtype=q_blhd.dtype, has_bias=bias_bhls is not None)
    layout = None
    if sequence_parallel and not causal and bias_bhls is None and num_queries == num_keys:
        layout = _context_parallel_layout(q_blhd.shape)
    if layout is not None:
        return _ring_attention(q_blhd, k_bshd, v_bshd, kv_mask_bs, scale, chunk_size, layout)
    if name == "chunked":
        return _chunked(q_blhd, k_bshd, v_bshd, kv_mask_bs, bias_bhls, causal, chunk_size, scale)
    if name == "splash":
        if bias_bhls is not None:
            raise ValueError("attention implementation 'splash' takes no additive bias; "
                             "use 'xla', 'cudnn' or 'chunked' for biased attention")
        out_blhd = _splash(q_blhd, k_bshd, v_bshd, kv_mask_bs, causal, scale)
    elif name == "cudnn":
        out_blhd = _cudnn(q_blhd, k_bshd, v_bshd, kv_mask_bs, bias_bhls, causal, scale)
    else:
        mask = None if kv_mask_bs is None else kv_mask_bs[:, None, None, :]
        out_blhd = jax.nn.dot_product_attention(q_blhd, k_bshd, v_bshd, bias=bias_bhls, mask=mask,
                                                scale=scale, is_causal=causal, implementation="xla")
    row_valid_bl = _row_valid_bl(kv_mask_bs, num_queries, causal)
    if row_valid_bl is None:
        return out_blhd
    return jnp.where(row_valid_bl[:, :, None, None], out_blhd, 0).astype(out_blhd.dtype)


def _cudnn(q_blhd, k_bshd, v_bshd, kv_mask_bs, bias_bhls, causal, scale):
    """cuDNN flash attention; its bias must span the full (L, S), so masks are broadcast."""
    half = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if q_blhd.dtype not in half:
        raise ValueError(f"attention implementation 'cudnn' needs bfloat16 or float16 inputs, got "
                         f"{q_blhd.dtype}; use 'xla' or a half-precision compute dtype")
    batch, num_queries, _, _ = q_blhd.shape
    num_keys = k_bshd.shape[1]
    mask = None
    if kv_mask_bs is not None:
        mask = jnp.broadcast_to(kv_mask_bs[:, None, None, :], (batch, 1, num_queries, num_keys))
    if bias_bhls is not None:
        bias_bhls = jnp.broadcast_to(
            bias_bhls, bias_bhls.shape[:2] + (num_queries, num_keys)).astype(q_blhd.dtype)
    return jax.nn.dot_product_attention(q_blhd, k_bshd, v_bshd, bias=bias_bhls, mask=mask,
                                        scale=scale, is_causal=causal, implementation="cudnn")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _splash(q_blhd, k_bshd, v_bshd, kv_mask_bs, causal, scale, *, interpret: bool = False):
    """Pallas TPU splash kernel. Lengths are padded to the block size; padded keys are masked
    with segment ids. A query with no valid key is given the masked keys instead (splash
    needs a non-empty row) and is zeroed by the caller. `interpret` runs it on CPU for tests."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    batch, num_queries, num_heads, head_dim = q_blhd.shape
    num_keys = k_bshd.shape[1]
    block = min(_SPLASH_MAX_BLOCK, _round_up(max(num_queries, num_keys), 128))
    padded_q, padded_k = _round_up(num_queries, block), _round_up(num_keys, block)
    if kv_mask_bs is None:
        kv_mask_bs = jnp.ones((batch, num_keys), bool)
    kv_valid_bs = jnp.pad(kv_mask_bs, ((0, 0), (0, padded_k - num_keys)))
    if causal:
        q_valid_bl = jnp.cumsum(kv_valid_bs.astype(jnp.int32), axis=1) > 0
    else:
        q_valid_bl = jnp.broadcast_to(jnp.any(kv_valid_bs, axis=1, keepdims=True), (batch, padded_q))
    segment_ids = sk.SegmentIds(q=q_valid_bl.astype(jnp.int32), kv=kv_valid_bs.astype(jnp.int32))

    def to_bhld(x, padded):
        x = jnp.pad(x, ((0, 0), (0, padded - x.shape[1]), (0, 0), (0, 0)))
        return jnp.transpose(x, (0, 2, 1, 3))

    q_bhld = to_bhld(q_blhd * jnp.asarray(scale, q_blhd.dtype), padded_q)
    k_bhsd, v_bhsd = to_bhld(k_bshd, padded_k), to_bhld(v_bshd, padded_k)
    shape = (padded_q, padded_k)
    head_mask = sm.CausalMask(shape) if causal else sm.FullMask(shape)
    block_sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                                block_q_dq=block, block_kv_dq=block)
    kernel = sk.make_splash_mha(sm.MultiHeadMask([head_mask] * num_heads), block_sizes=block_sizes,
                                head_shards=1, q_seq_shards=1, interpret=interpret)
    out_bhld = jax.vmap(kernel)(q_bhld, k_bhsd, v_bhsd, segment_ids)
    return jnp.transpose(out_bhld, (0, 2, 1, 3))[:, :num_queries].astype(q_blhd.dtype)


def _context_parallel_layout(shape_blhd):
    """(mesh, spec_blhd, axis names) when the active mesh and logical rules split the token axis
    ("length") over mesh axes of total size > 1 that divide the token count; else None. Batch or
    head dimensions that their mesh axes do not divide (a batch of 1 at init) stay whole."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    spec_blhd = sharding_rules.divisible_spec(
        nn.logical_to_mesh_axes(("batch", "length", "heads", None)), shape_blhd, mesh)
    length_axes = spec_blhd[1]
    if length_axes is None:
        return None
    names = (length_axes,) if isinstance(length_axes, str) else tuple(length_axes)
    if math.prod(mesh.shape[name] for name in names) == 1:
        return None
    return mesh, spec_blhd, names


def _fold_key_chunks(q_blhd, stats, k_bshd, v_bshd, mask_bs, scale, chunk_size: int):
    """Folds keys into the online-softmax stats `chunk_size` at a time (padding masked), so a score
    block never exceeds L x chunk_size; each chunk is rematerialised in the backward pass."""
    num_keys = k_bshd.shape[1]
    chunk = max(1, min(chunk_size, num_keys))
    pad = _round_up(num_keys, chunk) - num_keys
    k_bshd = jnp.pad(k_bshd, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v_bshd = jnp.pad(v_bshd, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask_bs = jnp.pad(mask_bs, ((0, 0), (0, pad)))

    @jax.checkpoint
    def step(stats, chunk_inputs):
        return _online_softmax_step(q_blhd, stats, *chunk_inputs, False, scale), None

    stats, _ = jax.lax.scan(step, stats, _chunk_inputs(k_bshd, v_bshd, mask_bs, None, chunk))
    return stats


def _ring_attention(q_blhd, k_bshd, v_bshd, kv_mask_bs, scale, chunk_size, layout):
    """Sequence-parallel self-attention (ring attention, Liu et al. 2023): every device keeps its
    slice of the queries and passes its key/value slice around the ring of the context axes, folding
    each one in with the online softmax, `chunk_size` keys at a time, so no device ever holds the
    whole sequence's keys, values or more than an (L / ring) x chunk block of scores. Autodiff runs
    the ring backwards (ppermute's transpose); ring steps and key chunks are rematerialised so the
    backward pass keeps only the passed slices and the running stats."""
    mesh, spec_blhd, names = layout
    ring_size = math.prod(mesh.shape[name] for name in names)
    perm = [(i, (i + 1) % ring_size) for i in range(ring_size)]
    batch, num_keys = k_bshd.shape[:2]
    if kv_mask_bs is None:
        kv_mask_bs = jnp.ones((batch, num_keys), bool)
    spec_bs = jax.sharding.PartitionSpec(spec_blhd[0], spec_blhd[1])

    def local(q_blhd, k_bshd, v_bshd, mask_bs):
        @jax.checkpoint
        def step(carry, _):
            stats, k_bshd, v_bshd, mask_bs = carry
            stats = _fold_key_chunks(q_blhd, stats, k_bshd, v_bshd, mask_bs, scale, chunk_size)
            passed = [jax.lax.ppermute(x, names, perm) for x in (k_bshd, v_bshd, mask_bs)]
            return (stats, *passed), None

        (stats, *_), _ = jax.lax.scan(step, (_online_softmax_init(q_blhd), k_bshd, v_bshd, mask_bs),
                                      length=ring_size)
        return _online_softmax_finish(stats, q_blhd.dtype)[0]

    return jax.shard_map(local, mesh=mesh, in_specs=(spec_blhd, spec_blhd, spec_blhd, spec_bs),
                         out_specs=spec_blhd)(q_blhd, k_bshd, v_bshd, kv_mask_bs)


def _chunked(q_blhd, k_bshd, v_bshd, kv_mask_bs, bias_bhls, causal, chunk_size, scale):
    """Pads keys to a multiple of the chunk (padding masked) and runs the streaming kernel.

    Broadcasting and padding of the bias happen out here so autodiff reduces its gradient back
    to the caller's shape; the kernel only sees a bias whose key axis is full length."""
    batch, _, _, _ = q_blhd.shape
    num_keys = k_bshd.shape[1]
    chunk = max(1, min(chunk_size, num_keys))
    pad = _round_up(num_keys, chunk) - num_keys
    if kv_mask_bs is None:
        kv_mask_bs = jnp.ones((batch, num_keys), bool)
    kv_mask_bs = jnp.pad(kv_mask_bs, ((0, 0), (0, pad)))
    k_bshd = jnp.pad(k_bshd, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v_bshd = jnp.pad(v_bshd, ((0, 0), (0, pad), (0, 0), (0, 0)))
    if bias_bhls is not None:
        bias_bhls = jnp.broadcast_to(bias_bhls, bias_bhls.shape[:3] + (num_keys,))
        bias_bhls = jnp.pad(bias_bhls, ((0, 0), (0, 0), (0, 0), (0, pad)))
    return _streaming_attention(q_blhd, k_bshd, v_bshd, kv_mask_bs, bias_bhls, causal, chunk, scale)


def _split_chunks(x, chunk: int, axis: int):
    """(..., n*chunk, ...) -> (n, ..., chunk, ...): the scan axis first."""
    n = x.shape[axis] // chunk
    x = x.reshape(x.shape[:axis] + (n, chunk) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _merge_chunks(x, axis: int):
    """Inverse of `_split_chunks`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])


def _chunk_logits(q_blhd, k_bchd, mask_bc, bias_bhlc, offset, causal, scale):
    """Masked f32 logits (B, H, L, C) of one key chunk; masked entries are -inf."""
    logits = jnp.einsum("blhd,bchd->bhlc", q_blhd, k_bchd,
                        preferred_element_type=jnp.float32) * scale
    if bias_bhlc is not None:
        logits = logits + bias_bhlc.astype(jnp.float32)
    valid = mask_bc[:, None, None, :]
    if causal:
        query_l = jnp.arange(q_blhd.shape[1])[:, None]
        key_c = offset + jnp.arange(k_bchd.shape[1])[None, :]
        valid = valid & (key_c <= query_l)[None, None]
    return jnp.where(valid, logits, -jnp.inf)


def _chunk_inputs(k_bshd, v_bshd, mask_bs, bias_bhls, chunk):
    offsets = jnp.arange(k_bshd.shape[1] // chunk) * chunk
    bias_chunks = None if bias_bhls is None else _split_chunks(bias_bhls, chunk, 3)
    return (_split_chunks(k_bshd, chunk, 1), _split_chunks(v_bshd, chunk, 1),
            _split_chunks(mask_bs, chunk, 1), bias_chunks, offsets)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _streaming_attention(q_blhd, k_bshd, v_bshd, mask_bs, bias_bhls, causal, chunk, scale):
    return _streaming_forward(q_blhd, k_bshd, v_bshd, mask_bs, bias_bhls, causal, chunk, scale)[0]


def _online_softmax_step(q_blhd, carry, k_bchd, v_bchd, mask_bc, bias_bhlc, offset, causal, scale):
    """FlashAttention's recurrence: folds one key chunk into the running (max, denominator,
    accumulator) of every query row; shared by the chunked and the context-parallel kernels."""
    max_bhl, denom_bhl, acc_bhld = carry
    logits = _chunk_logits(q_blhd, k_bchd, mask_bc, bias_bhlc, offset, causal, scale)
    new_max = jnp.maximum(max_bhl, logits.max(axis=-1))
    safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    probs = jnp.exp(logits - safe_max[..., None])
    correction = jnp.exp(max_bhl - safe_max)
    denom_bhl = denom_bhl * correction + probs.sum(axis=-1)
    acc_bhld = acc_bhld * correction[..., None] + jnp.einsum(
        "bhlc,bchd->bhld", probs.astype(v_bchd.dtype), v_bchd, preferred_element_type=jnp.float32)
    return new_max, denom_bhl, acc_bhld


def _online_softmax_init(q_blhd):
    """Empty (max, denominator, accumulator); built from q so that inside `shard_map` they vary
    over the same mesh axes as q, as `lax.scan` needs of a carry."""
    acc_bhld = jnp.zeros_like(jnp.transpose(q_blhd, (0, 2, 1, 3)), jnp.float32)
    return jnp.full_like(acc_bhld[..., 0], -jnp.inf), jnp.zeros_like(acc_bhld[..., 0]), acc_bhld


def _online_softmax_finish(carry, dtype):
    """(out_blhd, lse_bhl); rows without any key give zeros (and lse 0)."""
    max_bhl, denom_bhl, acc_bhld = carry
    has_keys = denom_bhl > 0
    safe_denom = jnp.where(has_keys, denom_bhl, 1.0)
    out_blhd = jnp.transpose(acc_bhld / safe_denom[..., None], (0, 2, 1, 3)).astype(dtype)
    lse_bhl = jnp.where(has_keys, max_bhl + jnp.log(safe_denom), 0.0)
    return out_blhd, lse_bhl


def _streaming_forward(q_blhd, k_bshd, v_bshd, mask_bs, bias_bhls, causal, chunk, scale):
    """Online softmax over key chunks; also returns the log-sum-exp per row, which is all the
    backward pass needs to rebuild probabilities."""
    def step(carry, chunk_inputs):
        return _online_softmax_step(q_blhd, carry, *chunk_inputs, causal, scale), None

    carry, _ = jax.lax.scan(step, _online_softmax_init(q_blhd),
                            _chunk_inputs(k_bshd, v_bshd, mask_bs, bias_bhls, chunk))
    return _online_softmax_finish(carry, q_blhd.dtype)


def _streaming_fwd(q_blhd, k_bshd, v_bshd, mask_bs, bias_bhls, causal, chunk, scale):
    out_blhd, lse_bhl = _streaming_forward(q_blhd, k_bshd, v_bshd, mask_bs, bias_bhls, causal, chunk,
                                           scale)
    return out_blhd, (q_blhd, k_bshd, v_bshd, mask_bs, bias_bhls, out_blhd, lse_bhl)


def _streaming_bwd(causal, chunk, scale, residuals, dout_blhd):
    """Chunk-by-chunk gradients from the saved log-sum-exp (FlashAttention-2 backward)."""
    q_blhd, k_bshd, v_bshd, mask_bs, bias_bhls, out_blhd, lse_bhl = residuals
    dout_blhd = dout_blhd.astype(jnp.float32)
    delta_bhl = jnp.einsum("blhd,blhd->bhl", dout_blhd, out_blhd.astype(jnp.float32))
    bias_sum_axes = () if bias_bhls is None else tuple(
        axis for axis in range(3) if bias_bhls.shape[axis] == 1)

    def step(dq_blhd, chunk_inputs):
        k_bchd, v_bchd, mask_bc, bias_bhlc, offset = chunk_inputs
        logits = _chunk_logits(q_blhd, k_bchd, mask_bc, bias_bhlc, offset, causal, scale)
        probs = jnp.exp(logits - lse_bhl[..., None])
        dv_bchd = jnp.einsum("bhlc,blhd->bchd", probs, dout_blhd)
        dprobs = jnp.einsum("blhd,bchd->bhlc", dout_blhd, v_bchd, preferred_element_type=jnp.float32)
        dlogits = probs * (dprobs - delta_bhl[..., None])
        dq_blhd = dq_blhd + jnp.einsum("bhlc,bchd->blhd", dlogits, k_bchd,
                                       preferred_element_type=jnp.float32) * scale
        dk_bchd = jnp.einsum("bhlc,blhd->bchd", dlogits, q_blhd,
                             preferred_element_type=jnp.float32) * scale
        dbias = None if bias_bhlc is None else dlogits.sum(axis=bias_sum_axes, keepdims=True)
        return dq_blhd, (dk_bchd, dv_bchd, dbias)

    dq_blhd, (dk_chunks, dv_chunks, dbias_chunks) = jax.lax.scan(
        step, jnp.zeros(q_blhd.shape, jnp.float32),
        _chunk_inputs(k_bshd, v_bshd, mask_bs, bias_bhls, chunk))
    dbias = None if bias_bhls is None else _merge_chunks(dbias_chunks, 3).astype(bias_bhls.dtype)
    return (dq_blhd.astype(q_blhd.dtype), _merge_chunks(dk_chunks, 1).astype(k_bshd.dtype),
            _merge_chunks(dv_chunks, 1).astype(v_bshd.dtype), None, dbias)


_streaming_attention.defvjp(_streaming_fwd, _streaming_bwd)


class KVCache(NamedTuple):
    """Keys and values of the positions so far, preallocated to the longest sequence; `pos`
    (int32 scalar) counts the filled positions and is where the next token's key goes."""

    k_bshd: jax.Array
    v_bshd: jax.Array
    pos: jax.Array


def init_kv_cache(batch: int, length: int, num_heads: int, head_dim: int, dtype=jnp.float32) -> KVCache:
    """An empty cache with room for `length` positions."""
    zeros = jnp.zeros((batch, length, num_heads, head_dim), dtype)
    return KVCache(zeros, zeros, jnp.zeros((), jnp.int32))


def _cached_attention(q_blhd, k_blhd, v_blhd, cache: KVCache, *, implementation, chunk_size, scale):
    """Writes the new keys/values at `cache.pos` and attends. Several new tokens are a prefill:
    a causal pass over them alone, valid because a prefill starts from an empty cache (the
    models that use a cache enforce that). One new token attends over the whole cache with the
    positions not yet written masked out."""
    length = q_blhd.shape[1]
    write = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=cache.pos, axis=1)
    new_cache = KVCache(write(cache.k_bshd, k_blhd.astype(cache.k_bshd.dtype)),
                        write(cache.v_bshd, v_blhd.astype(cache.v_bshd.dtype)), cache.pos + length)
    if length > 1:
        out_blhd = attention(q_blhd, k_blhd, v_blhd, causal=True, implementation=implementation,
                             chunk_size=chunk_size, scale=scale)
    else:
        batch, cache_length = cache.k_bshd.shape[:2]
        filled_bs = jnp.broadcast_to(jnp.arange(cache_length) < new_cache.pos, (batch, cache_length))
        out_blhd = attention(q_blhd, new_cache.k_bshd.astype(q_blhd.dtype), new_cache.v_bshd.astype(q_blhd.dtype),
                             kv_mask_bs=filled_bs, implementation=implementation, chunk_size=chunk_size,
                             scale=scale)
    return out_blhd, new_cache


class Attention(nn.Module):
    """q/k/v/out projections around `attention()`; self-attention when `context_bsd` is None.

    `rope` is None or (cos_ld, sin_ld, num_chunks), applied to q and k in self-attention in the
    `rope_interleaved` feature layout (`layers/rope.py`); cos/sin narrower than head_dim rotate its
    first features only. `out_bias` (default: `use_bias`) is Stable Diffusion's layout, q/k/v
    without bias and the output with one.
    With `cache` (a `KVCache`, self-attention only) the call returns `(out, new_cache)`: a
    multi-token call prefills an empty cache causally, a one-token call decodes.
    `out_kernel_init` lets a model zero-initialise the output (LaVie's temporal attention);
    `scale=None` is 1/sqrt(head_dim), T5 uses 1.0. `memory_bmd` (self-attention only) are tokens every
    query attends to besides the sequence, as Transformer-XL's cached states and MALT's memory: keys and
    values through the same projections, without position rotation, never masked."""

    num_heads: int
    head_dim: int
    out_features: int | None = None
    implementation: str = "xla"
    use_bias: bool = True
    out_bias: bool | None = None
    rope_interleaved: bool = False
    causal: bool = False
    chunk_size: int = 512
    scale: float | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init
    out_kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x_bld, context_bsd=None, *, kv_mask_bs=None, bias_bhls=None, rope=None,
                 cache: KVCache | None = None, memory_bmd=None):
        if rope is not None and context_bsd is not None:
            raise ValueError("rope applies to self-attention only; got a context for cross-attention")
        if cache is not None and (context_bsd is not None or kv_mask_bs is not None or bias_bhls is not None):
            raise ValueError("a KV cache serves causal self-attention only (no context, mask or bias)")
        if memory_bmd is not None and (context_bsd is not None or cache is not None or self.causal
                                       or bias_bhls is not None):
            raise ValueError("memory tokens join non-causal self-attention only (no context, cache or bias)")
        source_bsd = x_bld if context_bsd is None else context_bsd
        memory_tokens = 0 if memory_bmd is None else memory_bmd.shape[1]
        if memory_tokens:
            source_bsd = jnp.concatenate([memory_bmd.astype(x_bld.dtype), x_bld], axis=1)
            if kv_mask_bs is not None:
                kv_mask_bs = jnp.concatenate([jnp.ones(memory_bmd.shape[:2], bool), kv_mask_bs], axis=1)
        inner = self.num_heads * self.head_dim

        proj = functools.partial(dense, use_bias=self.use_bias, dtype=self.dtype,
                                 param_dtype=self.param_dtype)

        def project(name, inputs):
            y = proj(inner, ("embed", "heads"), kernel_init=self.kernel_init, name=name)(inputs)
            return y.reshape(y.shape[:-1] + (self.num_heads, self.head_dim))

        q_blhd = project("query", x_bld)
        k_bshd = project("key", source_bsd)
        v_bshd = project("value", source_bsd)
        if rope is not None:
            cos_ld, sin_ld, num_chunks = rope
            q_blhd = apply_rope(q_blhd, cos_ld, sin_ld, num_chunks=num_chunks, interleaved=self.rope_interleaved)
            rotated_bshd = apply_rope(k_bshd[:, memory_tokens:], cos_ld, sin_ld, num_chunks=num_chunks,
                                      interleaved=self.rope_interleaved)
            k_bshd = (jnp.concatenate([k_bshd[:, :memory_tokens], rotated_bshd], axis=1) if memory_tokens
                      else rotated_bshd)
        out_features = self.out_features or x_bld.shape[-1]
        out_bias = self.use_bias if self.out_bias is None else self.out_bias
        out = dense(out_features, ("heads", "embed"), use_bias=out_bias, kernel_init=self.out_kernel_init,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="out")
        if cache is not None:
            o_blhd, cache = _cached_attention(q_blhd, k_bshd, v_bshd, cache, implementation=self.implementation,
                                              chunk_size=self.chunk_size, scale=self.scale)
            return out(o_blhd.reshape(o_blhd.shape[:-2] + (inner,))), cache
        o_blhd = attention(q_blhd, k_bshd, v_bshd, kv_mask_bs=kv_mask_bs, bias_bhls=bias_bhls,
                           causal=self.causal, implementation=self.implementation,
                           chunk_size=self.chunk_size, scale=self.scale,
                           sequence_parallel=context_bsd is None and not memory_tokens)
        return out(o_blhd.reshape(o_blhd.shape[:-2] + (inner,)))
