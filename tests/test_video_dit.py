"""VideoDiT: scanned stack vs per-layer blocks, remat invariance, text conditioning, bf16, size."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.layers.embeddings import AdaLNSingle, PatchEmbed3D, modulate, unpatchify
from t2v_jax.layers.norms import LayerNorm
from t2v_jax.layers.rope import rope_3d
from t2v_jax.models.video_dit import (CaptionProjection, DiTBlock, VideoDiT, allegro_config,
                                      default_config)

TEXT_LEN, CAPTION_CHANNELS = 5, 16


def tiny_config(**overrides):
    """2 layers, 2 heads x 12 (3D RoPE needs head_dim divisible by 6), 4x8x8x4 latents."""
    config = default_config()
    config.update(dict(num_layers=2, width=24, num_heads=2, caption_channels=CAPTION_CHANNELS,
                       rope_interpolation_scale=(2.2, 2.0, 2.0)))
    config.update(overrides)
    return config


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, 4, 8, 8, 4)), jnp.float32)
    t = jnp.asarray([3.0, 741.5])
    context = jnp.asarray(rng.normal(size=(2, TEXT_LEN, CAPTION_CHANNELS)), jnp.float32)
    mask = jnp.asarray([[True, True, True, False, False], [True] * TEXT_LEN])
    return x, t, context, mask


def random_params(model, *args, seed=1):
    """Random parameters of the model's shapes, drawn in numpy: no init compile, and no
    zero-initialised layers (cross-attention out, proj_out) making outputs or gradients
    trivially equal. Kernels get std 1/sqrt(fan_in), vectors and tables std 0.3."""
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
    rng = np.random.default_rng(seed)

    def draw(shape):
        std = 1 / math.sqrt(shape.shape[-2]) if len(shape.shape) >= 2 else 0.3
        return jnp.asarray(rng.normal(size=shape.shape) * std, shape.dtype)
    return jax.tree.map(draw, shapes)


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    x, t, context, mask = inputs()
    model = VideoDiT(config)
    params = random_params(model, x, t, context, mask)
    apply = jax.jit(lambda p, x, t, c, m: model.apply({"params": p}, x, t, c, m))
    return config, params, apply, (x, t, context, mask)


def test_output_shape_finite_and_conditioned_on_time(setup):
    _, params, apply, (x, t, context, mask) = setup
    out = apply(params, x, t, context, mask)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert np.isfinite(out).all() and float(jnp.std(out)) > 1e-2
    other_t = apply(params, x, t + 100.0, context, mask)
    assert float(jnp.abs(other_t - out).max()) > 1e-3
    stacked = params["blocks"]["attn1"]["query"]["kernel"]
    assert stacked.shape == (2, 24, 24)


def test_scanned_stack_equals_sequential_blocks(setup):
    """Rebuilds the forward pass from the submodules, applying DiTBlock layer by layer with
    slices of the stacked parameters, and compares with the scanned model."""
    config, params, apply, (x, t, context, mask) = setup
    width, patch = 24, (1, 2, 2)

    def sequential(params):
        tokens = PatchEmbed3D(width, patch).apply({"params": params["patch_embed"]}, x)
        modulation, emb = AdaLNSingle(width).apply({"params": params["adaln_single"]}, t)
        ctx = CaptionProjection(width).apply({"params": params["caption_projection"]}, context)
        cos, sin = rope_3d((4, 4, 4), 12, interpolation_scale=(2.2, 2.0, 2.0))
        for layer in range(config.num_layers):
            layer_params = jax.tree.map(lambda p: p[layer], params["blocks"])
            tokens, _ = DiTBlock(config).apply({"params": layer_params}, tokens, ctx, mask,
                                               modulation, cos, sin)
        shift_scale = params["scale_shift_table"][None] + emb[:, None]
        h = modulate(LayerNorm(eps=1e-6, use_affine=False).apply({}, tokens),
                     shift_scale[:, 0:1], shift_scale[:, 1:2])
        out = h @ params["proj_out"]["kernel"] + params["proj_out"]["bias"]
        return unpatchify(out, (4, 4, 4), patch, 4)

    want = jax.jit(sequential)(params)
    np.testing.assert_allclose(apply(params, x, t, context, mask), want, rtol=1e-5, atol=1e-5)
    one_layer = jax.tree.map(lambda p: p.at[1].set(p[0]), params)
    assert float(jnp.abs(apply(one_layer, x, t, context, mask) - want).max()) > 1e-3


def test_remat_policies_give_identical_outputs_and_gradients(setup):
    _, params, _, (x, t, context, mask) = setup
    policies = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")

    def all_policies(params):
        """One jit for all four: a single compile is cheaper than four on a shared CPU."""
        results = []
        for policy in policies:
            model = VideoDiT(tiny_config(remat_policy=policy))
            loss = lambda p: jnp.mean(model.apply({"params": p}, x, t, context, mask) ** 2)  # noqa: E731
            results.append(jax.value_and_grad(loss)(params))
        return results

    results = jax.jit(all_policies)(params)
    want_loss, want_grads = results[0]
    assert float(jnp.abs(want_grads["blocks"]["attn1"]["query"]["kernel"]).max()) > 0
    for policy, (loss, grads) in zip(policies[1:], results[1:]):
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=policy)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6,
                                                             err_msg=policy), grads, want_grads)


def test_scan_unroll_gives_identical_outputs_and_gradients(setup):
    """Unrolling the block scan changes the loop, not the parameters' layout or the numbers; the loop is
    gone from the program when every layer is unrolled."""
    _, params, _, (x, t, context, mask) = setup

    def loss_fn(unroll):
        model = VideoDiT(tiny_config(scan_unroll=unroll))
        return lambda p: jnp.mean(model.apply({"params": p}, x, t, context, mask) ** 2)

    want_loss, want_grads = jax.jit(jax.value_and_grad(loss_fn(1)))(params)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn(2)))(params)
    assert float(jnp.abs(want_grads["blocks"]["attn1"]["query"]["kernel"][1]).max()) > 0
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), grads, want_grads)
    loops = {unroll: jax.jit(loss_fn(unroll)).lower(params).as_text().count("stablehlo.while") for unroll in (1, 2)}
    assert loops[1] > 0 and loops[2] == 0


def test_remat_policy_reaches_the_checkpoint(setup):
    """The config string maps to the intended jax.checkpoint policy ("none": no remat at all)."""
    _, params, _, (x, t, context, mask) = setup
    expected = {"none": set(), "full": {"None"},
                "dots_saveable": {"DotsSaveable(only_if_no_batch_dims=False)"},
                "dots_with_no_batch_dims_saveable": {"DotsSaveable(only_if_no_batch_dims=True)"}}
    for policy, want in expected.items():
        model = VideoDiT(tiny_config(remat_policy=policy))
        jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x, t, context, mask))(params))
        assert set(re.findall(r"policy=(\S+)", jaxpr)) == want, policy


def test_text_context_matters_but_masked_tokens_do_not(setup):
    _, params, apply, (x, t, context, mask) = setup
    out = apply(params, x, t, context, mask)
    noise = jax.random.normal(jax.random.key(3), context.shape)
    masked_changed = jnp.where(mask[..., None], context, noise)
    np.testing.assert_allclose(apply(params, x, t, masked_changed, mask), out, rtol=1e-6, atol=1e-6)
    visible_changed = context.at[0, 1].add(1.0)
    changed = apply(params, x, t, visible_changed, mask)
    assert float(jnp.abs(changed[0] - out[0]).max()) > 1e-3
    np.testing.assert_allclose(changed[1], out[1], rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_is_close_to_float32(setup):
    """bf16 activations with f32 parameters: relative L2 error below 3% (bf16 has an 8-bit
    mantissa, ~0.4% per rounding, accumulated over two blocks)."""
    _, params, apply, (x, t, context, mask) = setup
    model = VideoDiT(tiny_config(dtype="bfloat16"))
    out_bf16 = jax.jit(lambda p: model.apply({"params": p}, x, t, context, mask))(params)
    assert out_bf16.dtype == jnp.float32
    out = apply(params, x, t, context, mask)
    rel = float(jnp.linalg.norm(out_bf16 - out) / jnp.linalg.norm(out))
    assert rel < 3e-2, rel


def test_allegro_config_has_2p8b_parameters_and_partitioning():
    config = allegro_config("88x720p")
    assert tuple(config.rope_interpolation_scale) == (2.2, 2.0, 2.0)
    model = VideoDiT(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 4, 4, 4)),
                            jnp.zeros((1,)), jnp.zeros((1, 2, 4096)), jnp.ones((1, 2), bool))
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(nn.meta.unbox(shapes)))
    assert 2.7e9 < count < 2.9e9, count
    specs = nn.get_partition_spec(shapes)["params"]
    assert tuple(specs["blocks"]["attn1"]["out"]["kernel"]) == ("layers", "heads", "embed")
    assert tuple(specs["blocks"]["ff"]["proj_in"]["kernel"]) == ("layers", "embed", "mlp")


def test_config_errors_name_the_field():
    x, t, context, mask = inputs()
    for overrides, message in (({"remat_policy": "some"}, "remat_policy"),
                               ({"patch_thw": (1, 3, 3)}, "does not divide")):
        with pytest.raises(ValueError, match=message):
            jax.eval_shape(VideoDiT(tiny_config(**overrides)).init, jax.random.key(0), x, t,
                           context, mask)
    with pytest.raises(ValueError, match="resolution"):
        allegro_config("1080p")
