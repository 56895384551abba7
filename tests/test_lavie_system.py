"""LaVie's system: the cascade trains end to end on a tiny config, keyframes map as LaVie maps them, the
baselines are right, and cascade configs whose stages disagree fail naming both fields."""

import jax
import numpy as np
import pytest

from t2v_jax.checks import ConfigError
from t2v_jax.config import validate
from t2v_jax.eval.cascade import bicubic_upsample, keyframe_baselines, super_resolution_scores
from t2v_jax.eval.evaluate import generate_and_judge
from t2v_jax.pipelines.load import load_pipeline
from t2v_jax.models import video_vae
from t2v_jax.systems.base import stage_by_name
from t2v_jax.systems.lavie import (VSRStage, base_model, box_downsample, interpolation_condition, keyframe_index,
                                   stages, vsr_model)
from t2v_jax.train.stages import VAEStage
from t2v_jax.train.run import train
from tiny import load_config, tiny_lavie_config


def test_keyframe_index_is_lavies_16_to_61_mapping():
    index = keyframe_index(16, 4)
    assert len(index) == 61
    # LaVie: output frame i shows input frame (i + 1) // 4.
    assert index[:9].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2] and index[-1] == 15
    keyframes = np.arange(3)[None, :, None, None, None] * np.ones((2, 3, 1, 1, 2))
    repeated = np.asarray(interpolation_condition(keyframes, 2))
    assert repeated.shape == (2, 5, 1, 1, 2) and repeated[0, :, 0, 0, 0].tolist() == [0, 1, 1, 2, 2]


def test_keyframe_baselines_repeat_and_blend():
    keyframes = np.array([0, 100, 200], np.uint8)[None, :, None, None, None] * np.ones((1, 3, 1, 1, 1), np.uint8)
    baselines = keyframe_baselines(keyframes, 4)
    assert baselines["repeat"][0, :, 0, 0, 0].tolist() == [0, 0, 0, 0, 100, 100, 100, 100, 200]
    assert baselines["blend"][0, :, 0, 0, 0].tolist() == [0, 25, 50, 75, 100, 125, 150, 175, 200]


def test_super_resolution_scores_against_the_large_rendering():
    """The model is handed the box-downsampled clip and scored against the clip rendered 2x larger: bicubic
    as the model scores exactly as the bicubic baseline, a lossless round trip reaches the 100 dB cap, and a
    blank model scores below bicubic."""
    data = load_config("lavie_digits").data
    scores = super_resolution_scores(lambda low_res, _: bicubic_upsample(low_res, 2), data, 4, 2, 4,
                                     round_trip=lambda videos: videos, progress=False)
    assert scores["model_psnr"] == scores["bicubic_psnr"] and scores["model_ssim"] == scores["bicubic_ssim"]
    assert scores["vae_ceiling_psnr"] == 100.0 and scores["vae_ceiling_ssim"] == pytest.approx(1.0)
    assert 20 < scores["bicubic_psnr"] < 100
    # The low-resolution clips coded by the base VAE (here: darkened) reach the model and bicubic alike.
    coded = super_resolution_scores(lambda low_res, _: bicubic_upsample(low_res, 2), data, 4, 2, 4,
                                    low_res_round_trip=lambda videos: videos // 2, progress=False)
    assert coded["model_after_base_vae_psnr"] == coded["bicubic_after_base_vae_psnr"] < scores["bicubic_psnr"] - 1
    assert coded["model_psnr"] == scores["model_psnr"]
    blank = super_resolution_scores(lambda low_res, _: np.zeros_like(bicubic_upsample(low_res, 2)), data, 4, 2, 4,
                                    progress=False)
    assert blank["model_psnr"] < scores["bicubic_psnr"] and "vae_ceiling_psnr" not in blank


@pytest.mark.parametrize("field,value,named", [
    ("interpolation.num_frames", 30, "data.num_frames=8"),
    ("interpolation.unet.in_channels", 8, "vae.latent_channels=8"),
    ("interpolation.unet.cross_attention_dim", 32, "text.encoder.width=128"),
    ("unet.in_channels", 4, "vae.latent_channels=8"),
    ("vsr.canvas", 48, "data.canvas=16"),
    ("vsr.unet.cross_attention_dim", 32, "text.encoder.width=128"),
])
def test_disagreeing_stages_fail_naming_both_fields(field, value, named):
    config = load_config("lavie_digits")
    section, _, key = field.rpartition(".")
    node = config
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(ConfigError) as error:
        validate(config, num_devices=1)
    assert field in str(error.value) and named in str(error.value)


@pytest.mark.slow
def test_cascade_trains_and_generates_at_four_times_the_frames_and_twice_the_size(tmp_path):
    """All five stages for three steps each, then the whole cascade (about 2 minutes of compiling)."""
    config = tiny_lavie_config(str(tmp_path / "data"))
    summary = train(config, str(tmp_path / "run"), progress=False)
    assert set(summary) == {"vae", "base", "interpolation", "vsr_vae", "vsr"}
    assert all(np.isfinite(metrics["loss"]) for metrics in summary.values())
    cascade = load_pipeline(config, str(tmp_path / "run"))
    prompts = ["a red 3 moving left", "a blue 7 moving up"]
    videos = cascade.generate(prompts, seed=0)
    assert videos.dtype == np.uint8 and videos.shape == (2, 29, 32, 32, 3)
    # Super-resolution runs on independent 8-frame chunks: changing the low-resolution frames of the last
    # chunks leaves the first chunk's output as it was, and changes theirs.
    low_res = np.random.default_rng(0).uniform(-1, 1, (2, 29, 16, 16, 3)).astype(np.float32)
    changed = low_res.copy()
    changed[:, 8:] = -low_res[:, 8:]
    first, second = cascade.upscale(prompts, low_res), cascade.upscale(prompts, changed)
    np.testing.assert_array_equal(first[:, :8], second[:, :8])
    assert np.abs(first[:, 8:].astype(int) - second[:, 8:]).max() > 0
    config.eval.stage = "base"
    scores, base_videos = generate_and_judge(load_pipeline(config, str(tmp_path / "run")), ["a red 3 moving left"] * 2,
                                             batch_size=2, progress=False)
    assert base_videos.shape == (2, 8, 16, 16, 3) and 0 <= scores["all"] <= 1


def test_super_resolution_stage_has_its_own_text_encoder_and_prediction():
    """Released LaVie: the VSR model encodes prompts with OpenCLIP ViT-H and predicts v; the base model uses
    CLIP ViT-L and predicts eps. The VSR stage's model must see its own sections, the base model the base's."""
    config = load_config("lavie_vsr")
    vsr, base = vsr_model(config), base_model(config)
    assert vsr.config.diffusion.prediction_type == "v" and base.config.diffusion.prediction_type == "eps"
    assert vsr.config.text.encoder.width == 1024 and base.config.text.encoder.width == 768


def test_super_resolution_trains_on_low_res_frames_as_the_cascade_makes_them(tmp_path):
    """In the cascade the VSR model's low-resolution input is the base VAE's decoding of latents; with
    `vsr.low_res_through_base_vae` training gives it the box-downsampled window coded and decoded by that VAE
    (restored from the `vae` stage), otherwise the box-downsampled window itself."""
    config = tiny_lavie_config(str(tmp_path / "data"))
    rng = jax.random.PRNGKey(0)
    base_vae_params = jax.jit(VAEStage(config).init_params)(rng)
    vsr_vae_params = jax.jit(VAEStage(config, name="vsr_vae", vae_cfg=config.vsr.vae).init_params)(rng)
    window_bthwc = jax.random.uniform(jax.random.PRNGKey(1), (2, config.vsr.chunk_frames, 32, 32, 3), minval=-1)
    box_bthwc = box_downsample(window_bthwc, config.vsr.scale)

    assert config.vsr.low_res_through_base_vae
    assert stage_by_name(stages(config), "vsr").consumes == ("vsr_vae", "vae")
    stage = VSRStage(config, vsr_vae_params, base_vae_params)
    vae = video_vae.VideoVAE(config.vae)
    round_trip = jax.jit(lambda video: video_vae.vae_decode(vae, base_vae_params,
                                                            video_vae.vae_encode(vae, base_vae_params, video)))
    expected_bthwc = np.clip(round_trip(box_bthwc), -1, 1)
    low_res_bthwc = jax.jit(stage.low_res_input)(window_bthwc)
    np.testing.assert_allclose(low_res_bthwc, expected_bthwc, atol=1e-5)
    assert np.abs(low_res_bthwc - box_bthwc).mean() > 0.05

    config.vsr.low_res_through_base_vae = False
    assert stage_by_name(stages(config), "vsr").consumes == ("vsr_vae",)
    np.testing.assert_array_equal(VSRStage(config, vsr_vae_params).low_res_input(window_bthwc), box_bthwc)
