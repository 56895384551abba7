"""LaVie's super-resolution UNet (`lavie_unet.vsr_config` layout) against diffusers' `UNet2DConditionModel` in
Stable Diffusion's x4-upscaler layout (Linear transformer projections, text-only first attention, the noise level
as a class label), run per frame on every frame of a clip.

LaVie's inflated ResNets normalise over all frames of a clip (torch's GroupNorm on (B, C, F, H, W)), so the
reference swaps diffusers' ResNet and output GroupNorms for the same modules applied to the whole clip. With the
temporal layers at their initial zero output the VSR UNet is then that image model; with LaVie's temporal modules
random, the reference adds them through forward hooks, written here from LaVie's vsr/models (TemporalModule3D
after every down level, the mid block and every up level, on the hidden state but not on the skips;
ResnetBlock3DCNN (3,1,1) at the start of every transformer, its output also the residual).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from t2v_jax.checks import ConfigError  # noqa: E402
from t2v_jax.convert.lavie import convert_unet, unet_config_from_diffusers, unet_param_shapes  # noqa: E402
from t2v_jax.convert.safetensors_io import (ConversionError, StateDictCheckpoint, flatten_tree,  # noqa: E402
                                           unflatten_tree)
from t2v_jax.models import lavie_unet  # noqa: E402
from t2v_jax.models.lavie_unet import LaVieUNet  # noqa: E402

pytestmark = pytest.mark.ref

_UPSCALER = dict(
    sample_size=8, in_channels=7, out_channels=4, block_out_channels=(32, 32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=(True, True, False), use_linear_projection=True, num_class_embeds=1000,
    layers_per_block=1, cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)
_BATCH, _FRAMES, _SIZE, _TOKENS = 2, 3, 8, 5
_GROUPS = 8  # the temporal blocks' GroupNorms (LaVie: 32; the tiny widths take 8)
_TEMB = 4 * _UPSCALER["block_out_channels"][0]
_EPS = 1e-6  # LaVie's ResnetBlock3D / ResnetBlock3DCNN default


def _perturb(module, scale=0.1):
    """Norms and biases off their 1/0 initial values."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(scale * torch.randn_like(param))
    return module


@pytest.fixture(scope="module")
def upscaler():
    torch.manual_seed(0)
    return _perturb(diffusers.UNet2DConditionModel(**_UPSCALER).eval())


def _state_dict(module):
    return {name: value.detach().numpy() for name, value in module.state_dict().items()}


def _config(unet, **overrides):
    base = lavie_unet.small_vsr_config(4, _UPSCALER["block_out_channels"], num_heads=4, cross_attention_dim=16,
                                       norm_num_groups=_GROUPS)
    cfg = unet_config_from_diffusers(dict(unet.config), base=base)
    cfg.update(**overrides)
    lavie_unet.validate_config(cfg)
    return cfg


def _to_clip(x):
    """diffusers' (B*F, C, H, W) -> LaVie's (B, C, F, H, W)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // _FRAMES, _FRAMES, c, h, w).transpose(1, 2)


def _from_clip(x):
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


class _OverFrames(torch.nn.Module):
    """A GroupNorm applied to the whole clip, as LaVie's inflated blocks apply torch's GroupNorm."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return _from_clip(self.norm(_to_clip(x)))


def _norms_over_frames(unet):
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for resnet in block.resnets:
            resnet.norm1, resnet.norm2 = _OverFrames(resnet.norm1), _OverFrames(resnet.norm2)
    unet.conv_norm_out = _OverFrames(unet.conv_norm_out)


class _Resnet3D(torch.nn.Module):
    """LaVie VSR's ResnetBlock3DCNN (`kernel`: Conv3d (kernel,1,1) then (3,1,1), zero-padded in time) or
    ResnetBlock3D (`kernel=None`: 3x3 Conv2d per frame) on (B, C, F, H, W), GroupNorms over the whole clip."""

    def __init__(self, channels, temb_channels=None, kernel=None):
        super().__init__()
        self.norm1 = torch.nn.GroupNorm(_GROUPS, channels, eps=_EPS)
        self.norm2 = torch.nn.GroupNorm(_GROUPS, channels, eps=_EPS)
        if kernel:
            self.conv1 = torch.nn.Conv3d(channels, channels, (kernel, 1, 1), padding=((kernel - 1) // 2, 0, 0))
            self.conv2 = torch.nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        if temb_channels:
            self.time_emb_proj = torch.nn.Linear(temb_channels, channels)

    @staticmethod
    def _conv(conv, x):
        return conv(x) if isinstance(conv, torch.nn.Conv3d) else _to_clip(conv(_from_clip(x)))

    def forward(self, x, temb=None):
        h = self._conv(self.conv1, torch.nn.functional.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(torch.nn.functional.silu(temb))[:, :, None, None, None]
        return x + self._conv(self.conv2, torch.nn.functional.silu(self.norm2(h)))


class _TemporalModule(torch.nn.Module):
    """LaVie VSR's TemporalModule3D without its (unused) temporal transformer and video condition."""

    def __init__(self, channels):
        super().__init__()
        self.resblocks_3d_t = _Resnet3D(channels, _TEMB, kernel=5)
        self.resblocks_3d_s = _Resnet3D(channels, _TEMB)
        self.shift_conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x, temb):
        h = self.resblocks_3d_s(self.resblocks_3d_t(x, temb), temb)
        return x + _to_clip(self.shift_conv(_from_clip(h)))


def _clip_temb(temb):
    return temb[::_FRAMES]  # diffusers repeats each sample's embedding over its frames


def _lavie_temporal_layers(unet):
    """Random temporal layers of LaVie's VSR UNet for the tiny upscaler: {state-dict prefix: module} and the
    hooks that run them where LaVie does, plus the temporal-attention tensors under LaVie's names (output
    projection zero: the reference cannot run it inside diffusers' transformer block)."""
    torch.manual_seed(1)
    widths = _UPSCALER["block_out_channels"]
    modules = {f"down_temporal_blocks.{i}": _TemporalModule(width) for i, width in enumerate(widths)}
    modules["mid_temporal_block"] = _TemporalModule(widths[-1])
    modules.update({f"up_temporal_blocks.{i}": _TemporalModule(width) for i, width in enumerate(widths[::-1])})
    transformers = [name for name, module in unet.named_modules()
                    if isinstance(module, diffusers.models.transformers.transformer_2d.Transformer2DModel)]
    for name in transformers:
        modules[f"{name}.resblock_temporal"] = _Resnet3D(unet.get_submodule(name).in_channels, kernel=3)
    modules = {name: _perturb(module) for name, module in modules.items()}

    def after_block(name):
        def hook(block, args, kwargs, output):
            temb = kwargs["temb"] if "temb" in kwargs else args[1]
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = _from_clip(modules[name](_to_clip(hidden), _clip_temb(temb)))
            return (hidden, output[1]) if isinstance(output, tuple) else hidden  # the skips stay as they were
        return hook

    def before_transformer(name):
        def hook(transformer, args, kwargs):
            return (_from_clip(modules[name](_to_clip(args[0]))),) + args[1:], kwargs
        return hook

    hooks = [(unet.down_blocks[i], "forward", after_block(f"down_temporal_blocks.{i}")) for i in range(len(widths))]
    hooks.append((unet.mid_block, "forward", after_block("mid_temporal_block")))
    hooks += [(unet.up_blocks[i], "forward", after_block(f"up_temporal_blocks.{i}")) for i in range(len(widths))]
    hooks += [(unet.get_submodule(name), "pre", before_transformer(f"{name}.resblock_temporal"))
              for name in transformers]

    generator = torch.Generator().manual_seed(2)
    state = {f"{prefix}.{key}": value for prefix, module in modules.items()
             for key, value in _state_dict(module).items()}
    for name in transformers:
        block = f"{name}.transformer_blocks.0."
        dim = unet.get_submodule(name).in_channels
        for part in ("to_q", "to_k", "to_v"):
            state[f"{block}attn_temporal.{part}.weight"] = torch.randn((dim, dim), generator=generator).numpy()
        state[f"{block}attn_temporal.to_out.0.weight"] = np.zeros((dim, dim), np.float32)
        state[f"{block}attn_temporal.to_out.0.bias"] = np.zeros(dim, np.float32)
        state[f"{block}attn_temporal.time_rel_pos_bias.relative_attention_bias.weight"] = torch.randn(
            (32, 4), generator=generator).numpy()
        state[f"{block}attn_temporal.rotary_emb.freqs"] = np.ones(16, np.float32)  # buffers LaVie saves
        state[f"{block}norm_temporal.weight"] = 1 + 0.1 * torch.randn(dim, generator=generator).numpy()
        state[f"{block}norm_temporal.bias"] = 0.1 * torch.randn(dim, generator=generator).numpy()
    state["temporal_rotary_emb.freqs"] = np.ones(16, np.float32)
    return state, hooks


def _inputs(seed=0, frames=_FRAMES):
    rng = np.random.default_rng(seed)
    x_bthwc = rng.standard_normal((_BATCH, frames, _SIZE, _SIZE, 7)).astype(np.float32)
    t_b = np.array([10.0, 731.0], np.float32)
    context_bld = rng.standard_normal((_BATCH, _TOKENS, 16)).astype(np.float32)
    levels_b = np.array([20, 350], np.int64)  # noise levels of the low-resolution input
    return x_bthwc, t_b, context_bld, levels_b


def _diffusers(unet, x_bthwc, t_b, context_bld, levels_b):
    frames = x_bthwc.shape[1]
    with torch.no_grad():
        out = unet(torch.from_numpy(x_bthwc.reshape(-1, _SIZE, _SIZE, 7)).permute(0, 3, 1, 2),
                   torch.from_numpy(np.repeat(t_b, frames)),
                   torch.from_numpy(np.repeat(context_bld, frames, axis=0)),
                   class_labels=torch.from_numpy(np.repeat(levels_b, frames))).sample
    return out.permute(0, 2, 3, 1).numpy().reshape(x_bthwc.shape[:-1] + (4,))


def _image_reference(upscaler):
    """The upscaler with LaVie's GroupNorms over the clip: LaVie's VSR UNet with its temporal layers at zero."""
    reference = diffusers.UNet2DConditionModel(**_UPSCALER).eval()
    reference.load_state_dict(upscaler.state_dict())
    _norms_over_frames(reference)
    return reference


@pytest.fixture(scope="module")
def vsr(upscaler):
    """The tiny upscaler's VSR config (norms over frames, as LaVie's), its jitted apply, and the upscaler's
    weights converted as an image model (the temporal layers as a new model has them)."""
    cfg = _config(upscaler)
    params = convert_unet(StateDictCheckpoint(_state_dict(upscaler)), cfg, from_image_model=True)
    return cfg, jax.jit(LaVieUNet(cfg).apply, static_argnames="num_images"), params


def _apply(apply, params, x_bthwc, t_b, context_bld, levels_b, **kwargs):
    mask = jnp.ones(context_bld.shape[:-1], bool)
    return np.asarray(apply({"params": params}, jnp.asarray(x_bthwc), jnp.asarray(t_b), jnp.asarray(context_bld), mask,
                            class_labels_b=jnp.asarray(levels_b, jnp.int32), **kwargs))


@pytest.mark.parametrize("temporal", ["initial", "lavie"])
def test_vsr_unet_is_the_upscaler_with_lavies_temporal_layers(upscaler, vsr, temporal):
    cfg, apply, params = vsr
    reference = _image_reference(upscaler)
    if temporal == "lavie":  # a LaVie VSR checkpoint with random temporal modules
        temporal_state, hooks = _lavie_temporal_layers(reference)
        params = convert_unet(StateDictCheckpoint({**_state_dict(upscaler), **temporal_state}), cfg)
        for module, kind, hook in hooks:
            if kind == "pre":
                module.register_forward_pre_hook(hook, with_kwargs=True)
            else:
                module.register_forward_hook(hook, with_kwargs=True)
    inputs = _inputs()
    expected = _diffusers(reference, *inputs)
    got = _apply(apply, params, *inputs)
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    if temporal == "lavie":  # the temporal modules changed the output: the comparison above is not the image model's
        without = _diffusers(_image_reference(upscaler), *inputs)
        assert np.abs(expected - without).max() > 1e-2


def _randomised(params, pattern, rng):
    """`params` with every leaf whose path contains `pattern` random."""
    flat = flatten_tree(params)
    keys = iter(jax.random.split(rng, len(flat)))
    return unflatten_tree({path: np.asarray(0.3 * jax.random.normal(next(keys), value.shape)) if pattern in path
                           else value for path, value in flat.items()})


@pytest.fixture(scope="module")
def per_frame_vsr(upscaler, vsr):
    """The same VSR UNet with per-frame norms (the same parameters)."""
    cfg = _config(upscaler, norm_over_frames=False)
    return jax.jit(LaVieUNet(cfg).apply, static_argnames="num_images"), vsr[2]


@pytest.mark.parametrize("pattern", ["shift_conv", "resblock_temporal/conv2", "attn_temporal/attention/out"])
def test_frames_interact_only_through_the_temporal_layers(per_frame_vsr, pattern):
    """With per-frame norms, a converted image model treats every frame alone; each temporal layer, once
    nonzero, mixes them (so the zero-output parity above is not vacuous). Image frames of joint training stay
    apart from the video either way."""
    apply, params = per_frame_vsr
    x_bthwc, t_b, context_bld, levels_b = _inputs(frames=_FRAMES + 1)  # 3 video frames + 1 image
    context = np.stack([context_bld, context_bld[::-1]], axis=1)  # the video's caption, the image's
    changed = x_bthwc.copy()
    changed[:, 2] += 1.0  # the last video frame
    run = lambda p, x: _apply(apply, p, x, t_b, context, levels_b, num_images=1)  # noqa: E731
    base, out = run(params, x_bthwc), run(params, changed)
    np.testing.assert_allclose(out[:, [0, 1, 3]], base[:, [0, 1, 3]], atol=1e-5)
    assert np.abs(out[:, 2] - base[:, 2]).max() > 1e-2
    mixed = _randomised(params, pattern, jax.random.key(0))
    base, out = run(mixed, x_bthwc), run(mixed, changed)
    assert np.abs(out[:, 0] - base[:, 0]).max() > 1e-3
    np.testing.assert_allclose(out[:, 3], base[:, 3], atol=1e-5)


# LaVie's vsr/configs/unet_3d_config.json (the fields the config reader looks at).
_LAVIE_VSR_JSON = {
    "_class_name": "UNet3DVSRModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [256, 512, 512, 1024], "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 7, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": 1000, "only_cross_attention": [True, True, True, False], "out_channels": 4,
    "sample_size": 128, "up_block_types": ["CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D",
                                           "UpBlock3D"],
    "use_linear_projection": True, "down_temporal_idx": [0, 1, 2, 3], "mid_temporal": True,
    "up_temporal_idx": [0, 1, 2, 3],
    "temporal_module_config": {"num_attention_layers": 1, "attention_block_types": ["", ""],
                               "cross_frame_attention_mode": "0_i-1_i", "temporal_shift_fold_div": 2,
                               "temporal_shift_direction": "right", "use_dcn_warpping": False,
                               "use_deformable_conv": True, "attention_dim_div": 2},
    "use_first_frame": False, "video_condition": False, "freeze_pretrained_2d_upsampler": True,
}


def test_lavie_vsr_config_reads_as_vsr_config_at_the_released_size():
    cfg = unet_config_from_diffusers(_LAVIE_VSR_JSON)
    assert cfg.to_dict() == lavie_unet.vsr_config().to_dict()
    shapes = unet_param_shapes(cfg)
    count = lambda paths: sum(int(np.prod(shapes[path].shape)) for path in paths)  # noqa: E731
    temporal = [path for path in shapes if "temporal" in path]
    # The image part is diffusers' x4 upscaler UNet (473,398,020 parameters); the temporal layers follow from
    # LaVie's modules: per TemporalModule3D of width C 27C^2 + 2*1024*C + 15C, per transformer 10C^2 + 9C + 32*8.
    assert count(set(shapes) - set(temporal)) == 473_398_020
    assert count(temporal) == 217_638_400
    assert shapes["down_temporal_blocks_0/resblocks_3d_t/conv1/kernel"].shape == (5, 1, 1, 256, 256)
    assert shapes["class_embedding/embedding"].shape == (1000, 1024)


@pytest.mark.parametrize("edit,message", [
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"temporal_module_config": {"attention_block_types": ["Spatial", "Temporal"]}}, "attention_block_types"),
    ({"video_condition": True}, "video_condition"),
    ({"up_temporal_idx": [4]}, "up_temporal_idx"),
    ({"only_cross_attention": [True, False]}, "only_cross_attention"),
])
def test_config_reader_names_what_it_cannot_run(edit, message):
    with pytest.raises(ValueError, match=message):
        unet_config_from_diffusers({**_LAVIE_VSR_JSON, **edit})


def test_class_labels_are_required_exactly_when_embedded(upscaler):
    cfg = _config(upscaler)
    x = jnp.zeros((1, 2, _SIZE, _SIZE, 7))
    args = (x, jnp.zeros((1,)), jnp.zeros((1, _TOKENS, 16)), jnp.ones((1, _TOKENS), bool))
    with pytest.raises(ValueError, match="class_labels_b"):
        jax.eval_shape(LaVieUNet(cfg).init, jax.random.key(0), *args)
    cfg.num_class_embeds = 0
    with pytest.raises(ValueError, match="num_class_embeds=0"):
        jax.eval_shape(LaVieUNet(cfg).init, jax.random.key(0), *args, class_labels_b=jnp.zeros((1,), jnp.int32))
    bad = lavie_unet.vsr_config()
    bad.temporal_norm_num_groups = 48
    with pytest.raises(ConfigError, match="unet.temporal_norm_num_groups"):
        lavie_unet.validate_config(bad)


def test_converter_names_missing_temporal_layers(upscaler):
    """Read as a LaVie VSR checkpoint (not an image model), the upscaler's tensors lack the temporal layers."""
    with pytest.raises(ConversionError, match="down_temporal_blocks.0.shift_conv.weight") as error:
        convert_unet(StateDictCheckpoint(_state_dict(upscaler)), _config(upscaler))
    assert "resblock_temporal.conv1.weight" in str(error.value)
