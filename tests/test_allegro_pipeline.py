"""Official-weights path end to end at a tiny size: a diffusers Allegro folder (`convert/tiny_allegro.py`:
random transformer, VAE, T5 encoder, a real sentencepiece tokenizer) -> scripts/convert_allegro.py ->
AllegroPipeline, compared with diffusers' own AllegroPipeline, read from the same folder, from the same
starting noise."""

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
from t2v_jax.convert.tiny_allegro import (CORPUS, FRAMES, HEIGHT, TEXT_LENGTH, TILE, WIDTH,  # noqa: E402
                                           tiny_allegro_config, write_tiny_allegro)
from t2v_jax.io.video import read_video  # noqa: E402
from t2v_jax.pipelines.allegro import preprocess_prompt  # noqa: E402
from t2v_jax.systems.allegro import load_converted  # noqa: E402

pytestmark = pytest.mark.ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference_pipeline(diffusers_dir):
    """diffusers' AllegroPipeline over the folder, tiled as the tiny config tiles and sampling with DDIM as it does."""
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    pipeline = diffusers.AllegroPipeline.from_pretrained(diffusers_dir, scheduler=scheduler)
    # diffusers fixes the tile frames and overlaps in __init__; tiled_encode/decode read these two.
    pipeline.vae.kernel = (TILE["frames"], TILE["size"], TILE["size"])
    pipeline.vae.stride = (TILE["frames"] - TILE["overlap_frames"], TILE["size"] - TILE["overlap"][0],
                           TILE["size"] - TILE["overlap"][1])
    pipeline.vae.enable_tiling()
    return pipeline


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("allegro"))
    diffusers_dir = write_tiny_allegro(os.path.join(root, "allegro"))
    out_dir = os.path.join(root, "converted")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_allegro.py"),
                             "--diffusers-dir", diffusers_dir, "--out", out_dir, "--dtype", "float32"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return _reference_pipeline(diffusers_dir), diffusers_dir, out_dir


def test_pipeline_matches_diffusers_from_the_same_noise(converted):
    reference, diffusers_dir, out_dir = converted
    config = tiny_allegro_config(diffusers_dir)
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
    pipeline = load_converted(tiny_allegro_config(diffusers_dir), out_dir)
    with pytest.raises(ValueError, match=rf"prompt 0 .* over the caption budget config.text.max_length={TEXT_LENGTH}"):
        pipeline.generate([" ".join(CORPUS * 4)])


def test_config_of_another_checkpoint_is_named(converted):
    _, diffusers_dir, out_dir = converted
    config = tiny_allegro_config(diffusers_dir)
    config.dit.rope_interpolation_scale = (2.2, 2.0, 2.0)
    with pytest.raises(ConfigError, match=r"dit\.rope_interpolation_scale"):
        load_converted(config, out_dir)


def test_sample_script_writes_a_video_from_the_converted_folder(converted, tmp_path):
    _, diffusers_dir, out_dir = converted
    config_file = tmp_path / "tiny_allegro.py"
    config_file.write_text(textwrap.dedent(f"""
        from t2v_jax.convert.tiny_allegro import tiny_allegro_config

        def get_config():
            return tiny_allegro_config({diffusers_dir!r})
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
