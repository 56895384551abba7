"""The transformer feed-forward shared by the DiT and the FlashVideo decoder."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from t2v_jax.layers.dense import dense


ACTIVATIONS = ("gelu_tanh", "gelu", "geglu", "quick_gelu")


class FeedForward(nn.Module):
    """Dense -> tanh-GELU -> Dense (diffusers FeedForward with activation_fn="gelu-approximate"); with
    `activation="gelu"` the exact (erf) GELU of OpenCLIP's text towers; with `activation="geglu"` Stable
    Diffusion's gated form: proj_in gives 2 x hidden features, the first half times the exact GELU of the
    second; or with `activation="quick_gelu"` OpenAI CLIP's x * sigmoid(1.702 x), which its released weights
    were trained with (the exact or tanh GELU changes their output measurably). `kernel_init` lets a model
    keep its own initialiser (RetNet uses Xavier)."""

    hidden: int
    activation: str = "gelu_tanh"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x_bld):
        proj = functools.partial(dense, kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"FeedForward activation {self.activation!r}; allowed: {ACTIVATIONS}")
        if self.activation == "geglu":
            value, gate = jnp.split(proj(2 * self.hidden, ("embed", "mlp"), name="proj_in")(x_bld), 2, axis=-1)
            h = value * nn.gelu(gate, approximate=False)
        elif self.activation == "quick_gelu":
            h = proj(self.hidden, ("embed", "mlp"), name="proj_in")(x_bld)
            h = h * nn.sigmoid(1.702 * h)
        else:
            h = nn.gelu(proj(self.hidden, ("embed", "mlp"), name="proj_in")(x_bld),
                        approximate=self.activation == "gelu_tanh")
        return proj(x_bld.shape[-1], ("mlp", "embed"), name="proj_out")(h)
