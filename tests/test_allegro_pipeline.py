"""Official-weights path end to end at a tiny size: a diffusers Allegro folder (random transformer,
VAE, T5 encoder, a real sentencepiece tokenizer) -> scripts/convert_allegro.py -> AllegroPipeline,
compared with diffusers' own AllegroPipeline from the same starting noise."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

from t2v_jax.checks import ConfigError  # noqa: E402
from t2v_jax.convert.allegro import read_component_configs  # noqa: E402
from t2v_jax.io.video import read_video  # noqa: E402
from t2v_jax.pipelines.allegro import preprocess_prompt  # noqa: E402
from t2v_jax.systems.allegro import allegro_config, load_converted  # noqa: E402

pytestmark = pytest.mark.ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, HEIGHT, WIDTH = 4, 16, 24  # pixels: 2 x 8 x 12 latents with the x2 / x2 VAE below
TEXT_LENGTH = 224  # holds the official template around a short prompt in this tokenizer's pieces
TILE = dict(frames=4, size=16, overlap_frames=2, overlap=(8, 8))
CORPUS = ["a red car drives down a rainy street at night", "a cat sleeps on a warm windowsill",
          "waves crash on the rocks under a grey sky", "a harbor at sunrise with boats rocking gently",
          "masterpiece best quality ultra detailed unwatermarked emotional harmonious vignette",
          "nsfw lowres bad anatomy text error cropped worst quality jpeg artifacts watermark blurry"]


def _perturb(model, scale=0.1):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn_like(param))


def _build_diffusers_folder(root):
    """A tiny diffusers Allegro folder laid out like rhymes-ai/Allegro; returns the loaded modules."""
    torch.manual_seed(0)
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(CORPUS * 20))
    spm_prefix = os.path.join(root, "spiece")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=spm_prefix, vocab_size=64, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2)
    spm_dir = os.path.join(root, "spm")
    os.makedirs(spm_dir)
    os.replace(spm_prefix + ".model", os.path.join(spm_dir, "spiece.model"))
    tokenizer = transformers.T5TokenizerFast.from_pretrained(spm_dir, model_max_length=TEXT_LENGTH, extra_ids=0)
    tokenizer.save_pretrained(os.path.join(root, "allegro", "tokenizer"))

    text_encoder = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dropout_rate=0.0)).eval()
    vae = diffusers.AutoencoderKLAllegro(
        block_out_channels=(8, 16), down_block_types=("AllegroDownBlock3D",) * 2,
        up_block_types=("AllegroUpBlock3D",) * 2, layers_per_block=1, norm_num_groups=4, latent_channels=4,
        temporal_downsample_blocks=(True, False), temporal_upsample_blocks=(False, True),
        temporal_compression_ratio=2, sample_size=128).eval()  # > diffusers' fixed 120 px tile overlap
    transformer = diffusers.AllegroTransformer3DModel(
        num_layers=2, num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        cross_attention_dim=24, caption_channels=32, interpolation_scale_t=1.0, interpolation_scale_h=2.0,
        interpolation_scale_w=2.0).eval()
    for model in (text_encoder, vae, transformer):
        _perturb(model)
    for name, model in (("text_encoder", text_encoder), ("vae", vae), ("transformer", transformer)):
        model.save_pretrained(os.path.join(root, "allegro", name))
    vae.kernel = (TILE["frames"], TILE["size"], TILE["size"])
    vae.stride = (TILE["frames"] - TILE["overlap_frames"], TILE["size"] - TILE["overlap"][0],
                  TILE["size"] - TILE["overlap"][1])
    vae.enable_tiling()
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    return diffusers.AllegroPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                     transformer=transformer, scheduler=scheduler)


def _tiny_config(diffusers_dir):
    """allegro_config() with the tiny models' own configs and a small video."""
    config = allegro_config("40x360p")
    models = read_component_configs(diffusers_dir, dtype="float32")
    config.dit = models["transformer"]
    config.dit.param_dtype = "float32"
    config.dit.attention = "xla"
    config.vae = models["vae"]
    config.vae.update(dict(tile_frames=TILE["frames"], tile_size=TILE["size"],
                           tile_overlap_frames=TILE["overlap_frames"], tile_overlap=TILE["overlap"]))
    config.text.encoder = models["text_encoder"]
    config.text.max_length = TEXT_LENGTH
    config.data.update(dict(num_frames=FRAMES, canvas=HEIGHT, width=WIDTH))
    config.sampling.update(dict(method="ddim", num_steps=4, guidance_scale=3.0))
    return config


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("allegro"))
    reference = _build_diffusers_folder(root)
    diffusers_dir, out_dir = os.path.join(root, "allegro"), os.path.join(root, "converted")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_allegro.py"),
                             "--diffusers-dir", diffusers_dir, "--out", out_dir, "--dtype", "float32"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return reference, diffusers_dir, out_dir


def test_pipeline_matches_diffusers_from_the_same_noise(converted):
    reference, diffusers_dir, out_dir = converted
    config = _tiny_config(diffusers_dir)
    pipeline = load_converted(config, out_dir)
    prompt = "A harbor at sunrise, boats rocking gently"
    noise_bcthw = torch.randn((1, 4, 2, HEIGHT // 2, WIDTH // 2), generator=torch.Generator().manual_seed(0))

    ours = pipeline.generate([prompt], initial_noise=noise_bcthw.numpy().transpose(0, 2, 3, 4, 1))
    with torch.no_grad():
        frames = reference(preprocess_prompt(prompt, config.sampling.prompt_template),
                           negative_prompt=config.sampling.negative_prompt, num_inference_steps=4,
                           guidance_scale=3.0, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                           latents=noise_bcthw, output_type="np", max_sequence_length=TEXT_LENGTH).frames
    expected = np.round(np.asarray(frames) * 255)
    assert ours.shape == expected.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    assert expected.std() > 10  # a real picture, not a flat grey
    np.testing.assert_allclose(ours.astype(np.float32), expected, atol=1.0, rtol=0)


def test_prompt_over_the_caption_budget_is_refused(converted):
    _, diffusers_dir, out_dir = converted
    pipeline = load_converted(_tiny_config(diffusers_dir), out_dir)
    with pytest.raises(ValueError, match=rf"prompt 0 .* over the caption budget config.text.max_length={TEXT_LENGTH}"):
        pipeline.generate([" ".join(CORPUS * 4)])


def test_config_of_another_checkpoint_is_named(converted):
    _, diffusers_dir, out_dir = converted
    config = _tiny_config(diffusers_dir)
    config.dit.rope_interpolation_scale = (2.2, 2.0, 2.0)
    with pytest.raises(ConfigError, match=r"dit\.rope_interpolation_scale"):
        load_converted(config, out_dir)


def test_sample_script_writes_a_video_from_the_converted_folder(converted, tmp_path):
    _, diffusers_dir, out_dir = converted
    config_file = tmp_path / "tiny_allegro.py"
    config_file.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_allegro_pipeline import _tiny_config

        def get_config():
            return _tiny_config({diffusers_dir!r})
    """))
    out = tmp_path / "a.gif"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sample.py"), f"--config={config_file}",
                             f"--checkpoint={out_dir}", "--prompt=a cat sleeps", f"--out={out}"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_video(str(out)).shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_convert_script_names_a_missing_tensor_and_writes_nothing(converted, tmp_path):
    from safetensors.torch import load_file, save_file

    _, diffusers_dir, _ = converted
    broken = tmp_path / "broken"
    shutil.copytree(diffusers_dir, broken)
    weights = broken / "text_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_allegro.py"),
                             "--diffusers-dir", str(broken), "--out", str(out), "--components", "text_encoder"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in result.stderr
    assert not (out / "t2v_jax.json").exists()


def test_bfloat16_conversion_rounds_the_float32_weights(converted, tmp_path):
    import ml_dtypes

    from t2v_jax.convert.allegro import convert_allegro
    from t2v_jax.train.checkpoint import load_params

    _, diffusers_dir, out_dir = converted
    convert_allegro(diffusers_dir, str(tmp_path), components=("transformer",), show_progress=False)
    as_bf16 = load_params(os.path.join(tmp_path, "transformer"))
    as_f32 = load_params(os.path.join(out_dir, "transformer"))
    kernel_bf16 = as_bf16["blocks"]["attn1"]["query"]["kernel"]
    assert kernel_bf16.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(kernel_bf16, as_f32["blocks"]["attn1"]["query"]["kernel"].astype(ml_dtypes.bfloat16))
