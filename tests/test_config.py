"""Invalid configs fail before anything compiles, naming the field and what is allowed."""

import os

import jax
import pytest

from t2v_jax.checks import ConfigError
from t2v_jax.config import config_from_file, validate
from t2v_jax.train.checkpoint import SAVED_CONFIG, dump_json
from tiny import CONFIG_DIR, load_config


@pytest.fixture
def config():
    return load_config("quickstart")


def test_quickstart_config_is_valid(config):
    validate(config, num_devices=1)


@pytest.mark.parametrize("field, value, message", [
    ("dit.num_heads", 5, r"config\.dit\.num_heads: 5 heads do not divide dit\.width=96"),
    ("dit.width", 98, r"config\.dit\.num_heads: 4 heads do not divide dit\.width=98"),
    ("dit.patch_thw", (1, 3, 3), r"config\.dit\.patch_thw: patch \(1, 3, 3\) does not divide"),
    ("sampling.method", "heun", r"config\.sampling\.method: 'heun' is not allowed; choose one of \['ddpm'"),
    ("diffusion.prediction_type", "score", r"config\.diffusion\.prediction_type: 'score' is not allowed"),
    ("dit.attention", "flash", r"config\.dit\.attention: 'flash' is not allowed"),
    ("dit.remat_policy", "some", r"config\.dit\.remat_policy"),
    ("dit.scan_unroll", 0, r"config\.dit\.scan_unroll: 0 must be a positive integer"),
    ("vae.temporal_downsample", (True, False, False),
     r"config\.vae\.temporal_layers: False leaves no layer that can halve time"),
    ("mesh.preset", "zero", r"config\.mesh\.preset: 'zero' is not allowed"),
    ("sampling.num_steps", 0, r"config\.sampling\.num_steps: must be in \[1, "),
    ("data.canvas", 20, r"config\.data \(8 frames, 20 px\): canvas must be a positive multiple of 16"),
    ("data.num_frames", 10, r"config\.data \(10 frames, 16 px\): num_frames=10 does not fit canvas=16"),
    ("data.name", "ucf", r"config\.data\.name: 'ucf' is not allowed"),
    ("dit.in_channels", 3, r"config\.dit\.in_channels: 3 must equal vae\.latent_channels=8"),
    ("text.max_length", 24, r"config\.text\.max_length: 24 tokens cannot hold the longest Bouncing Digits caption "
                            r"\(24 bytes \+ eos\); set at least 25"),
    ("dit.absolute_position", "learned", r"config\.dit\.absolute_position: 'learned' is not allowed"),
])
def test_invalid_field_is_named(config, field, value, message):
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config, num_devices=1)


@pytest.mark.parametrize("fields, message", [
    (dict(timestep_spacing="uniform"), r"config\.sampling\.timestep_spacing: 'uniform' is not allowed"),
    (dict(steps_offset=1), r"config\.sampling\.steps_offset: shifts 'leading' timesteps only"),
    (dict(timestep_spacing="leading", steps_offset=40),
     r"config\.sampling\.steps_offset: 40 must be below N // K = 40 \(N = diffusion\.num_train_steps = 1000, "
     r"K = sampling\.num_steps = 25\)"),
    (dict(timestep_spacing="leading", steps_offset=-1), r"config\.sampling\.steps_offset: must be a non-negative"),
    (dict(method="ddpm", set_alpha_to_one=False), r"config\.sampling\.set_alpha_to_one: False is DDIM's"),
    (dict(method="euler_ancestral", timestep_spacing="leading"),
     r"config\.sampling\.timestep_spacing: 'leading' applies to ddpm and ddim"),
])
def test_invalid_timestep_spacing_is_named(config, fields, message):
    config.sampling.update(fields)
    with pytest.raises(ConfigError, match=message):
        validate(config, num_devices=1)


def test_stable_diffusion_spacing_is_valid(config):
    config.sampling.update(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
    validate(config, num_devices=1)


def test_head_dim_must_split_into_three_rope_chunks(config):
    config.dit.width = 40
    with pytest.raises(ConfigError, match=r"config\.dit\.width: head dim 40/4=10 must be divisible by 6"):
        validate(config, num_devices=1)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN is available on a GPU")
def test_unavailable_attention_kernel_is_rejected(config):
    config.dit.attention = "cudnn"
    with pytest.raises(ConfigError, match=r"config\.dit\.attention: 'cudnn' cannot run on this \w+ backend"):
        validate(config, num_devices=1)


def test_frames_must_fit_the_vae_time_downsampling(config):
    config.vae.temporal_layers = True
    config.vae.temporal_downsample = (True, False, False)
    config.data.num_frames = 7
    with pytest.raises(ConfigError, match=r"config\.data\.num_frames: 7 frames .* multiples of 2"):
        validate(config, num_devices=1)


def test_flow_schedule_needs_flow_sampler(config):
    config.diffusion.update(schedule="flow", prediction_type="flow", min_snr_gamma=None, snr_shift=1.0)
    with pytest.raises(ConfigError, match=r"config\.sampling\.method: 'ddim' does not fit schedule 'flow'"):
        validate(config, num_devices=1)
    config.sampling.method = "flow_euler"
    validate(config, num_devices=1)
    config.diffusion.snr_shift = 3.0
    with pytest.raises(ConfigError, match=r"config\.diffusion\.snr_shift: .*1 for the flow schedule"):
        validate(config, num_devices=1)


def test_batch_must_divide_data_parallel_axes(config):
    config.train_dit.batch_size = 6
    with pytest.raises(ConfigError, match=r"config\.train_dit\.batch_size: 6 is not divisible by the data-parallel size 4"):
        validate(config, num_devices=4)


def test_heads_must_divide_tensor_axis(config):
    config.mesh.shape.update(data=1, tensor=8)
    with pytest.raises(ConfigError, match=r"config\.dit\.num_heads: 4 heads are not divisible by the tensor axis"):
        validate(config, num_devices=8)


def test_mesh_shape_must_match_device_count(config):
    config.mesh.shape.update(data=3)
    with pytest.raises(ConfigError, match=r"config\.mesh\.shape .* multiplies to 3, but there are 4 devices"):
        validate(config, num_devices=4)


@pytest.mark.parametrize("name", sorted(os.path.splitext(f)[0] for f in os.listdir(CONFIG_DIR)
                                        if f.endswith(".py") and f != "saved.py"))
def test_every_config_comes_back_whole_from_a_runs_saved_json(name, tmp_path):
    """configs/saved.py rebuilds what scripts/train.py saved: tuples (JSON lists) and placeholders (JSON
    null) included, so a run loads with the config it trained with."""
    config = load_config(name)
    dump_json(str(tmp_path / SAVED_CONFIG), config.to_dict())
    saved = config_from_file(os.path.join(CONFIG_DIR, "saved.py"), str(tmp_path))
    assert saved.to_dict() == config.to_dict()


def test_saved_config_names_a_folder_without_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no config.json in {tmp_path}: not a scripts/train.py"):
        config_from_file(os.path.join(CONFIG_DIR, "saved.py"), str(tmp_path))
    with pytest.raises(ValueError, match=r"--config configs/saved.py:WORKDIR"):
        config_from_file(os.path.join(CONFIG_DIR, "saved.py"))
