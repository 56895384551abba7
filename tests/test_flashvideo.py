"""FlashVideo end to end on a tiny config: three stages, keyframes then interpolation, the CLIs, errors."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.checks import ConfigError
from t2v_jax.config import validate
from t2v_jax.models import retnet_video as rv
from t2v_jax.pipelines.flashvideo import FlashVideoPipeline
from t2v_jax.pipelines.load import load_pipeline
from t2v_jax.train.run import train
from t2v_jax.train.trainer import read_metrics
from tiny import tiny_flashvideo_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red 3 moving left", "a blue 7 moving up"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    config = tiny_flashvideo_config(data_dir)
    workdir = str(tmp_path_factory.mktemp("flashvideo"))
    summary = train(config, workdir, progress=False)
    return config, workdir, summary


def test_three_stages_train_and_generate(trained):
    config, workdir, summary = trained
    assert set(summary) == {"tokenizer", "keyframes", "interpolation"}
    for stage in summary:
        losses = [m["loss"] for m in read_metrics(os.path.join(workdir, stage))]
        assert len(losses) == 4 and np.all(np.isfinite(losses))
    pipeline = load_pipeline(config, workdir)
    videos = pipeline.generate(PROMPTS, seed=0)
    assert videos.dtype == np.uint8 and videos.shape == (2, 9, 16, 16, 3)
    np.testing.assert_array_equal(videos, pipeline.generate(PROMPTS, seed=0))
    assert not np.array_equal(videos, pipeline.generate(PROMPTS, seed=1))


def test_keyframes_then_frames_between_them(trained):
    """With greedy sampling every frame's codes are checkable: the keyframes are the keyframe decoder's
    continuation of the caption, and each gap's frames are the interpolation decoder's continuation of
    the caption plus the two keyframes around it, placed between them in order."""
    config, workdir, _ = trained
    config = config.copy_and_resolve_references()
    config.sampling.update(temperature=0.0, guidance_scale=2.0, interpolation_guidance_scale=1.0)
    params = load_pipeline(config, workdir).params
    pipeline = FlashVideoPipeline(config, tokenizer_params=params["tokenizer"], keyframe_params=params["keyframes"],
                                  interpolation_params=params["interpolation"])
    codes_bfn = pipeline.generate_codes(PROMPTS, seed=0)
    vocab, n = pipeline.vocab, pipeline.tokens_per_frame
    ids_bt, _ = pipeline.tokenizer(PROMPTS)
    null_bt, _ = pipeline.tokenizer([""] * 2)
    text_bt, null_text_bt = vocab.text(jnp.asarray(ids_bt)), vocab.text(jnp.asarray(null_bt))
    keys = np.array([0, 4, 8])
    layout = rv.block_layout(jnp.broadcast_to(jnp.asarray(keys), (2, 3)), n, vocab)
    tokens = rv.generate_tokens(pipeline.keyframe_decoder, pipeline.params["keyframes"], text_bt, layout,
                                jax.random.key(0), temperature=0.0, guidance_scale=2.0, uncond_prompt_bp=null_text_bt)
    np.testing.assert_array_equal(codes_bfn[:, keys], np.asarray(tokens).reshape(2, 3, n + 1)[..., 1:])
    for left in (0, 4):
        left_b = jnp.full((2,), left)
        prompt = rv.interpolation_prompt(text_bt, codes_bfn[:, left], codes_bfn[:, left + 4], left_b, 4, vocab)
        layout = rv.block_layout(rv.gap_frames(left_b, 4), n, vocab)
        tokens = rv.generate_tokens(pipeline.interpolation_decoder, pipeline.params["interpolation"], prompt,
                                    layout, jax.random.key(0), temperature=0.0)
        np.testing.assert_array_equal(codes_bfn[:, left + 1:left + 4], np.asarray(tokens).reshape(2, 3, n + 1)[..., 1:])


def test_prompt_over_the_caption_budget_is_refused(trained):
    config, workdir, _ = trained
    pipeline = load_pipeline(config, workdir)
    with pytest.raises(ValueError, match=r"prompt 0 .* needs 51 tokens with eos, over the caption budget "
                                         r"config.text.max_length=32"):
        pipeline.generate(["a magenta 7 moving right across a very long canvas"])


def test_config_errors_name_the_field(data_dir):
    config = tiny_flashvideo_config(data_dir)
    config.flashvideo.keyframe_stride = 3
    with pytest.raises(ConfigError, match=r"flashvideo.keyframe_stride.*9 frames.*allowed: \[1, 2, 4, 8\]"):
        validate(config)
    config = tiny_flashvideo_config(data_dir)
    config.text.max_length = 16
    with pytest.raises(ConfigError, match=r"text.max_length.*longest Bouncing Digits caption"):
        validate(config)
    config = tiny_flashvideo_config(data_dir)
    config.interpolation_model.mixer = "lstm"
    with pytest.raises(ConfigError, match=r"interpolation_model.mixer"):
        validate(config)


def test_sample_script(trained, tmp_path, data_dir):
    _, workdir, _ = trained
    config_path = tmp_path / "tiny_flashvideo.py"
    config_path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
        "from tiny import tiny_flashvideo_config\n\n"
        f"def get_config():\n    return tiny_flashvideo_config({data_dir!r})\n")
    out = tmp_path / "flash.gif"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "sample.py"), f"--config={config_path}",
         f"--checkpoint={workdir}", "--prompt=a red 3 moving left", "--prompt=a cyan 5 moving down",
         f"--out={out}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size > 0 and "keyframes every 4 frames" in result.stdout
