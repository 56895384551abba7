"""SynCoS wired into the pipelines, on tiny random weights: the latent system's `sample_long_latents` is
`syncos_sample` over the model's denoiser with each chunk's prompt, and with one chunk it is the pipeline's
own DDIM; Allegro's template reaches every chunk; LaVie's base model samples through the cascade pipeline;
bad input is named before anything is encoded or compiled. (8 devices under `dp`: test_pipeline_sharding.py.)

Parameters are drawn at an init's scales from the init's shapes (`multidevice_checks.random_like`), which
skips compiling the inits and keeps the zero-initialised output layers from hiding anything."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multidevice_checks import random_like
from t2v_jax.models import text_encoder
from t2v_jax.models.text_encoder import ByteTokenizer
from t2v_jax.models.text_to_video import TextToVideoModel, latent_shape
from t2v_jax.parallel.rules import unbox
from t2v_jax.pipelines.allegro import AllegroPipeline, preprocess_prompt
from t2v_jax.pipelines.lavie import LaVieCascadePipeline
from t2v_jax.pipelines.load import generate_story
from t2v_jax.pipelines.syncos import StructuredPrompt, syncos_config, syncos_sample
from t2v_jax.pipelines.text_to_video import TextToVideoPipeline
from t2v_jax.systems.allegro import allegro_config
from t2v_jax.systems.lavie import base_model, interpolation_model
from t2v_jax.train.stages import VAEStage
from tiny import tiny_config, tiny_lavie_config

STORIES = (StructuredPrompt("a red 3", (("moving left", 0, 6), ("moving up", 6, 16))),
           StructuredPrompt("a blue 7", (("moving down", 0, 4), ("moving right", 4, 16))))
# Chunks [0, 8), [4, 12), [8, 16) of 16 latent frames: the local prompt covering most of each (a tie: the earlier).
STORY_TEXTS = (("a red 3 moving left", "a red 3 moving up", "a red 3 moving up"),
               ("a blue 7 moving down", "a blue 7 moving right", "a blue 7 moving right"))


def _random_params(init_fn, seed):
    return random_like(unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0))), np.random.default_rng(seed))


def _latent_parts(config, model):
    params = _random_params(lambda rng: model.init_params(rng, latent_shape(config)), 0)
    return params, _random_params(VAEStage(config).init_params, 1)


@pytest.fixture(scope="module")
def latent_pipeline():
    config = tiny_config("unused")  # v prediction on the cosine schedule; 8 latent frames of 4 x 4
    model = TextToVideoModel(config)
    params, vae_params = _latent_parts(config, model)
    return TextToVideoPipeline(config, tokenizer=model.tokenizer, text_encoder_params=params["text_encoder"],
                               dit_params=params["dit"], vae_params=vae_params)


def _normal(seed, shape):
    """Test noise from numpy: jax.random.normal compiles for every new shape, seconds on this CPU."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _close(got, want):
    """Equal to float32 rounding, which eps prediction at t = 999 scales up by 1 / sqrt(alphas_cumprod) ~ 150."""
    want = np.asarray(want)
    assert want.std() > 0.5
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _direct(pipeline, texts_bn, negative, noise_bthwc, rng, guidance_scale, syncos):
    """`syncos_sample` called by hand on the model's denoiser: the given (already templated) texts of each
    chunk of each video, encoded as a sorted list with the negative last."""
    distinct = sorted({text for texts in texts_bn for text in texts})
    embeddings, mask = pipeline.encode_prompts(distinct + [negative])
    index_nb = np.array([[distinct.index(text) for text in texts] for texts in texts_bn]).T
    cond = (embeddings[index_nb], mask[index_nb])
    uncond = tuple(jnp.broadcast_to(leaf[-1], (len(texts_bn), *leaf.shape[1:])) for leaf in (embeddings, mask))
    model = pipeline.model
    run = jax.jit(functools.partial(
        syncos_sample, lambda x, t, c: model.denoise({"dit": pipeline.dit_params}, x, t, c), config=syncos,
        prediction_type=pipeline.config.diffusion.prediction_type))
    return run(model.schedule, noise_bthwc, cond, uncond, rng=rng, guidance_scale=guidance_scale)


def test_sample_long_latents_is_syncos_over_the_models_denoiser(latent_pipeline):
    """SynCoS mode (co-denoising, CSD while t > t_min, the synchronised step), two videos of three chunks: each
    chunk's own prompt, the negative prompt, the guidance scale and the seed's baseline noise. The per-frame
    VAE then decodes the twice-native latents in time tiles."""
    syncos = syncos_config(chunk_frames=8, stride=4, num_steps=3, t_min=400, csd_iterations=1)
    noise = _normal(3, (2, 16, 4, 4, 8))
    got = latent_pipeline.sample_long_latents(STORIES, 16, syncos=syncos, seed=3, guidance_scale=2.5,
                                              negative_prompt="blurry", initial_noise=noise)
    sample_rng = jax.random.split(jax.random.PRNGKey(3))[1]
    _close(got, _direct(latent_pipeline, STORY_TEXTS, "blurry", noise, sample_rng, 2.5, syncos))
    video = latent_pipeline.decode(got)
    assert video.shape == (2, 16, 16, 16, 3) and video.dtype == np.uint8 and video.std() > 1


def test_one_chunk_co_denoising_is_the_pipelines_ddim(latent_pipeline):
    """With the default SynCoS settings (the model's steps, guidance and spacing), a video of one chunk."""
    syncos = latent_pipeline.syncos_settings()
    syncos.mode = "co_denoise"
    noise = _normal(5, (1, 8, 4, 4, 8))
    got = latent_pipeline.sample_long_latents(StructuredPrompt("a cyan 5", (("moving right", 0, 8),)), 8,
                                              syncos=syncos, initial_noise=noise)
    _close(got, latent_pipeline.sample_latents(["a cyan 5 moving right"], method="ddim", eta=0.0,
                                               initial_noise=noise))


def _tiny_allegro():
    """allegro_config with a 1-layer DiT, a 1-layer T5 v1.1 over bytes and a (x2 time, x2 space) VAE: 4 frames
    of 8 x 8 px -> 2 latent frames of 4 x 4. Eps prediction, linear betas, Allegro's template and negative."""
    config = allegro_config("40x360p")
    config.data.update(num_frames=4, canvas=8, width=8)
    config.dit.update(num_layers=1, width=12, num_heads=2, caption_channels=16, param_dtype="float32",
                      dtype="float32", attention="xla")
    config.vae.update(block_out_channels=(4, 8), layers_per_block=1, temporal_downsample=(True, False),
                      spatial_downsample=(True, False), temporal_upsample=(False, True), norm_num_groups=2,
                      tile_frames=4, tile_size=8, tile_overlap_frames=2, tile_overlap=(4, 4))
    config.text.encoder = text_encoder.t5_v1_1_xxl_config()
    config.text.encoder.update(vocab_size=ByteTokenizer.vocab_size, width=16, num_layers=1, num_heads=2,
                               head_dim=8, mlp_dim=32, dropout=0.0, dtype="float32", param_dtype="float32")
    config.text.max_length = 256  # the template around a Bouncing Digits caption is 232 bytes
    config.sampling.update(num_steps=3, guidance_scale=3.0)
    return config


def test_allegro_applies_its_template_to_every_chunk():
    """Co-denoising over Allegro's pipeline against `syncos_sample` on the templated chunk texts and Allegro's
    negative prompt."""
    config = _tiny_allegro()
    model = TextToVideoModel(config)
    params, vae_params = _latent_parts(config, model)
    pipeline = AllegroPipeline(config, tokenizer=ByteTokenizer(config.text.max_length),
                               text_encoder_params=params["text_encoder"], dit_params=params["dit"],
                               vae_params=vae_params)
    story = StructuredPrompt("a green 4", (("moving up", 0, 3), ("moving left", 3, 6)))
    syncos = syncos_config(mode="co_denoise", chunk_frames=2, stride=1, num_steps=3, guidance_scale=3.0)
    noise = _normal(7, (1, 6, 4, 4, 4))
    got = pipeline.sample_long_latents(story, 6, syncos=syncos, initial_noise=noise)
    template = config.sampling.prompt_template
    texts = [[preprocess_prompt(f"a green 4 moving {move}", template) for move in ("up",) * 3 + ("left",) * 2]]
    _close(got, _direct(pipeline, texts, preprocess_prompt(config.sampling.negative_prompt), noise,
                        jax.random.PRNGKey(0), 3.0, syncos))


def test_lavie_base_samples_long_videos_through_the_cascade_pipeline():
    """LaVie's cascade pipeline samples with its base UNet (v prediction on the cosine schedule here), in one
    program: `independent` chunks end to end (stride = chunk) are each the base model's sampling of the
    chunk's crop of the noise with the chunk's prompt, so a story "left then down" is, half by half, the story
    "left, left" and the story "down, down" on the same noise crops."""
    config = tiny_lavie_config("unused")
    config.unet.update(block_out_channels=(8,), attention_levels=(True,))  # one level and the mid block
    model = base_model(config)
    params, vae_params = _latent_parts(config, model)
    pipeline = LaVieCascadePipeline(
        config, tokenizer=ByteTokenizer(config.text.max_length), base_params=params, interpolation_params=None,
        vae_params=vae_params, base_model=model, interpolation_model=interpolation_model(config),
        keyframe_condition=None)
    syncos = pipeline.syncos_settings()
    syncos.update(mode="independent", stride=8)

    def story(first, second):
        return StructuredPrompt("a white 9", ((f"moving {first}", 0, 8), (f"moving {second}", 8, 16)))

    left, down, other = _normal(11, (3, 8, 4, 4, 8))
    noise = np.stack([np.concatenate(halves) for halves in ((left, down), (left, other), (other, down))])
    got = np.asarray(pipeline.sample_long_latents([story("left", "down"), story("left", "left"),
                                                   story("down", "down")], 16, syncos=syncos, initial_noise=noise))
    _close(got[0, :8], got[1, :8])
    _close(got[0, 8:], got[2, 8:])
    assert np.abs(got[1, 8:] - got[2, 8:]).max() > 0.1  # the prompt of the second half matters


@pytest.mark.parametrize("call, field", [
    (dict(structured_prompts=[STORIES[0], StructuredPrompt("a red 3", (("moving left", 0, 6),))]),
     r"structured_prompts\[1\]: StructuredPrompt\.local\[0\]\.end: 6 leaves latent frames \[6, 16\)"),
    (dict(num_latent_frames=6), r"syncos\.chunk_frames: 8 is longer than the video's 6 latent frames"),
    (dict(syncos=syncos_config(chunk_frames=8, stride=9)), r"syncos\.stride: 9 is larger than the chunk"),
    (dict(syncos=syncos_config(chunk_frames=4, stride=2)), r"syncos\.chunk_frames: 4 must be the model's native 8"),
    (dict(syncos=syncos_config(mode="sliding")), r"syncos\.mode"),
    (dict(num_latent_frames=16.0), r"num_latent_frames: must be a positive integer"),
    (dict(initial_noise=np.zeros((2, 8, 4, 4, 8))), r"initial_noise has shape \(2, 8, 4, 4, 8\); expected "
                                                    r"\(2, 16, 4, 4, 8\)"),
])
def test_bad_input_is_named_before_anything_runs(latent_pipeline, monkeypatch, call, field):
    def run(*args, **kwargs):
        raise AssertionError(f"reached Pipeline.run{args[:1]} (encoding or compiling) with bad input")

    monkeypatch.setattr(latent_pipeline, "run", run)
    kwargs = dict(dict(structured_prompts=STORIES, num_latent_frames=16), **call)
    with pytest.raises(ValueError, match=field):
        latent_pipeline.sample_long_latents(kwargs.pop("structured_prompts"), kwargs.pop("num_latent_frames"), **kwargs)


def test_a_story_is_syncos_over_the_global_prompt_and_one_local_prompt_per_segment(latent_pipeline):
    """`generate_story` (scripts/sample.py --story): segment i of the native 8 latent frames is [8i, 8i + 8)."""
    got = generate_story(latent_pipeline, ["moving left", "moving up"], global_prompt="a red 3", seed=4)
    story = StructuredPrompt("a red 3", (("moving left", 0, 8), ("moving up", 8, 16)))
    np.testing.assert_array_equal(got, latent_pipeline.generate_multi_prompt([story], 16, seed=4)[0])
    with pytest.raises(ValueError, match="samples no multi-prompt video"):
        generate_story(object(), ["moving left"], global_prompt="a red 3")
