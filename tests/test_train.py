"""The whole system on a tiny config: exact resume, train -> sample -> judge, the scripts' CLIs."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from t2v_jax.data.loader import data_source, make_loader
from t2v_jax.eval.evaluate import generate_and_judge
from t2v_jax.pipelines.load import load_pipeline
from t2v_jax.train.checkpoint import SAVED_CONFIG, CheckpointMismatchError
from t2v_jax.train.latent_cache import CACHE_FILE
from t2v_jax.train.run import train
from t2v_jax.train.stages import DiTStage, VAEStage
from t2v_jax.train.trainer import fit, read_metrics, restore_params
from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """Both stages trained for a few steps; shared by the tests that need a checkpoint."""
    config = tiny_config(data_dir)
    workdir = str(tmp_path_factory.mktemp("run"))
    summary = train(config, workdir, progress=False)
    return config, workdir, summary


def test_resume_after_interruption_gives_the_same_losses(trained, tmp_path):
    """Stopping after a checkpoint and starting again continues with the same batches, noise and
    caption dropout: the losses after the restart equal those of an uninterrupted run."""
    config, workdir, _ = trained
    vae_params = restore_params(os.path.join(workdir, "vae"), VAEStage(config), config.train_vae,
                                mesh_cfg=config.mesh)

    def run(workdir, num_steps=None):
        iterator = iter(make_loader(config.data, "train", batch_size=config.train_dit.batch_size, seed=3))
        fit(DiTStage(config, vae_params), config.train_dit, iterator, workdir, mesh_cfg=config.mesh,
            seed=1, num_steps=num_steps, progress=False)
        return [m["loss"] for m in read_metrics(workdir)]

    uninterrupted = run(str(tmp_path / "a"))
    first_part = run(str(tmp_path / "b"), num_steps=3)
    resumed = run(str(tmp_path / "b"))
    assert len(uninterrupted) == 6 and first_part == uninterrupted[:3]
    np.testing.assert_allclose(resumed[3:], uninterrupted[3:], rtol=1e-6)
    # Different data order must show up in the losses, or this test could not fail.
    assert len(set(np.round(uninterrupted, 6))) == len(uninterrupted)


def test_cached_latents_train_exactly_like_encoding_each_step(trained, tmp_path):
    """train_dit.cache_latents changes where the VAE runs, not the objective: the DiT's losses over the
    same batches and random numbers match the uncached run's, and a second start reads the cache."""
    config, workdir, _ = trained
    vae_params = restore_params(os.path.join(workdir, "vae"), VAEStage(config), config.train_vae,
                                mesh_cfg=config.mesh)

    def run(run_dir, cache):
        cached = config.copy_and_resolve_references()
        cached.train_dit.cache_latents = cache
        stage = DiTStage(cached, vae_params)
        source = stage.training_source(data_source(config.data, "train"), run_dir, progress=False)
        iterator = iter(make_loader(config.data, "train", batch_size=config.train_dit.batch_size, seed=3,
                                    source=source))
        fit(stage, cached.train_dit, iterator, run_dir, mesh_cfg=config.mesh, seed=1, progress=False)
        return [m["loss"] for m in read_metrics(run_dir)]

    encoded = run(str(tmp_path / "encoded"), cache=False)
    cached = run(str(tmp_path / "cached"), cache=True)
    np.testing.assert_allclose(cached, encoded, rtol=1e-4)
    cache_file = tmp_path / "cached" / CACHE_FILE
    written = cache_file.stat().st_mtime_ns
    assert run(str(tmp_path / "cached"), cache=True) == cached  # resumed at the last step: nothing new
    assert cache_file.stat().st_mtime_ns == written


def test_train_then_generate_and_judge(trained):
    config, workdir, summary = trained
    assert set(summary) == {"vae", "dit"}
    assert summary["vae"]["step"] == summary["dit"]["step"] == 6
    vae_losses = [m["loss"] for m in read_metrics(os.path.join(workdir, "vae"))]
    assert np.all(np.isfinite(vae_losses))
    pipeline = load_pipeline(config, workdir)
    videos = pipeline.generate(["a red 3 moving left", "a blue 7 moving up"], seed=0)
    assert videos.dtype == np.uint8 and videos.shape == (2, 8, 16, 16, 3)
    again = pipeline.generate(["a red 3 moving left", "a blue 7 moving up"], seed=0)
    np.testing.assert_array_equal(videos, again)
    other_seed = pipeline.generate(["a red 3 moving left", "a blue 7 moving up"], seed=1)
    assert not np.array_equal(videos, other_seed)
    scores, judged = generate_and_judge(pipeline, ["a red 3 moving left"] * 3, batch_size=2, progress=False)
    assert judged.shape == (3, 8, 16, 16, 3)
    assert set(scores) >= {"digit", "colour", "direction", "all", "identity_consistency"}


def test_pipeline_samples_with_the_configured_timestep_spacing(trained):
    """The sampling config's spacing reaches the sampler: Stable Diffusion's settings start from other
    timesteps than "trailing" and give another video from the same noise; naming the defaults changes
    nothing."""
    config, workdir, _ = trained
    prompts = ["a red 3 moving left", "a blue 7 moving up"]

    def generate(**spacing):
        changed = config.copy_and_resolve_references()
        changed.sampling.update(spacing)
        return load_pipeline(changed, workdir).generate(prompts, seed=0, num_steps=4)

    trailing = generate()
    np.testing.assert_array_equal(generate(timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True),
                                  trailing)
    assert not np.array_equal(generate(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False), trailing)


def _with_more_dit_layers(config):
    changed = config.copy_and_resolve_references()
    changed.dit.num_layers = config.dit.num_layers + 1
    return changed


def test_loading_with_other_architecture_flags_names_the_field_in_one_line(trained):
    """Orbax's own error prints the restore spec of every array (thousands of characters), advises padding
    and leaves a failed task per array to be logged at exit; the user needs the array and the flag the run
    was trained with."""
    config, workdir, _ = trained
    with pytest.raises(CheckpointMismatchError) as raised:
        load_pipeline(_with_more_dit_layers(config), workdir)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 1000, message
    assert re.search(r"does not fit the model this config builds: dit/params/\S+ has shape \(1, [\d, ]+\) in the "
                     r"checkpoint, \(2, [\d, ]+\) here", message), message
    assert (f"differs from the run's config.json in dit.num_layers (the run: {config.dit.num_layers}, "
            f"this config: {config.dit.num_layers + 1})") in message
    assert message.endswith(f"--config configs/saved.py:{workdir} loads the config the run was trained with")


def test_resuming_with_other_architecture_flags_keeps_the_run_config(trained, tmp_path):
    """A resume that cannot load names the changed field and leaves the run's saved config as it was,
    so the next load still explains itself."""
    config, workdir, _ = trained
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    with open(os.path.join(copy, SAVED_CONFIG)) as f:
        saved = json.load(f)
    with pytest.raises(CheckpointMismatchError, match=r"dit.num_layers \(the run: 1, this config: 2\)"):
        train(_with_more_dit_layers(config), copy, stages=["dit"], progress=False)
    with open(os.path.join(copy, SAVED_CONFIG)) as f:
        assert json.load(f) == saved


def _write_tiny_config(tmp_path, data_dir):
    path = tmp_path / "tiny_config.py"
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
        "from tiny import tiny_config\n\n"
        f"def get_config():\n    return tiny_config({data_dir!r})\n")
    return str(path)


def test_sample_script_writes_a_grid_from_the_config_the_run_saved(trained, tmp_path):
    """configs/saved.py:WORKDIR loads the tiny run (trained with a dozen fields off the quickstart's) with no
    flags repeated; a flag still sets a field the saved JSON holds as null."""
    _, workdir, _ = trained
    out = str(tmp_path / "grid.mp4")
    saved_config = f"{os.path.join(REPO, 'configs', 'saved.py')}:{workdir}"
    command = [sys.executable, os.path.join(REPO, "scripts", "sample.py"), f"--config={saved_config}",
               "--config.diffusion.min_snr_gamma=5.0", f"--checkpoint={workdir}", f"--out={out}",
               "--prompt=a red 3 moving left", "--prompt=a cyan 7 moving up"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 video(s) of 8 frames at 16x16" in result.stdout and out in result.stdout
    assert os.path.getsize(out) > 0


def test_train_script_rejects_invalid_config_before_compiling(tmp_path, data_dir):
    config_path = _write_tiny_config(tmp_path, data_dir)
    command = [sys.executable, os.path.join(REPO, "scripts", "train.py"), f"--config={config_path}",
               f"--workdir={tmp_path / 'run'}", "--config.dit.num_heads=5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: config.dit.num_heads: 5 heads do not divide dit.width=12"), last_line
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "run" / "vae")
    verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=120)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_sample_script_names_a_missing_checkpoint_in_one_line(tmp_path, data_dir):
    config_path = _write_tiny_config(tmp_path, data_dir)
    missing = tmp_path / "no_such_run"
    command = [sys.executable, os.path.join(REPO, "scripts", "sample.py"), f"--config={config_path}",
               f"--checkpoint={missing}", "--prompt=a red 3 moving left", f"--out={tmp_path / 'a.gif'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: no checkpoint under {missing / 'vae' / 'checkpoints'}"), last_line


def test_prompt_over_the_caption_budget_is_refused(trained):
    config, workdir, _ = trained
    pipeline = load_pipeline(config, workdir)
    with pytest.raises(ValueError, match=r"prompt 1 .* needs 34 tokens with eos, over the caption budget "
                                         r"config.text.max_length=32"):
        pipeline.generate(["a red 3 moving left", "a magenta 7 moving right, quickly"])


def test_reconstruct_and_judge_scores_the_round_trip(data_dir):
    from t2v_jax.eval.evaluate import reconstruct_and_judge

    config = tiny_config(data_dir)
    perfect = reconstruct_and_judge(lambda video: video, config.data, 6, seed=0, batch_size=4, progress=False)
    assert perfect["all"] == 1.0 and perfect["psnr"] == 100.0
    blank = reconstruct_and_judge(lambda video: -np.ones_like(video), config.data, 6, seed=0, batch_size=4,
                                  progress=False)
    assert blank["all"] == blank["identity_consistency"] == 0.0 and blank["psnr"] < 20


def test_eval_script_reconstructs_with_the_trained_vae(trained, tmp_path, data_dir):
    _, workdir, _ = trained
    command = [sys.executable, os.path.join(REPO, "scripts", "eval.py"),
               f"--config={_write_tiny_config(tmp_path, data_dir)}", f"--checkpoint={workdir}", "--reconstruct",
               "--num=4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 4 videos | PSNR" in result.stdout
