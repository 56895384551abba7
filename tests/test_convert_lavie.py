"""scripts/convert_lavie.py end to end on a tiny random release laid out as LaVie's: a Stable Diffusion
folder (vae/, text_encoder/, tokenizer/, unet/config.json) and LaVie-layout `.pt` UNets with temporal
layers, converted into orbax folders whose tensors land where the models read them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from t2v_jax.convert.safetensors_io import flatten_tree  # noqa: E402
from t2v_jax.train.checkpoint import load_params  # noqa: E402

pytestmark = pytest.mark.ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
             layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)


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


def test_convert_lavie_release(tmp_path):
    sd_dir = tmp_path / "sd"
    torch.manual_seed(0)
    diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4,
                            sample_size=16).save_pretrained(sd_dir / "vae")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16)).save_pretrained(sd_dir / "text_encoder")
    (sd_dir / "tokenizer").mkdir()
    (sd_dir / "tokenizer" / "vocab.json").write_text("{}")
    unet = diffusers.UNet2DConditionModel(**_UNET)
    unet.save_config(sd_dir / "unet")
    base_state = _lavie_state_dict(unet, interpolation=False, seed=1)
    torch.save({"ema": base_state, "model": {}}, tmp_path / "base.pt")
    interpolation_state = _lavie_state_dict(unet, interpolation=True, seed=2)
    torch.save(interpolation_state, tmp_path / "interpolation.pt")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "convert_lavie.py"), "--sd-dir", str(sd_dir), "--base",
         str(tmp_path / "base.pt"), "--interpolation", str(tmp_path / "interpolation.pt"), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "t2v_jax.json").read_text())
    assert manifest["components"] == ["base", "interpolation", "text_encoder", "vae"]
    assert (out / "tokenizer" / "vocab.json").exists()
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

    # A base file without its temporal layers is not a LaVie checkpoint: the converter names what is missing.
    torch.save(unet.state_dict(), tmp_path / "image_only.pt")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "convert_lavie.py"), "--sd-dir", str(sd_dir), "--base",
         str(tmp_path / "image_only.pt"), "--out", str(tmp_path / "bad")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "attn_temp.to_q.weight" in result.stderr
