"""The analytic DiT FLOP count agrees with what XLA counts for the compiled forward pass."""

import jax
import jax.numpy as jnp

from t2v_jax.models.video_dit import VideoDiT
from t2v_jax.parallel import flops
from test_video_dit import tiny_config


def test_dit_forward_flops_match_xla_cost_analysis():
    # One layer: XLA's cost analysis counts the body of the scanned layer stack once.
    config = tiny_config(num_layers=1, width=48, num_heads=2)
    batch, frames, size, text_len = 2, 4, 16, 7
    x = jnp.zeros((batch, frames, size, size, config.in_channels))
    t = jnp.zeros((batch,))
    context = jnp.zeros((batch, text_len, config.caption_channels))
    mask = jnp.ones((batch, text_len), bool)
    model = VideoDiT(config)
    params = jax.eval_shape(model.init, jax.random.key(0), x, t, context, mask)
    compiled = jax.jit(model.apply).lower(params, x, t, context, mask).compile()
    cost = compiled.cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    grid = (frames // config.patch_thw[0], size // config.patch_thw[1], size // config.patch_thw[2])
    analytic = flops.dit_forward_flops(config, grid, text_len, batch)
    # XLA also counts norms, softmax, RoPE and elementwise ops, which the model-FLOP count leaves out.
    assert 0.75 < analytic / xla_flops <= 1.0, (analytic, xla_flops)


def test_train_flops_are_three_forward_passes():
    config = tiny_config()
    forward = flops.dit_forward_flops(config, (2, 4, 4), 5, 3)
    assert flops.dit_train_flops(config, (2, 4, 4), 5, 3) == 3 * forward


def test_peak_is_unknown_on_cpu():
    assert flops.peak_tflops(jax.devices("cpu")[0]) is None
