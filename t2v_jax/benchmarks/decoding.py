"""Autoregressive decoding speed: a RetNet decoder's recurrent form against its KV-cache attention twin.

The config's keyframe decoder with retention (recurrent form, a fixed-size state) against the same
decoder with softmax attention and a KV cache (same width, depth, heads, feed-forward and tokens;
both a scanned decoding loop in one jit). At each total length a prompt of length - decode_steps
tokens is prefilled, then the last decode_steps tokens are sampled and timed: per-token latency,
tokens/s, and the decoding program's memory (arguments incl. the state or cache, plus temporaries)
from XLA's memory analysis.
"""

import jax
import jax.numpy as jnp

from t2v_jax.models import fsq_tokenizer, retnet_video
from t2v_jax.parallel.report import median_seconds, memory_per_device, shard_bytes
from t2v_jax.train.trainer import make_rng


def _decoding(config, mixer: str, length: int, steps: int, batch: int, repeats: int) -> dict:
    """Prefill length - steps random codes, then time a scan of `steps` sampled recurrent steps."""
    model_cfg = config.keyframes_model.copy_and_resolve_references()
    model_cfg.mixer = mixer
    vocab = retnet_video.Vocabulary(fsq_tokenizer.codebook_size(config.tokenizer), config.data.num_frames)
    decoder = retnet_video.VideoDecoder(model_cfg, vocab)
    # The prefill is not what is compared; the chunked kernel keeps a 16k-token causal pass in memory.
    prefill_cfg = model_cfg.copy_and_resolve_references()
    prefill_cfg.attention = "chunked"
    prefill_decoder = retnet_video.VideoDecoder(prefill_cfg, vocab)
    rng = make_rng(0)
    prompt_bp = jax.random.randint(rng, (batch, length - steps), 0, vocab.codebook_size)
    params = decoder.init(rng, prompt_bp[:, :8])
    prefill_fn = jax.jit(lambda p, x: retnet_video.prefill(prefill_decoder, p, x, length, "chunkwise"))
    prefill_s = median_seconds(lambda: prefill_fn(params, prompt_bp), 1)
    last_logits_bc, state = prefill_fn(params, prompt_bp)
    layout_bn = jnp.full((batch, steps), retnet_video.FORCE_NONE, jnp.int32)
    decode_fn = jax.jit(lambda p, s, logits, r: retnet_video.decode(decoder, p, s, logits, layout_bn, r))
    compiled = decode_fn.lower(params, state, last_logits_bc, rng).compile()
    memory = memory_per_device(compiled, {"params": params, "state": state})
    seconds = median_seconds(lambda: compiled(params, state, last_logits_bc, rng), repeats)
    return dict(ms_per_token=1e3 * seconds / steps, tokens_per_sec=batch * steps / seconds,
                prefill_seconds=prefill_s, state_bytes=shard_bytes(state), decode_memory_bytes=memory["total"])


def decoding_benchmark(config, options) -> dict:
    """Both mixers at every length in `options.lengths`; prints one line per length."""
    lengths = [int(n) for n in options.lengths]
    steps, batch = options.decode_steps, options.decode_batch
    if min(lengths) <= steps:
        raise ValueError(f"every --lengths value must exceed --decode_steps={steps}")
    rows = []
    for length in lengths:
        row = dict(length=length)
        for mixer in retnet_video.MIXERS:
            row[mixer] = _decoding(config, mixer, length, steps, batch, options.repeats)
        row["speedup_retention_vs_kv_cache"] = row["attention"]["ms_per_token"] / row["retention"]["ms_per_token"]
        rows.append(row)
        r, a = row["retention"], row["attention"]
        print(f"length {length:>6}: retention {r['ms_per_token']:.3f} ms/token ({r['tokens_per_sec']:.0f} tok/s, "
              f"decode memory {r['decode_memory_bytes'] / 2**20:.1f} MiB) | KV-cache attention "
              f"{a['ms_per_token']:.3f} ms/token ({a['tokens_per_sec']:.0f} tok/s, "
              f"{a['decode_memory_bytes'] / 2**20:.1f} MiB) | x{row['speedup_retention_vs_kv_cache']:.2f}",
              flush=True)
    return dict(decoding=dict(decode_steps=steps, decode_batch=batch, model=config.keyframes_model.to_dict(),
                              rows=rows))
