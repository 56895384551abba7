"""Multi-scale retention: the parallel, recurrent and chunkwise forms are one function (fp32)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.layers.retention import (MultiScaleRetention, _chunkwise, _decay_mask_hll, _parallel,
                                      _recurrent, init_retention_state, retention_log_decay,
                                      retention_rotation)

EMBED, HEADS, BATCH, TOL = 16, 4, 2, 1e-5
CHUNKS = (1, 3, 4, 16)


def inputs(length, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(BATCH, length, EMBED)), jnp.float32)


@pytest.fixture(scope="module")
def params():
    module = MultiScaleRetention(num_heads=HEADS)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), inputs(3))
    # Larger weights than torchscale's init (gain 2^-2.5) so scores pass the clamp at 1 and the
    # normalisation is exercised on both sides of it.
    return jax.tree_util.tree_map(lambda p: p * 8.0, variables)


@jax.jit
def apply_parallel(variables, x_bld):
    return MultiScaleRetention(num_heads=HEADS).apply(variables, x_bld)


@jax.jit
def apply_recurrent(variables, x_bld, state=None):
    return MultiScaleRetention(num_heads=HEADS, mode="recurrent").apply(variables, x_bld, state)


@functools.partial(jax.jit, static_argnums=2)
def apply_chunkwise(variables, x_bld, chunk_size, state=None):
    module = MultiScaleRetention(num_heads=HEADS, mode="chunkwise", chunk_size=chunk_size)
    return module.apply(variables, x_bld, state)


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@jax.jit
def all_forms(variables, x_bld):
    """Every form in one program (one compilation per length keeps the file fast)."""
    forms = {"parallel": apply_parallel(variables, x_bld), "recurrent": apply_recurrent(variables, x_bld)}
    for chunk in CHUNKS:
        forms[f"chunkwise{chunk}"] = apply_chunkwise(variables, x_bld, chunk)
    return forms


@pytest.mark.parametrize("length", [1, 5, 16, 17])
def test_recurrent_and_chunkwise_equal_parallel(params, length):
    forms = all_forms(params, inputs(length, seed=length))
    y_par, state_par = forms.pop("parallel")
    assert int(state_par.pos) == length
    for name, (y_bld, state) in forms.items():
        assert max_err(y_bld, y_par) <= TOL, name
        for a, b in zip(state, state_par):
            assert max_err(a, b) <= TOL, name


@jax.jit
def core_forms(q_bhlk, k_bhlk, v_bhlv):
    log_decay_h = retention_log_decay(HEADS)
    state = init_retention_state(BATCH, HEADS, q_bhlk.shape[-1], v_bhlv.shape[-1])
    forms = {"recurrent": _recurrent(state, q_bhlk, k_bhlk, v_bhlv, log_decay_h)[1]}
    for chunk in CHUNKS:
        forms[f"chunkwise{chunk}"] = _chunkwise(state, q_bhlk, k_bhlk, v_bhlv, log_decay_h, chunk)[1]
    return _parallel(q_bhlk, k_bhlk, v_bhlv, log_decay_h), forms


def test_retention_cores_equal_before_group_norm():
    """The group norm hides the per-row clamp divisor (up to eps), so compare before it, with
    scores large enough that some rows clamp and others do not."""
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(BATCH, HEADS, 17, d)) * s, jnp.float32)
               for d, s in ((4, 1.5), (4, 1.5), (8, 1.0)))
    o_par, forms = core_forms(q, k, v)
    # With v = 1 a row reads rowsum / max(|rowsum|, 1): +-1 where clamped, smaller where not.
    ratio = np.abs(np.asarray(core_forms(q, k, jnp.ones_like(v))[0]))[..., 0]
    assert (ratio > 0.999).mean() > 0.2 and (ratio < 0.5).mean() > 0.1  # both sides of the clamp
    for name, o in forms.items():
        assert max_err(o, o_par) <= TOL, name


def test_outputs_are_not_trivial(params):
    """Guards the equality test: outputs depend on the input and on the past (causal, decayed)."""
    x_bld = inputs(8)
    y_bld, _ = apply_parallel(params, x_bld)
    assert float(jnp.std(y_bld)) > 1e-2
    y_changed, _ = apply_parallel(params, x_bld.at[:, 3].add(1.0))
    delta_l = np.abs(np.asarray(y_changed - y_bld)).max(axis=(0, 2))
    assert np.all(delta_l[:3] == 0.0)  # causal: earlier tokens do not see token 3
    assert np.all(delta_l[3:] > 1e-4)  # later ones do, through the decayed state


@pytest.mark.parametrize("prefix,chunk", [(5, 4), (1, 3)])
def test_prefill_then_decode_continues_exactly(params, prefix, chunk):
    length = 21
    x_bld = inputs(length, seed=7)
    y_full, state_full = apply_parallel(params, x_bld)
    y_pre, state = apply_chunkwise(params, x_bld[:, :prefix], chunk)
    outputs = [y_pre]
    for n in range(prefix, length):
        y_n, state = apply_recurrent(params, x_bld[:, n:n + 1], state)
        outputs.append(y_n)
    assert max_err(jnp.concatenate(outputs, axis=1), y_full) <= TOL
    for a, b in zip(state, state_full):
        assert max_err(a, b) <= TOL
    # A chunkwise continuation from the same prefix state agrees too.
    y_rest, _ = apply_chunkwise(params, x_bld[:, prefix:], chunk, state=apply_chunkwise(
        params, x_bld[:, :prefix], chunk)[1])
    assert max_err(y_rest, y_full[:, prefix:]) <= TOL


def test_state_changes_the_continuation(params):
    """A continuation without its prefix state differs: the state is actually used."""
    x_bld = inputs(10, seed=3)
    y_full, _ = apply_parallel(params, x_bld)
    y_alone, _ = apply_recurrent(params, x_bld[:, 6:])
    assert max_err(y_alone, y_full[:, 6:]) > 1e-3


def test_decay_per_head():
    gamma_h = np.exp(np.asarray(retention_log_decay(4), np.float64))
    np.testing.assert_allclose(gamma_h, [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256], rtol=1e-6)
    d_hll = np.asarray(_decay_mask_hll(4, retention_log_decay(2)))
    np.testing.assert_allclose(d_hll[1, 3], [(63 / 64) ** 3, (63 / 64) ** 2, 63 / 64, 1.0], rtol=1e-6)
    assert np.all(d_hll[:, 0, 1:] == 0.0)


def test_rotation_matches_rotate_every_two():
    """torchscale's theta_shift: x * cos + rotate_every_two(x) * sin, angles 1/10000^linspace."""
    head_dim, length = 8, 5
    cos_ld, sin_ld = retention_rotation(jnp.arange(length), head_dim)
    angle = 1.0 / 10000 ** np.linspace(0, 1, head_dim // 2)
    np.testing.assert_allclose(np.asarray(cos_ld[3]), np.cos(3 * np.repeat(angle, 2)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sin_ld[3]), np.sin(3 * np.repeat(angle, 2)), rtol=1e-6, atol=1e-7)


def test_gradients_flow_in_parallel_mode(params):
    x_bld = inputs(6)

    def loss(variables):
        return jnp.sum(apply_parallel(variables, x_bld)[0] ** 2)

    grads = jax.grad(loss)(params)["params"]
    for name in ("q_proj", "k_proj", "v_proj", "g_proj", "out_proj"):
        g = np.asarray(nn.meta.unbox(grads[name]["kernel"]))
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name


def test_parameter_names_and_shapes(params):
    shapes = jax.tree_util.tree_map(lambda p: p.shape, nn.meta.unbox(params["params"]))
    assert shapes == {"q_proj": {"kernel": (16, 16)}, "k_proj": {"kernel": (16, 16)},
                      "v_proj": {"kernel": (16, 32)}, "g_proj": {"kernel": (16, 32)},
                      "out_proj": {"kernel": (32, 16)}}


def test_parallel_rejects_a_state(params):
    _, state = apply_recurrent(params, inputs(2))
    with pytest.raises(ValueError, match="parallel"):
        MultiScaleRetention(num_heads=HEADS).apply(params, inputs(2), state)

