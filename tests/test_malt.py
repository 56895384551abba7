"""MALT: the denoiser reads the memory, training carries it across segments (and truncates its gradient as
configured), generation is one scan whose state round-trips through orbax, and bad input fails naming the field."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.checks import ConfigError
from t2v_jax.config import validate
from t2v_jax.models.malt import MALTDiT
from t2v_jax.pipelines.load import generate_story
from t2v_jax.pipelines.syncos import StructuredPrompt
from t2v_jax.systems.malt import MALTStage, load_state, pipeline_from_params, save_state
from t2v_jax.train.stages import VAEStage
from tiny import tiny_malt_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = validate(tiny_malt_config(str(tmp_path_factory.mktemp("data"))), num_devices=1)
    vae_params = nn.unbox(jax.jit(VAEStage(config).init_params)(jax.random.key(0)))
    stage = MALTStage(config, vae_params)
    params = nn.unbox(jax.jit(stage.init_params)(jax.random.key(1)))
    # Training starts from a zero output projection; perturb every weight so that each input shows.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [leaf + 0.1 * jax.random.normal(key, leaf.shape)
                                       for leaf, key in zip(leaves, keys)])
    return config, stage, params, vae_params


def _batch(stage, count=2):
    source = stage.training_source(None, None)
    records = [source[i] for i in range(count)]
    return stage.prepare_batch({"video": np.stack([r["video"] for r in records]).astype(np.float32) / 127.5 - 1,
                                "caption": np.array([r["caption"].decode() for r in records])})


def test_the_denoiser_reads_the_memory_and_the_update_reads_the_segment(setup):
    config, stage, params, _ = setup
    dit = stage.model.dit
    x = jax.random.normal(jax.random.key(3), (2, 8, 4, 4, 8))
    t, mask = jnp.array([100.0, 700.0]), jnp.ones((2, 5), bool)
    context = jax.random.normal(jax.random.key(4), (2, 5, 16))
    memory = dit.apply(params["dit"], 2, method=MALTDiT.initial_memory)
    assert memory.shape == (1, 2, 2, 12)
    updated = dit.apply(params["dit"], x, t, context, mask, memory, method=MALTDiT.update_memory)
    other = dit.apply(params["dit"], -x, t, context, mask, memory, method=MALTDiT.update_memory)
    assert np.abs(updated - memory).max() > 1e-3 and np.abs(updated - other).max() > 1e-3
    before, after = (dit.apply(params["dit"], x, t, context, mask, m) for m in (memory, updated))
    assert np.abs(before - after).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("truncation, reaches_update", [(1, False), (2, True)])
def test_truncation_stops_the_memory_gradient(setup, truncation, reaches_update):
    """With truncation 1 every written memory is cut from the graph, so the memory update learns nothing;
    with 2 the next segment's loss reaches it."""
    config, stage, params, vae_params = setup
    config = config.copy_and_resolve_references()
    config.malt.truncation = truncation
    stage = MALTStage(config, vae_params)
    batch = _batch(stage)
    grads = jax.grad(lambda p: stage.loss_fn(p, batch, jax.random.key(5))[0])(params)
    update_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["dit"]["params"]["memory_update"]))
    init_norm = float(jnp.abs(grads["dit"]["params"]["memory_init"]).sum())
    assert init_norm > 0 and (update_norm > 0) == reaches_update


def test_generation_continues_from_a_saved_state(setup, tmp_path):
    """Two segments, the state through orbax, two more: the four segments of one call, bit for bit."""
    config, _, params, vae_params = setup
    pipeline = pipeline_from_params(config, params, vae_params)
    captions = [["a red 3 moving left", "a red 3 moving up", "a red 3 moving right", "a red 3 moving down"],
                ["a blue 7 moving up"] * 4]
    whole, state = pipeline.generate_long(captions, seed=7)
    assert whole.dtype == np.uint8 and whole.shape == (2, 32, 16, 16, 3) and state["next_segment"] == 4
    first, middle = pipeline.generate_long([c[:2] for c in captions], seed=7)
    save_state(str(tmp_path / "state"), middle)
    second, end = pipeline.generate_long([c[2:] for c in captions], state=load_state(str(tmp_path / "state")))
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), whole)
    np.testing.assert_array_equal(np.asarray(end["memory"]), np.asarray(state["memory"]))
    # The memory is what carries the video: restarting from the first memory changes the later segments.
    fresh, _ = pipeline.generate_long([c[2:] for c in captions], state=dict(pipeline.initial_state(2, 7),
                                                                           next_segment=2))
    assert np.abs(fresh.astype(int) - second).max() > 0


def test_bad_generation_input_names_the_argument(setup):
    config, _, params, vae_params = setup
    pipeline = pipeline_from_params(config, params, vae_params)
    with pytest.raises(ValueError, match="num_segments must be >= 1"):
        pipeline.generate_long([[]])
    with pytest.raises(ValueError, match="one caption per segment"):
        pipeline.generate_long([["a red 3 moving left"] * 2, ["a red 3 moving up"] * 3])
    story = StructuredPrompt("a red 3", (("moving left", 0, 2), ("moving up", 2, 4)))
    with pytest.raises(ValueError, match="generate_long"):
        pipeline.generate_multi_prompt(story, 4)


@pytest.mark.parametrize("field, value, message", [
    ("dit.memory_tokens", 3, "tensor axis of 2"),
    ("malt.train_segments", 0, ">= 1"),
    ("malt.memory_noise_level", 1000, "[0, 1000)"),
])
def test_bad_config_fails_naming_the_field(tmp_path, field, value, message):
    config = tiny_malt_config(str(tmp_path))
    config.mesh.shape.data, config.mesh.shape.tensor = 1, 2
    config.mesh.preset = "tp"
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ConfigError) as error:
        validate(config, num_devices=2)
    assert field in str(error.value) and message in str(error.value)


@pytest.mark.slow
def test_generation_memory_does_not_grow_with_the_number_of_segments(setup):
    """XLA's buffer assignment of the compiled generation: temporaries flat from 2 to 16 segments (the memory
    is the scan's only carry), only the returned video grows."""
    from t2v_jax.parallel.report import memory_per_device

    config, _, params, vae_params = setup
    pipeline = pipeline_from_params(config, params, vae_params)
    sizes = {}
    for segments in (2, 16):
        args, kwargs, _ = pipeline.generation_call([["a red 3 moving left"] * segments])
        sizes[segments] = memory_per_device(pipeline.compile(*args, **kwargs))
    assert sizes[16]["temporaries"] <= 1.01 * sizes[2]["temporaries"]
    assert sizes[16]["outputs"] > 4 * sizes[2]["outputs"]  # the video, 8x longer, next to a memory of 96 bytes


def test_a_story_is_one_video_of_the_segments_captions(setup):
    """`generate_story` (scripts/sample.py --story) gives MALT each segment's whole caption, global + local."""
    config, _, params, vae_params = setup
    pipeline = pipeline_from_params(config, params, vae_params)
    story = generate_story(pipeline, ["moving left", "moving up"], global_prompt="a red 3", seed=5)
    whole, _ = pipeline.generate_long([["a red 3 moving left", "a red 3 moving up"]], seed=5)
    np.testing.assert_array_equal(story, whole[0])
