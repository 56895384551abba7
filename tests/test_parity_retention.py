"""MultiScaleRetention against torchscale 0.3.0's `MultiScaleRetention` + `RetNetRelPos`: same weights,
float32, the parallel and the recurrent forms, <= 1e-5.

Both the layer output and the retention output before the per-head group norm are compared: the RMS
group norm divides out any per-row scale (up to its eps), so the final output alone would hide a wrong
normalisation. torchscale's chunkwise form is not compared: it normalises per chunk and differs from
its own parallel form (~1e-2); ours is checked against our parallel form in test_retention.py.

torchscale's recurrent form leaves out the division by the clamped |score row sum| that its parallel
form applies (`recurrent_forward` returns sum(q * kv) as it is). With torchscale's own q/k init and
unit inputs every |row sum| stays below 1, the clamp does nothing, and the two torchscale forms agree;
there ours is compared with torchscale's recurrent form token by token. With q/k weights 8x wider the
clamp acts on about half the rows (row sums up to ~10); ours (whose recurrent state also carries the
key sum, so the row sums are exact) reproduces torchscale's parallel form, and that is what its
recurrent output is compared with there, while its state (which comes before any clamp) is still
compared with torchscale's recurrent state.
"""

import functools
import importlib.util
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchscale")
pytest.importorskip("fairscale")  # torchscale.architecture.retnet imports fairscale.nn

from t2v_jax.layers.retention import MultiScaleRetention  # noqa: E402

pytestmark = pytest.mark.ref

EMBED, HEADS, VALUE_FACTOR, BATCH, TOL = 32, 4, 2, 2, 1e-5
LENGTHS = (1, 7, 16, 33)
# The recurrent form is compared at every token of one sequence, so every prefix length is covered.
RECURRENT_LENGTH = 33
# q/k weight gains over torchscale's init: at 1 the clamp is inactive, at 8 it is active (both
# asserted below, so each case really is what it claims to be).
QUIET, LOUD = 1.0, 8.0


def _import_torchscale():
    """(MultiScaleRetention, RetNetRelPos, RetNetConfig) from torchscale.

    `torchscale.architecture.retnet`, the only home of RetNetRelPos, imports
    `torchscale.component.droppath`, which does `from timm.models.layers import drop_path` at import
    time. timm is not installed (torchscale is installed with --no-deps: timm pulls a CUDA
    torchvision), and DropPath is used only by DecoderLayer with drop_path_rate > 0, never by the two
    classes compared here. So when timm is absent a placeholder `timm.models.layers` (whose drop_path
    raises if ever called) is registered for this import only, then removed again.
    """
    placeholders = []
    if importlib.util.find_spec("timm") is None:
        def drop_path(*args, **kwargs):
            raise RuntimeError("timm placeholder: DropPath is not used by these tests")

        for name in ("timm", "timm.models", "timm.models.layers"):
            sys.modules[name] = types.ModuleType(name)
            placeholders.append(name)
        sys.modules["timm.models.layers"].drop_path = drop_path
    try:
        from torchscale.architecture.config import RetNetConfig
        from torchscale.architecture.retnet import RetNetRelPos
        from torchscale.component.multiscale_retention import MultiScaleRetention as TorchRetention
    finally:
        for name in placeholders:
            sys.modules.pop(name, None)
    return TorchRetention, RetNetRelPos, RetNetConfig


TorchRetention, RetNetRelPos, RetNetConfig = _import_torchscale()


class Reference:
    """torchscale's layer and relative positions, recording the group norm's input per call."""

    def __init__(self, qk_gain, seed=0):
        self.qk_gain = qk_gain
        config = RetNetConfig(decoder_embed_dim=EMBED, decoder_value_embed_dim=EMBED * VALUE_FACTOR,
                              decoder_retention_heads=HEADS, layernorm_eps=1e-6, multiway=False)
        torch.manual_seed(seed)
        self.layer = TorchRetention(config, EMBED, EMBED * VALUE_FACTOR, HEADS).eval()
        self.rel_pos = RetNetRelPos(config)
        with torch.no_grad():
            # q/k: torchscale's init (xavier, gain 2^-2.5) times qk_gain, which decides the clamp.
            self.layer.q_proj.weight.mul_(qk_gain)
            self.layer.k_proj.weight.mul_(qk_gain)
            # The gate and output projections do not enter the scores; they are redrawn wider so that
            # outputs are O(1) and 1e-5 is a tight tolerance (~1e-4 relative with torchscale's init).
            self.layer.g_proj.weight.normal_(0.0, 2.0 / EMBED ** 0.5)
            self.layer.out_proj.weight.normal_(0.0, 1.0 / (EMBED * VALUE_FACTOR) ** 0.5)
        self.pre_norm = []
        self.layer.group_norm.register_forward_hook(lambda m, args, out: self.pre_norm.append(args[0]))

    def flax_params(self):
        """torch Linear weight (out, in) -> flax Dense kernel (in, out); no biases on either side."""
        return {"params": {name: {"kernel": jnp.asarray(getattr(self.layer, name).weight.detach().numpy().T)}
                           for name in ("q_proj", "k_proj", "v_proj", "g_proj", "out_proj")}}

    @torch.no_grad()
    def parallel(self, x_bld):
        """(y_bld, retention output before the group norm (B, L, H, Dv))."""
        self.pre_norm.clear()
        y = self.layer(torch.from_numpy(x_bld), self.rel_pos(x_bld.shape[1]))
        return y.numpy(), self.pre_norm[0].numpy()

    @torch.no_grad()
    def recurrent(self, x_bld):
        """Token by token as RetNetDecoder decodes: `RetNetRelPos(n + 1, activate_recurrent=True)` for
        token n and one `incremental_state` dict. Returns (y_bld, pre-norm (B, L, H, Dv), state)."""
        self.pre_norm.clear()
        state, ys = {}, []
        for n in range(x_bld.shape[1]):
            token = torch.from_numpy(np.ascontiguousarray(x_bld[:, n:n + 1]))
            rel_pos = self.rel_pos(n + 1, activate_recurrent=True)
            ys.append(self.layer(token, rel_pos, incremental_state=state))
        pre_norm = torch.stack(self.pre_norm, 1)  # each call's is (B, H, Dv)
        return torch.cat(ys, 1).numpy(), pre_norm.numpy(), state


@pytest.fixture(scope="module", params=[QUIET, LOUD], ids=["torchscale_init", "qk_x8"])
def reference(request):
    return Reference(request.param)


@pytest.fixture(scope="module")
def params(reference):
    variables = reference.flax_params()
    init = nn.unbox(jax.eval_shape(MultiScaleRetention(num_heads=HEADS, value_factor=VALUE_FACTOR).init,
                                   jax.random.PRNGKey(0), jnp.zeros((1, 2, EMBED))))
    # Every parameter of ours is set from torchscale (none left at its init), with the same shapes.
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(init)
    assert jax.tree_util.tree_map(jnp.shape, variables) == jax.tree_util.tree_map(jnp.shape, init)
    return variables


@functools.partial(jax.jit, static_argnames="mode")
def _apply(params, x_bld, mode):
    def sow_group_norm_input(next_fun, args, kwargs, context):
        if context.module.name == "group_norm" and context.method_name == "__call__":
            context.module.sow("intermediates", "pre_norm", args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(sow_group_norm_input):
        (y, state), sown = MultiScaleRetention(num_heads=HEADS, value_factor=VALUE_FACTOR).apply(
            params, x_bld, mode=mode, mutable=["intermediates"])
    return y, sown["intermediates"]["group_norm"]["pre_norm"][0], state


def ours(params, x_bld, mode):
    """(y_bld, pre-norm (B, L, H, Dv), state) from t2v_jax in `mode`."""
    y, pre_norm, state = _apply(params, jnp.asarray(x_bld), mode)
    return np.asarray(y), np.asarray(pre_norm), state


def inputs(length, seed=0):
    return np.random.default_rng(seed + length).standard_normal((BATCH, length, EMBED)).astype(np.float32)


def check(a, b, name, relative=False):
    """Max abs error <= TOL; `relative`: <= TOL * max |reference|, for the internal values (pre-norm
    outputs, state), which are mostly well below 1 where an absolute 1e-5 would be loose. Layer
    outputs are O(1) (up to ~6) and checked absolutely."""
    assert a.shape == b.shape, (name, a.shape, b.shape)
    err = float(np.abs(a - b).max())
    tol = TOL * float(np.abs(b).max()) if relative else TOL
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g} (max |ref| {np.abs(b).max():.3g})"


def clamp_acts(reference, x_bld):
    """Whether some |score row sum| exceeds 1: torchscale's parallel (clamped) and recurrent
    (unclamped) retention outputs differ before the group norm exactly then."""
    _, clamped = reference.parallel(x_bld)
    _, unclamped, _ = reference.recurrent(x_bld)
    return float(np.abs(clamped - unclamped).max()) > 1e-3


def check_state(state, ts_state):
    """Our kv (B, H, Dk, Dv) is torchscale's prev_key_value (B, H, Dv, Dk) transposed; our scale is
    its `scale` (sum_j gamma^j over the tokens so far). ksum has no torchscale counterpart."""
    kv_bhkv = ts_state["prev_key_value"].numpy().swapaxes(-1, -2)
    check(np.asarray(state.kv_bhkv), kv_bhkv, "state kv", relative=True)
    check(np.asarray(state.scale_h), ts_state["scale"].numpy(), "state scale", relative=True)


@pytest.mark.parametrize("length", LENGTHS)
def test_parallel_matches_torchscale(reference, params, length):
    x = inputs(length)
    y_ref, pre_ref = reference.parallel(x)
    y, pre, _ = ours(params, x, "parallel")
    check(pre, pre_ref, "pre-norm", relative=True)
    check(y, y_ref, "output")


def test_recurrent_matches_torchscale(reference, params):
    x = inputs(RECURRENT_LENGTH)
    y, pre, state = ours(params, x, "recurrent")
    y_rec, pre_rec, ts_state = reference.recurrent(x)
    check_state(state, ts_state)
    check_state(ours(params, x, "parallel")[2], ts_state)  # the parallel form's returned state too
    clamped = clamp_acts(reference, x)
    assert clamped == (reference.qk_gain == LOUD)
    if not clamped:
        check(pre, pre_rec, "pre-norm vs torchscale recurrent", relative=True)
        check(y, y_rec, "output vs torchscale recurrent")
    else:
        # torchscale's recurrent form skips the clamp, so here it is not the function its parallel
        # form computes (before the group norm by up to ~2, after it by ~2.5e-4: the norm divides out
        # a row's scale only up to its eps 1e-6, not negligible next to these rows' mean squares);
        # ours is, and is compared with that.
        y_par, pre_par = reference.parallel(x)
        check(pre, pre_par, "pre-norm vs torchscale parallel", relative=True)
        check(y, y_par, "output vs torchscale parallel")
