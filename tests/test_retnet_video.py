"""FlashVideo's decoder: the training pass, the prefill + recurrent decoding and the sampler agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.layers.attention import Attention, KVCache, init_kv_cache
from t2v_jax.models import retnet_video as rv

VOCAB = rv.Vocabulary(codebook_size=40, max_frames=9)


def _decoder(mixer, *, chunk_size=4, **overrides):
    cfg = rv.default_config()
    cfg.update(dict(width=32, num_layers=2, num_heads=4, mixer=mixer, chunk_size=chunk_size), **overrides)
    return rv.VideoDecoder(cfg, VOCAB)


def _setup(mixer, length=13, batch=2, seed=0):
    decoder = _decoder(mixer)
    tokens_bl = jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB.size)
    params = decoder.init(jax.random.key(1), tokens_bl)
    return decoder, params, tokens_bl


@pytest.mark.parametrize("mixer", rv.MIXERS)
@pytest.mark.parametrize("prefill_mode", rv.PREFILL_MODES)
@pytest.mark.parametrize("prompt_length", [1, 5])
def test_prefill_then_recurrent_equals_training_pass(mixer, prefill_mode, prompt_length):
    """Logits of every position are the same whether the sequence runs in one training pass or as
    a prefill (chunk size 4, so 5 leaves a partial chunk) followed by one-token decoding steps."""
    decoder, params, tokens_bl = _setup(mixer)
    length = tokens_bl.shape[1]
    full_blc, _ = decoder.apply(params, tokens_bl)
    last_bc, state = rv.prefill(decoder, params, tokens_bl[:, :prompt_length], length, prefill_mode)
    outputs = [last_bc]
    step = jax.jit(lambda token_b1, state: decoder.apply(params, token_b1, state, mode="recurrent"))
    for i in range(prompt_length, length):
        logits_b1c, state = step(tokens_bl[:, i:i + 1], state)
        outputs.append(logits_b1c[:, 0])
    np.testing.assert_allclose(np.stack(outputs, 1), full_blc[:, prompt_length - 1:], atol=1e-5, rtol=1e-5)


def _greedy_reference(decoder, params, prompt_bp, layout_bn, guidance_scale=None, uncond_bp=None):
    """Greedy continuation by repeated full training passes: no state, no scan. The sequences are
    zero-padded to their final length (one compile); causality keeps the padding out of the logits
    that are read."""
    prompt_length, steps = prompt_bp.shape[1], layout_bn.shape[1]
    pad = jnp.zeros((prompt_bp.shape[0], steps), jnp.int32)
    full = jax.jit(lambda tokens: decoder.apply(params, tokens)[0])
    tokens = jnp.concatenate([prompt_bp, pad], 1)
    uncond = None if uncond_bp is None else jnp.concatenate([uncond_bp, pad], 1)
    for n in range(steps):
        position = prompt_length + n
        logits_bc = full(tokens)[:, position - 1]
        if guidance_scale is not None:
            uncond_bc = full(uncond)[:, position - 1]
            logits_bc = uncond_bc + guidance_scale * (logits_bc - uncond_bc)
        token_b = jnp.where(layout_bn[:, n] == rv.FORCE_NONE, jnp.argmax(logits_bc, -1), layout_bn[:, n])
        tokens = tokens.at[:, position].set(token_b)
        if uncond is not None:
            uncond = uncond.at[:, position].set(token_b)
    return tokens[:, prompt_length:]


@pytest.mark.parametrize("mixer", rv.MIXERS)
def test_greedy_generation_matches_full_passes(mixer):
    """The compiled sampler (prefill + scan, temperature 0) picks what repeated training passes pick,
    with serial tokens forced where the layout says; top_k=1 at temperature 1 is greedy too."""
    decoder, params, tokens_bl = _setup(mixer)
    prompt_bp = tokens_bl[:, :6]
    layout_bn = rv.block_layout(jnp.array([[0, 4], [0, 4]]), 3, VOCAB)

    def generate(rng, **sampling):
        return jax.jit(lambda p, r: rv.generate_tokens(decoder, p, prompt_bp, layout_bn, r, **sampling))(params, rng)

    greedy = generate(jax.random.key(0), temperature=0.0)
    expected = _greedy_reference(decoder, params, prompt_bp, layout_bn)
    np.testing.assert_array_equal(greedy, expected)
    assert (greedy[:, [0, 4]] == VOCAB.serial(jnp.array([0, 4]))).all()
    assert (greedy[:, [1, 2, 3, 5, 6, 7]] < VOCAB.codebook_size).all()
    top1 = generate(jax.random.key(5), temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, expected)


@pytest.mark.parametrize("mixer", rv.MIXERS)
def test_guided_generation_matches_full_passes(mixer):
    decoder, params, tokens_bl = _setup(mixer)
    prompt_bp, uncond_bp = tokens_bl[:, :6], jnp.zeros_like(tokens_bl[:, :6])
    layout_bn = rv.block_layout(jnp.array([[2], [3]]), 4, VOCAB)
    out = rv.generate_tokens(decoder, params, prompt_bp, layout_bn, jax.random.key(0), temperature=0.0,
                             guidance_scale=3.0, uncond_prompt_bp=uncond_bp)
    expected = _greedy_reference(decoder, params, prompt_bp, layout_bn, 3.0, uncond_bp)
    np.testing.assert_array_equal(out, expected)


def test_sampling_respects_top_k_and_temperature():
    logits_bc = jnp.tile(jnp.arange(10.0)[None], (2000, 1))
    top3 = rv.sample_logits(jax.random.key(0), logits_bc, temperature=1.0, top_k=3)
    assert set(np.unique(top3)) == {7, 8, 9}
    hot = rv.sample_logits(jax.random.key(1), logits_bc, temperature=100.0, top_k=0)
    assert len(np.unique(hot)) == 10  # near-uniform at a high temperature
    np.testing.assert_array_equal(rv.sample_logits(None, logits_bc, temperature=0.0, top_k=0), 9)


def test_targets_skip_prompt_and_serial_tokens():
    text_bt = VOCAB.text(jnp.array([[5, 6, 1]]))
    blocks = rv.frame_blocks(jnp.array([[[7, 8], [9, 10]]]), jnp.array([[0, 4]]), VOCAB)
    tokens_bl = jnp.concatenate([text_bt, blocks], 1)  # text(3) s0 7 8 s4 9 10
    targets_bl, mask_bl = rv.code_targets(tokens_bl, 3, VOCAB)
    np.testing.assert_array_equal(mask_bl[0], [False, False, False, True, True, False, True, True])
    np.testing.assert_array_equal(targets_bl[0][np.asarray(mask_bl[0])], [7, 8, 9, 10])
    loss, accuracy = rv.next_token_loss(jnp.zeros((1, 8, VOCAB.codebook_size)), targets_bl, mask_bl)
    np.testing.assert_allclose(loss, np.log(VOCAB.codebook_size), rtol=1e-6)


def test_interpolation_prompt_layout():
    text_bt = VOCAB.text(jnp.array([[5, 1], [6, 1]]))
    prompt = rv.interpolation_prompt(text_bt, jnp.array([[1, 2], [3, 4]]), jnp.array([[5, 6], [7, 8]]),
                                     jnp.array([0, 4]), 4, VOCAB)
    s = VOCAB.serial
    np.testing.assert_array_equal(prompt[1], [*text_bt[1], s(4), 3, 4, s(8), 7, 8])
    np.testing.assert_array_equal(rv.gap_frames(jnp.array([0, 4]), 4), [[1, 2, 3], [5, 6, 7]])


def test_keyframe_stride_errors_name_the_limit():
    np.testing.assert_array_equal(rv.keyframe_numbers(9, 4), [0, 4, 8])
    with pytest.raises(ValueError, match="multiple of the keyframe stride"):
        rv.keyframe_numbers(8, 4)


def test_kv_cache_decoding_equals_a_causal_pass():
    """A causal prefill of 3 tokens, then one-token steps over a 9-slot static cache, give what one
    causal pass over all 7 tokens gives. Random inputs, so that every mask gives a different output
    (the causal pass differs from a bidirectional one); and the cache is tried both empty and with
    garbage in every slot, so that the decode step must mask unwritten slots by position, not rely on
    them holding zeros."""
    batch, length, prompt, slots, heads, head_dim, width = 2, 7, 3, 9, 2, 4, 8
    attend = Attention(num_heads=heads, head_dim=head_dim, causal=True)
    x_bld = jax.random.normal(jax.random.key(0), (batch, length, width))
    params = attend.init(jax.random.key(1), x_bld)
    want_bld = attend.apply(params, x_bld)
    bidirectional_bld = Attention(num_heads=heads, head_dim=head_dim).apply(params, x_bld)
    assert (np.abs(want_bld - bidirectional_bld).max(axis=-1)[:, :-1] > 1e-3).all()
    garbage_k, garbage_v = jax.random.normal(jax.random.key(3), (2, batch, slots, heads, head_dim))
    step = jax.jit(lambda x_b1d, cache: attend.apply(params, x_b1d, cache=cache))
    for cache in (init_kv_cache(batch, slots, heads, head_dim),
                  KVCache(garbage_k, garbage_v, jnp.zeros((), jnp.int32))):
        out_bld, cache = attend.apply(params, x_bld[:, :prompt], cache=cache)
        assert int(cache.pos) == prompt
        outputs = [out_bld]
        for i in range(prompt, length):
            out_b1d, cache = step(x_bld[:, i:i + 1], cache)
            outputs.append(out_b1d)
        assert int(cache.pos) == length
        np.testing.assert_allclose(np.concatenate(outputs, 1), want_bld, atol=1e-5, rtol=1e-5)


def test_kv_cache_rules():
    attend = Attention(num_heads=2, head_dim=4, causal=True, use_bias=False)
    x_bld = jax.random.normal(jax.random.key(0), (1, 3, 8))
    params = attend.init(jax.random.key(0), x_bld)
    cache = init_kv_cache(1, 5, 2, 4)
    with pytest.raises(ValueError, match="causal self-attention only"):
        attend.apply(params, x_bld, context_bsd=x_bld, cache=cache)
    decoder, params, tokens_bl = _setup("attention")
    with pytest.raises(ValueError, match="one token per call"):
        decoder.apply(params, tokens_bl, None, mode="recurrent")
