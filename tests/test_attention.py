"""Every attention kernel against a plain numpy softmax, and the chunked kernel's memory bound."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.layers import attention as attn
from t2v_jax.layers.attention import (IMPLEMENTATIONS, Attention, attention,
                                      available_implementations, resolve_implementation)
from t2v_jax.layers.rope import rope_3d

AVAILABLE = available_implementations()
UNAVAILABLE = tuple(name for name in IMPLEMENTATIONS if name not in AVAILABLE)
run = jax.jit(attention, static_argnames=("causal", "implementation", "chunk_size", "scale"))


def reference(q, k, v, mask=None, bias=None, causal=False, scale=None):
    """Textbook attention in float64 numpy; rows with no key give zeros."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = np.einsum("blhd,bshd->bhls", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    valid = np.ones(logits.shape, bool)
    if mask is not None:
        valid &= np.asarray(mask)[:, None, None, :]
    if causal:
        valid &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(valid, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    probs = np.where(valid, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0)), 0)
    denom = probs.sum(-1, keepdims=True)
    probs = probs / np.where(denom > 0, denom, 1)
    return np.einsum("bhls,bshd->blhd", probs, v)


def make_inputs(seed, batch, num_queries, num_keys, heads=2, dim=8, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, num_queries, heads, dim))
    k = rng.normal(size=(batch, num_keys, heads, dim))
    v = rng.normal(size=(batch, num_keys, heads, dim))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def padding_mask(seed, batch, num_keys, empty_row=None):
    mask = np.random.default_rng(seed).random((batch, num_keys)) > 0.35
    mask[:, 0] = True
    if empty_row is not None:
        mask[empty_row] = False
    return jnp.asarray(mask)


CASES = {
    "self": dict(num_queries=9, num_keys=9),
    "cross_mask": dict(num_queries=5, num_keys=11, mask=True),
    "bias_mask": dict(num_queries=6, num_keys=10, mask=True, bias=True),
    "causal": dict(num_queries=10, num_keys=10, causal=True),
    "causal_mask_bias": dict(num_queries=10, num_keys=10, causal=True, mask=True, bias=True),
    "t5_unscaled": dict(num_queries=6, num_keys=6, mask=True, bias=True, scale=1.0),
}


# Chunk 4 divides none of the key lengths; 1 and 64 are the extremes (one key per step, one step).
REFERENCE_RUNS = ([(name, case, 4) for name in AVAILABLE for case in sorted(CASES)]
                  + [("chunked", "causal_mask_bias", 1), ("chunked", "bias_mask", 64)])


@pytest.mark.parametrize("implementation,case,chunk_size", REFERENCE_RUNS)
def test_matches_numpy_reference(implementation, case, chunk_size):
    spec = CASES[case]
    q, k, v = make_inputs(0, 2, spec["num_queries"], spec["num_keys"])
    mask = padding_mask(1, 2, spec["num_keys"]) if spec.get("mask") else None
    bias = None
    if spec.get("bias"):
        bias = jnp.asarray(np.random.default_rng(2).normal(
            size=(1, 2, spec["num_queries"], spec["num_keys"])), jnp.float32)
    causal, scale = spec.get("causal", False), spec.get("scale")
    out = run(q, k, v, kv_mask_bs=mask, bias_bhls=bias, causal=causal,
              implementation=implementation, chunk_size=chunk_size, scale=scale)
    np.testing.assert_allclose(out, reference(q, k, v, mask, bias, causal, scale), atol=2e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("implementation", AVAILABLE)
def test_fully_masked_rows_are_zero_not_nan(implementation, causal):
    q, k, v = make_inputs(3, 2, 7, 7)
    mask = np.ones((2, 7), bool)
    mask[0] = False
    mask[1, :3] = False
    mask = jnp.asarray(mask)
    out = run(q, k, v, kv_mask_bs=mask, causal=causal, implementation=implementation, chunk_size=2)
    grad = jax.jit(jax.grad(lambda q: run(q, k, v, kv_mask_bs=mask, causal=causal,
                                          implementation=implementation, chunk_size=2).sum()))(q)
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    np.testing.assert_array_equal(out[0], 0.0)
    if causal:
        np.testing.assert_array_equal(out[1, :3], 0.0)
    np.testing.assert_allclose(out, reference(q, k, v, mask, causal=causal), atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_gradients_match_xla(causal):
    q, k, v = make_inputs(4, 2, 8, 8)
    mask = padding_mask(5, 2, 8, empty_row=1 if not causal else None)
    bias = jnp.asarray(np.random.default_rng(6).normal(size=(1, 2, 8, 8)), jnp.float32)

    def loss(implementation):
        def fn(q, k, v, bias):
            out = attention(q, k, v, kv_mask_bs=mask, bias_bhls=bias, causal=causal,
                            implementation=implementation, chunk_size=3, scale=0.7)
            return jnp.sum(out * jnp.cos(out))
        return jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3)))(q, k, v, bias)

    for got, want in zip(loss("chunked"), loss("xla")):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_bfloat16_kernels_agree():
    q, k, v = make_inputs(7, 2, 16, 24, dtype=jnp.bfloat16)
    mask = padding_mask(8, 2, 24)
    want = reference(q, k, v, mask)
    for implementation in AVAILABLE:
        out = run(q, k, v, kv_mask_bs=mask, implementation=implementation, chunk_size=5)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2)


def _all_shapes(jaxpr):
    """Shapes of every value any equation produces, recursing into scan/custom_vjp bodies."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _all_shapes(inner)


def test_chunked_never_builds_the_full_score_matrix():
    batch, length, heads, chunk = 1, 96, 2, 8
    q, k, v = make_inputs(9, batch, length, length, heads=heads)
    bias = jnp.zeros((1, heads, 1, 1))

    def loss(implementation):
        return lambda q, k, v: attention(q, k, v, bias_bhls=bias, implementation=implementation,
                                         chunk_size=chunk).sum()

    def largest(fn):
        jaxpr = jax.make_jaxpr(jax.grad(fn, argnums=(0, 1, 2)))(q, k, v).jaxpr
        return max(math.prod(shape) for shape in _all_shapes(jaxpr))

    full = batch * heads * length * length
    assert largest(loss("xla")) >= full
    assert largest(loss("chunked")) <= batch * heads * length * chunk


@pytest.mark.parametrize("implementation", UNAVAILABLE)
def test_unavailable_implementation_raises(implementation):
    q, k, v = make_inputs(0, 1, 4, 4)
    with pytest.raises(ValueError, match=f"'{implementation}'.*backend '{jax.default_backend()}'"):
        attention(q, k, v, implementation=implementation)


def test_resolve_implementation():
    backend = jax.default_backend()
    if backend == "cpu":
        assert resolve_implementation("auto") == "xla"
        assert resolve_implementation("auto", dtype=jnp.bfloat16) == "xla"
    assert resolve_implementation("auto") in AVAILABLE
    assert resolve_implementation("chunked") == "chunked"
    with pytest.raises(ValueError, match="unknown.*choose one of"):
        resolve_implementation("flash")
    with pytest.raises(ValueError, match="as many queries as keys"):
        attention(*make_inputs(0, 1, 3, 5), causal=True)


def test_splash_wrapper_in_interpret_mode():
    """Runs the TPU kernel's wrapper (padding, scaling, segment ids, rows with no key) through
    the Pallas interpreter on CPU, so that the TPU path is checked where no TPU is present."""
    q, k, v = make_inputs(10, 2, 7, 7)
    mask = np.array(padding_mask(11, 2, 7))
    mask[1, :3] = False
    mask = jnp.asarray(mask)

    def splash(q):
        valid = attn._row_valid_bl(mask, 7, True)[:, :, None, None]
        return jnp.where(valid, attn._splash(q, k, v, mask, True, 1 / math.sqrt(8), interpret=True), 0)

    np.testing.assert_allclose(splash(q), reference(q, k, v, mask, causal=True), atol=2e-5)
    grad = jax.grad(lambda q: jnp.sum(splash(q) ** 2))(q)
    want = jax.grad(lambda q: jnp.sum(run(q, k, v, kv_mask_bs=mask, causal=True) ** 2))(q)
    np.testing.assert_allclose(grad, want, atol=5e-5)


def test_attention_module_matches_manual_projection_with_rope():
    heads, dim, width = 2, 12, 20
    x = jnp.asarray(np.random.default_rng(12).normal(size=(2, 2 * 2 * 3, width)), jnp.float32)
    cos, sin = jax.jit(lambda: rope_3d((2, 2, 3), dim, interpolation_scale=(2.0, 1.0, 1.0)))()
    layer = Attention(num_heads=heads, head_dim=dim)
    init = jax.jit(lambda key: layer.init(key, x, rope=(cos, sin, 3)))
    params = nn.meta.unbox(init(jax.random.key(0))["params"])
    params = jax.tree.map(lambda p: np.asarray(p) + 0.1, params)
    out = jax.jit(lambda p: layer.apply({"params": p}, x, rope=(cos, sin, 3)))(params)

    def project(name, rotate):
        y = (np.asarray(x) @ params[name]["kernel"] + params[name]["bias"]).reshape(2, -1, heads, dim)
        if not rotate:
            return y
        chunks = y.reshape(y.shape[:-1] + (3, 2, dim // 6))
        partner = np.stack([-chunks[..., 1, :], chunks[..., 0, :]], axis=-2).reshape(y.shape)
        return y * np.asarray(cos)[:, None] + partner * np.asarray(sin)[:, None]

    o = reference(project("query", True), project("key", True), project("value", False))
    want = o.reshape(2, -1, heads * dim) @ params["out"]["kernel"] + params["out"]["bias"]
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)
    chunked = Attention(num_heads=heads, head_dim=dim, implementation="chunked", chunk_size=5)
    chunked_out = jax.jit(lambda p: chunked.apply({"params": p}, x, rope=(cos, sin, 3)))(params)
    np.testing.assert_allclose(chunked_out, out, atol=1e-5)


def test_attention_module_cross_attention_matches_manual_projection():
    """Cross-attention with a key mask and out_features, on random inputs and weights (the default
    init, so no projection is zero): the module equals the projections done by hand around the numpy
    reference, and the mask changes the masked row."""
    rng = np.random.default_rng(13)
    x = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
    mask = jnp.asarray([[True] * 5, [True, True, False, False, False]])
    layer = Attention(num_heads=2, head_dim=4, out_features=7, use_bias=False)
    variables = jax.jit(lambda key: layer.init(key, x, context, kv_mask_bs=mask))(jax.random.key(1))
    apply = jax.jit(lambda v, mask: layer.apply(v, x, context, kv_mask_bs=mask))
    out = apply(variables, mask)
    params = nn.meta.unbox(variables["params"])
    assert "bias" not in params["query"] and params["key"]["kernel"].shape == (6, 8)
    assert all(np.abs(params[name]["kernel"]).min() > 0 for name in ("query", "key", "value", "out"))

    def project(name, inputs):
        return (np.asarray(inputs) @ params[name]["kernel"]).reshape(2, -1, 2, 4)

    o = reference(project("query", x), project("key", context), project("value", context), mask)
    want = o.reshape(2, 3, 8) @ params["out"]["kernel"]
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
    unmasked = apply(variables, jnp.ones_like(mask))
    np.testing.assert_allclose(unmasked[0], out[0], atol=1e-6)
    assert np.abs(unmasked[1] - out[1]).min() > 1e-4
    with pytest.raises(ValueError, match="self-attention only"):
        cos, sin = rope_3d((1, 1, 3), 4 * 3)
        layer.apply(variables, x, context, rope=(cos, sin, 3))


def test_zero_out_kernel_init_zeroes_only_the_output():
    """out_kernel_init (LaVie's zero-initialised temporal attention) reaches the output projection and
    nothing else: random inputs give an exactly zero output, and the query, key and value kernels are
    the default init's (not zero)."""
    rng = np.random.default_rng(14)
    x = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
    zero_out = Attention(num_heads=2, head_dim=4, out_kernel_init=jax.nn.initializers.zeros)
    default = Attention(num_heads=2, head_dim=4)
    variables = zero_out.init(jax.random.key(2), x)
    params = nn.meta.unbox(variables["params"])
    np.testing.assert_array_equal(zero_out.apply(variables, x), 0.0)
    np.testing.assert_array_equal(params["out"]["kernel"], 0.0)
    default_params = nn.meta.unbox(default.init(jax.random.key(2), x)["params"])
    for name in ("query", "key", "value"):
        np.testing.assert_array_equal(params[name]["kernel"], default_params[name]["kernel"])
        assert np.abs(params[name]["kernel"]).min() > 0


def test_memory_tokens_join_keys_and_values_without_rotation():
    """Self-attention with memory equals attention of the tokens over [memory; tokens] through the same
    projections, with RoPE on the tokens' queries and keys only (the memory has no position)."""
    from t2v_jax.layers.rope import apply_rope, rope_frequencies

    x_bld = jax.random.normal(jax.random.key(0), (2, 6, 16))
    memory_bmd = jax.random.normal(jax.random.key(1), (2, 3, 16))
    cos_ld, sin_ld = rope_frequencies(jnp.arange(6), 8)
    layer = Attention(num_heads=2, head_dim=8)
    params = nn.unbox(layer.init(jax.random.key(2), x_bld))
    out = layer.apply(params, x_bld, rope=(cos_ld, sin_ld, 1), memory_bmd=memory_bmd)

    p = params["params"]

    def project(name, inputs):
        y = inputs @ p[name]["kernel"] + p[name]["bias"]
        return y.reshape(y.shape[:-1] + (2, 8))

    both_bsd = jnp.concatenate([memory_bmd, x_bld], axis=1)
    q = apply_rope(project("query", x_bld), cos_ld, sin_ld)
    k = project("key", both_bsd)
    k = jnp.concatenate([k[:, :3], apply_rope(k[:, 3:], cos_ld, sin_ld)], axis=1)
    o = attention(q, k, project("value", both_bsd))
    expected = o.reshape(2, 6, 16) @ p["out"]["kernel"] + p["out"]["bias"]
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    without = layer.apply(params, x_bld, rope=(cos_ld, sin_ld, 1))
    assert np.abs(out - without).max() > 1e-3
