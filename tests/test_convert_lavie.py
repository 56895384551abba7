"""scripts/convert_lavie.py end to end on a tiny random release laid out as LaVie's: a Stable Diffusion
folder (vae/, text_encoder/, tokenizer/, unet/config.json) and LaVie-layout `.pt` base and interpolation UNets
with temporal layers, and for super-resolution an x4-upscaler folder (a 3-level VAE, OpenCLIP's exact-GELU text
encoder, unet/config.json) and a LaVie-VSR-layout `.pt`, converted into orbax folders whose tensors land where
the models read them and compute what the references compute."""

import importlib.util
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from t2v_jax.checks import ConfigError  # noqa: E402
from t2v_jax.convert.lavie import checkpoint_name, convert_lavie, unet_param_shapes, vsr_unet_config  # noqa: E402
from t2v_jax.convert.safetensors_io import ConversionError, flatten_tree  # noqa: E402
from t2v_jax.models import lavie_unet, video_vae  # noqa: E402
from t2v_jax.models.clip_text import CLIPTextEncoder  # noqa: E402
from t2v_jax.models.text_encoder import CLIPTokenizer  # noqa: E402
from t2v_jax.pipelines.load import load_pipeline  # noqa: E402
from t2v_jax.train.checkpoint import load_params  # noqa: E402

pytestmark = pytest.mark.ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
             layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
# The x4 upscaler's UNet layout at 32 channels: four levels, so that LaVie's temporal layout (a temporal module
# after each of the four levels, `lavie_unet.vsr_config()`) and its 32-group temporal GroupNorms apply unchanged.
_UPSCALER_UNET = dict(
    sample_size=8, in_channels=7, out_channels=4, block_out_channels=(32,) * 4,
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",), only_cross_attention=(True, True, True, False),
    use_linear_projection=True, num_class_embeds=1000, layers_per_block=1, cross_attention_dim=32,
    attention_head_dim=2, norm_num_groups=8)


def _lavie_state_dict(unet, *, interpolation: bool, seed: int):
    """The image UNet's tensors plus random temporal layers under LaVie's names (and the buffers LaVie
    saves: RoPE frequencies, its unused top-level relative position bias)."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: value.clone() for name, value in unet.state_dict().items()}
    if interpolation:
        state["conv_in.weight"] = torch.randn((32, 8, 3, 3), generator=generator)
    for name in [n for n in unet.state_dict() if n.endswith("attn1.to_q.weight")]:
        block = name[: -len("attn1.to_q.weight")]
        dim = unet.state_dict()[name].shape[0]
        for part in ("to_q", "to_k", "to_v", "to_out.0"):
            state[f"{block}attn_temp.{part}.weight"] = torch.randn((dim, dim), generator=generator)
        state[f"{block}attn_temp.to_out.0.bias"] = torch.randn((dim,), generator=generator)
        state[f"{block}norm_temp.weight"] = torch.randn((dim,), generator=generator)
        state[f"{block}norm_temp.bias"] = torch.randn((dim,), generator=generator)
        if not interpolation:
            state[f"{block}attn_temp.time_rel_pos_bias.relative_attention_bias.weight"] = torch.randn(
                (32, 4), generator=generator)
            state[f"{block}attn_temp.rotary_emb.freqs"] = torch.ones(16)
    if not interpolation:
        state["time_rel_pos_bias.relative_attention_bias.weight"] = torch.randn((32, 8), generator=generator)
    return state


def _vsr_config():
    """The tiny VSR UNet the upscaler folder describes: the repo's small VSR config with the released
    temporal GroupNorms (32 groups), as the converter reads it from unet/config.json."""
    cfg = lavie_unet.small_vsr_config(4, _UPSCALER_UNET["block_out_channels"], num_heads=2, cross_attention_dim=32,
                                      norm_num_groups=8)
    cfg.temporal_norm_num_groups = 32
    return cfg


def _torch_layout(path, value):
    """A LaVieUNet param as PyTorch stores it: Linear (out, in), Conv (out, in, *kernel)."""
    if path.endswith("kernel"):
        value = np.moveaxis(value, (-1, -2), (0, 1))
    return torch.from_numpy(np.ascontiguousarray(value))


def _lavie_vsr_state_dict(upscaler_unet, seed):
    """Random params of the tiny VSR UNet and the same tensors as LaVie's VSR `.pt` holds them: the image
    part under diffusers' names (checked against the upscaler's own state dict), the temporal layers under
    LaVie's, and the RoPE frequency buffers LaVie saves."""
    rng = np.random.default_rng(seed)
    params = {path: rng.standard_normal(shape.shape).astype(np.float32)
              for path, shape in unet_param_shapes(_vsr_config()).items()}
    state = {checkpoint_name(path): _torch_layout(path, value) for path, value in params.items()}
    image = {name: tuple(value.shape) for name, value in state.items() if "temporal" not in name}
    assert image == {name: tuple(value.shape) for name, value in upscaler_unet.state_dict().items()}
    for name, shape in (("down_temporal_blocks.0.resblocks_3d_t.conv1.weight", (32, 32, 5, 1, 1)),
                        ("mid_temporal_block.shift_conv.weight", (32, 32, 1, 1)),
                        ("up_blocks.0.attentions.0.resblock_temporal.conv2.weight", (32, 32, 3, 1, 1)),
                        ("down_blocks.1.attentions.0.transformer_blocks.0.attn_temporal.to_q.weight", (32, 32)),
                        ("mid_block.attentions.0.transformer_blocks.0.norm_temporal.weight", (32,))):
        assert tuple(state[name].shape) == shape, name
    for name in [n for n in state if n.endswith("attn_temporal.to_q.weight")]:
        state[name.replace("to_q.weight", "rotary_emb.freqs")] = torch.ones(16)
    state["temporal_rotary_emb.freqs"] = torch.ones(16)
    return params, state


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _write_clip_tokenizer(folder):
    """A real CLIP BPE tokenizer with a 54-token vocabulary (no merges): bos 0, eos (also pad and unknown) 1, a
    letter inside a word 2..27, a letter ending a word 28..53; digits and other characters read as unknown."""
    folder.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({letter: 2 + i for i, letter in enumerate(_LETTERS)})
    vocab.update({letter + "</w>": 28 + i for i, letter in enumerate(_LETTERS)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tiny release: sd/, upscaler/, base.pt (EMA inside training state), interpolation.pt, vsr.pt
    ({"ema": ...}, as LaVie's), and what made them."""
    root = tmp_path_factory.mktemp("release")
    sd_dir, upscaler_dir = root / "sd", root / "upscaler"
    torch.manual_seed(0)
    diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4,
                            sample_size=16).save_pretrained(sd_dir / "vae")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16)).save_pretrained(sd_dir / "text_encoder")
    upscaler_vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4, latent_channels=4, sample_size=16,
        scaling_factor=0.08333).eval()
    upscaler_vae.save_pretrained(upscaler_dir / "vae")
    vae_json = json.loads((upscaler_dir / "vae" / "config.json").read_text())
    del vae_json["scaling_factor"]  # as the upscaler's vae/config.json was before April 2023
    (upscaler_dir / "vae" / "config.json").write_text(json.dumps(vae_json))
    upscaler_text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, hidden_act="gelu")).eval()
    upscaler_text.save_pretrained(upscaler_dir / "text_encoder")
    for folder in (sd_dir, upscaler_dir):
        _write_clip_tokenizer(folder / "tokenizer")
    unet = diffusers.UNet2DConditionModel(**_UNET)
    unet.save_config(sd_dir / "unet")
    base_state = _lavie_state_dict(unet, interpolation=False, seed=1)
    torch.save({"ema": base_state, "model": {}}, root / "base.pt")
    interpolation_state = _lavie_state_dict(unet, interpolation=True, seed=2)
    torch.save(interpolation_state, root / "interpolation.pt")
    upscaler_unet = diffusers.UNet2DConditionModel(**_UPSCALER_UNET)
    upscaler_unet.save_config(upscaler_dir / "unet")
    vsr_params, vsr_state = _lavie_vsr_state_dict(upscaler_unet, seed=3)
    torch.save({"ema": vsr_state, "model": {}}, root / "vsr.pt")
    return dict(root=root, unet=unet, base_state=base_state, interpolation_state=interpolation_state,
                upscaler_vae=upscaler_vae, upscaler_text=upscaler_text, vsr_params=vsr_params, vsr_state=vsr_state)


def _convert(*args) -> int:
    """scripts/convert_lavie.py's main on these arguments, in this process (its traces are cached here)."""
    spec = importlib.util.spec_from_file_location("convert_lavie", os.path.join(REPO, "scripts", "convert_lavie.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main([str(arg) for arg in args])


def test_convert_lavie_release(release):
    root = release["root"]
    base_state, interpolation_state = release["base_state"], release["interpolation_state"]
    out = root / "out"
    assert _convert("--sd-dir", root / "sd", "--base", root / "base.pt", "--interpolation", root / "interpolation.pt",
                    "--upscaler-dir", root / "upscaler", "--vsr", root / "vsr.pt", "--out", out) == 0
    manifest = json.loads((out / "t2v_jax.json").read_text())
    assert manifest["components"] == ["base", "interpolation", "text_encoder", "vae", "vsr", "vsr_text_encoder",
                                      "vsr_vae"]
    assert (out / "tokenizer" / "vocab.json").exists() and (out / "vsr_tokenizer" / "vocab.json").exists()
    assert manifest["configs"]["interpolation"]["sparse_causal"] and manifest["configs"]["interpolation"]["in_channels"] == 8

    base = flatten_tree(load_params(str(out / "base")))
    block = "down_blocks_0/attentions_0/transformer_blocks_0"
    np.testing.assert_array_equal(
        base[f"{block}/attn_temp/attention/query/kernel"],
        base_state["down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"].numpy().T)
    np.testing.assert_array_equal(
        base[f"{block}/attn_temp/time_rel_pos_bias/embedding"],
        base_state["down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.time_rel_pos_bias."
                   "relative_attention_bias.weight"].numpy())
    interpolation = flatten_tree(load_params(str(out / "interpolation")))
    np.testing.assert_array_equal(interpolation["conv_in/kernel"],
                                  interpolation_state["conv_in.weight"].numpy().transpose(2, 3, 1, 0))
    assert not any("time_rel_pos_bias" in path for path in interpolation)

    # Super-resolution: the UNet config read from the upscaler's unet/config.json, every tensor where it was.
    # (Equal params: the converted UNet computes what the UNet that made the .pt computes.)
    assert manifest["configs"]["vsr"] == json.loads(json.dumps(_vsr_config().to_dict()))
    vsr = flatten_tree(load_params(str(out / "vsr")))
    assert set(vsr) == set(release["vsr_params"])
    for path, value in release["vsr_params"].items():
        np.testing.assert_array_equal(vsr[path], value, err_msg=path)

    # The upscaler's VAE decodes as diffusers' (x4, scaling factor 0.08333) and its text encoder (exact GELU)
    # encodes as transformers'.
    vae_cfg = ml_collections.ConfigDict(manifest["configs"]["vsr_vae"])
    assert video_vae.spatial_compression(vae_cfg) == 4 and vae_cfg.scaling_factor == 0.08333
    latents = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = release["upscaler_vae"].decode(latents).sample.numpy()
    decoded = video_vae.vae_decode(video_vae.VideoVAE(vae_cfg), {"params": load_params(str(out / "vsr_vae"))},
                                   jnp.asarray(latents.numpy().transpose(0, 2, 3, 1))[None] * 0.08333, tiled=False)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(np.asarray(decoded)[0].transpose(0, 3, 1, 2), expected, atol=1e-4, rtol=0)
    text_cfg = ml_collections.ConfigDict(manifest["configs"]["vsr_text_encoder"])
    assert text_cfg.activation == "gelu"
    ids = np.random.default_rng(5).integers(0, 100, (2, 16)).astype(np.int32)
    with torch.no_grad():
        expected = release["upscaler_text"](input_ids=torch.from_numpy(ids).long()).last_hidden_state.numpy()
    encoded = jax.jit(CLIPTextEncoder(text_cfg).apply)({"params": load_params(str(out / "vsr_text_encoder"))}, ids)
    np.testing.assert_allclose(np.asarray(encoded), expected, atol=1e-4, rtol=0)


def test_lavie_vsr_config_file_gives_the_same_unet(release, tmp_path):
    """LaVie's own `UNet3DVSRModel` config (vsr/configs/unet_3d_config.json's fields, at the tiny size) reads as
    the config derived from the upscaler's unet/config.json."""
    config_json = json.loads((release["root"] / "upscaler" / "unet" / "config.json").read_text())
    config_json.update(
        _class_name="UNet3DVSRModel", down_block_types=[n.replace("2D", "3D") for n in config_json["down_block_types"]],
        up_block_types=[n.replace("2D", "3D") for n in config_json["up_block_types"]], down_temporal_idx=[0, 1, 2, 3],
        mid_temporal=True, up_temporal_idx=[0, 1, 2, 3], use_first_frame=False, video_condition=False,
        temporal_module_config={"num_attention_layers": 1, "attention_block_types": ["", ""]})
    (tmp_path / "unet_3d_config.json").write_text(json.dumps(config_json))
    assert vsr_unet_config(None, str(tmp_path / "unet_3d_config.json")).to_dict() == _vsr_config().to_dict()


def test_mismatched_tensors_are_all_named_before_anything_is_written(release):
    """A base file without its temporal layers (an image model) and a VSR file with one tensor renamed: one error
    names both components' tensors, and no folder is written; the VSR alone needs no sd_dir."""
    root = release["root"]
    torch.save(release["unet"].state_dict(), root / "image_only.pt")
    renamed = dict(release["vsr_state"])
    renamed["mid_temporal_block.shift_conv.kernel"] = renamed.pop("mid_temporal_block.shift_conv.weight")
    torch.save({"ema": renamed}, root / "renamed.pt")
    with pytest.raises(ConversionError) as error:
        convert_lavie(str(root / "bad"), sd_dir=str(root / "sd"), base=str(root / "image_only.pt"),
                      upscaler_dir=str(root / "upscaler"), vsr=str(root / "renamed.pt"), show_progress=False)
    for name in ("attn_temp.to_q.weight", "mid_temporal_block.shift_conv.weight",
                 "mid_temporal_block.shift_conv.kernel"):
        assert name in str(error.value)
    assert not (root / "bad").exists()
    with pytest.raises(ConversionError, match="shift_conv.kernel"):
        convert_lavie(str(root / "bad"), upscaler_dir=str(root / "upscaler"), vsr=str(root / "renamed.pt"),
                      show_progress=False)
    assert not (root / "bad").exists()


def _released_config(manifest):
    """configs/lavie_vsr.py with the tiny release's models (from its manifest) at a tiny size: 2 keyframes of
    16x16 -> 5 frames -> 64x64, two steps per stage."""
    spec = importlib.util.spec_from_file_location("lavie_vsr", os.path.join(REPO, "configs", "lavie_vsr.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    stored = {name: ml_collections.ConfigDict(cfg) for name, cfg in manifest["configs"].items()}
    config.data.update(num_frames=2, canvas=16, width=16)
    config.vae, config.text.encoder, config.unet = stored["vae"], stored["text_encoder"], stored["base"]
    config.interpolation.update(num_frames=5, unet=stored["interpolation"])
    config.vsr.update(canvas=64, num_frames=5, chunk_frames=2, vae=stored["vsr_vae"], unet=stored["vsr"])
    config.vsr.text.encoder = stored["vsr_text_encoder"]
    for text in (config.text, config.vsr.text):
        text.max_length = 16
    for sampling in (config.sampling, config.interpolation.sampling, config.vsr.sampling):
        sampling.num_steps = 2
    return config


@pytest.fixture(scope="module")
def converted_release(release):
    """The tiny release converted whole, and a config that describes it."""
    out = release["root"] / "converted"
    assert _convert("--sd-dir", release["root"] / "sd", "--base", release["root"] / "base.pt", "--interpolation",
                    release["root"] / "interpolation.pt", "--upscaler-dir", release["root"] / "upscaler", "--vsr",
                    release["root"] / "vsr.pt", "--out", out) == 0
    return out, _released_config(json.loads((out / "t2v_jax.json").read_text()))


def test_converted_release_loads_as_the_cascade(converted_release):
    """The converted folder loads as the cascade: each stage's UNet and text encoder from its own folder (the
    interpolation model shares the base's text encoder), the prompts through the folder's CLIP tokenizers; a
    config that does not describe the folder is refused naming the field."""
    out, config = converted_release
    pipeline = load_pipeline(config, str(out))
    for params, component in ((pipeline.dit_params, "base"), (pipeline.interpolation_params["dit"], "interpolation"),
                              (pipeline.vsr["params"]["dit"], "vsr"),
                              (pipeline.text_encoder_params, "text_encoder"),
                              (pipeline.interpolation_params["text_encoder"], "text_encoder"),
                              (pipeline.vsr["params"]["text_encoder"], "vsr_text_encoder"),
                              (pipeline.vae_params, "vae"), (pipeline.vsr["vae_params"], "vsr_vae")):
        expected = flatten_tree(load_params(str(out / component)))
        loaded = flatten_tree(params["params"])
        assert set(loaded) == set(expected), component
        for path, value in expected.items():
            np.testing.assert_array_equal(np.asarray(loaded[path]), value, err_msg=f"{component}: {path}")
    # Stable Diffusion's tokenisation: bos, the text, eos, eos as padding; every position attended.
    ids_bl, mask_bl = CLIPTokenizer.from_dir(str(out / "tokenizer"), 16)(["a red 3"])
    a, r, e, d = 28 + 0, 2 + 17, 2 + 4, 28 + 3
    assert ids_bl.tolist() == [[0, a, r, e, d, 1, 1] + [1] * 9] and mask_bl.all()
    assert pipeline.vsr["tokenizer"](["a red 3"])[0].tolist() == ids_bl.tolist()

    wrong = config.copy_and_resolve_references()
    wrong.vsr.unet.block_out_channels = (32, 32, 32, 64)
    with pytest.raises(ConfigError, match="vsr.unet.block_out_channels"):
        load_pipeline(wrong, str(out))


@pytest.mark.slow
def test_converted_release_generates(converted_release):
    """Text to 5 frames x 64x64 through the three converted stages (a minute of compiling)."""
    out, config = converted_release
    video = load_pipeline(config, str(out)).generate(["a red 3"], seed=0)
    assert video.dtype == np.uint8 and video.shape == (1, 5, 64, 64, 3) and video.std() > 0
