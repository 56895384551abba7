"""Times one DiT train step and one full sampling run (FlashVideo: decoding speed); writes JSON.

  python scripts/benchmark.py --config configs/quickstart.py --out benchmark.json
  python scripts/benchmark.py --config configs/allegro_88x720p.py --config.train_dit.batch_size=1 ...
  python scripts/benchmark.py --config configs/allegro_88x720p.py --vs_diffusers --out allegro.json

Each figure comes with a baseline measured in the same run:
- train step: the configured remat policy against full rematerialisation ("full"), the policy a
  memory-bound run falls back to;
- sampling: the whole sampler as one jax.lax.scan in one jit (what the pipelines do) against a
  Python loop that dispatches one jitted denoising step at a time (diffusers' pattern).
- --vs_diffusers: one denoising step of the DiT (classifier-free guidance batch of 2, the text at its
  full length) against diffusers' AllegroTransformer3DModel of the same size, same weights and
  dtype, on the same device: seconds per step and peak device memory of each.
TFLOP/s counts model FLOPs (t2v_jax/parallel/flops.py); MFU is printed only where the device's
peak is known.

  python scripts/benchmark.py --config configs/flashvideo.py --out flashvideo.json

A FlashVideo config times autoregressive decoding instead: its keyframe decoder with retention
(recurrent form, a fixed-size state) against the same decoder with softmax attention and a KV cache
(same width, depth, heads, feed-forward and tokens; both a scanned decoding loop in one jit). At each
total length in --lengths a prompt of length - decode_steps tokens is prefilled, then the last
--decode_steps tokens are sampled and timed: per-token latency, tokens/s, and the decoding program's
memory (arguments incl. the state or cache, plus temporaries) from XLA's memory analysis.
"""

import datetime
import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from t2v_jax.cli import quiet_library_logs
from t2v_jax.parallel.distributed import initialize as initialize_distributed
from t2v_jax.config import dit_token_grid, latent_shape, system, validate
from t2v_jax.diffusion import samplers
from t2v_jax.models import retnet_video, vq
from t2v_jax.parallel import flops
from t2v_jax.parallel.programs import denoising_step, latent_loss_fn
from t2v_jax.parallel.report import median_seconds, memory_per_device, shard_bytes
from t2v_jax.parallel.rules import unbox
from t2v_jax.train.stages import DiTStage
from t2v_jax.train.trainer import TrainState, make_optimizer, make_rng, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=False)
_OUT = flags.DEFINE_string("out", "benchmark.json", "Where the JSON goes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions after one warm-up.")
_SKIP_BASELINES = flags.DEFINE_bool("skip_baselines", False, "Time only our configuration.")
_VS_DIFFUSERS = flags.DEFINE_bool("vs_diffusers", False, "Time one DiT denoising step against diffusers' "
                                  "AllegroTransformer3DModel (needs the [ref] extra) instead of train/sampling.")
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024", "4096", "16384"], "FlashVideo: total sequence lengths.")
_DECODE_STEPS = flags.DEFINE_integer("decode_steps", 128, "FlashVideo: tokens decoded (and timed) at the end of "
                                     "each length.")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", 1, "FlashVideo: sequences decoded at once.")
flags.mark_flags_as_required(["config"])


def _decoding(config, mixer: str, length: int, steps: int, batch: int, repeats: int) -> dict:
    """Prefill length - steps random codes, then time a scan of `steps` sampled recurrent steps."""
    model_cfg = config.keyframes_model.copy_and_resolve_references()
    model_cfg.mixer = mixer
    vocab = retnet_video.Vocabulary(vq.codebook_size(config.vq), config.data.num_frames)
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


def _decoding_benchmark(config) -> dict:
    lengths = [int(n) for n in _LENGTHS.value]
    steps, batch = _DECODE_STEPS.value, _DECODE_BATCH.value
    if min(lengths) <= steps:
        raise app.UsageError(f"every --lengths value must exceed --decode_steps={steps}")
    rows = []
    for length in lengths:
        row = dict(length=length)
        for mixer in retnet_video.MIXERS:
            row[mixer] = _decoding(config, mixer, length, steps, batch, _REPEATS.value)
        row["speedup_retention_vs_kv_cache"] = row["attention"]["ms_per_token"] / row["retention"]["ms_per_token"]
        rows.append(row)
        r, a = row["retention"], row["attention"]
        print(f"length {length:>6}: retention {r['ms_per_token']:.3f} ms/token ({r['tokens_per_sec']:.0f} tok/s, "
              f"decode memory {r['decode_memory_bytes'] / 2**20:.1f} MiB) | KV-cache attention "
              f"{a['ms_per_token']:.3f} ms/token ({a['tokens_per_sec']:.0f} tok/s, "
              f"{a['decode_memory_bytes'] / 2**20:.1f} MiB) | x{row['speedup_retention_vs_kv_cache']:.2f}",
              flush=True)
    return dict(decode_steps=steps, decode_batch=batch, model=config.keyframes_model.to_dict(), rows=rows)


def _train_step_seconds(config, remat_policy, repeats):
    config = config.copy_and_resolve_references()
    config.dit.remat_policy = remat_policy
    stage = DiTStage(config, vae_params=None)
    batch = config.train_dit.batch_size
    rng = make_rng(0)
    latents = jax.random.normal(rng, (batch, *latent_shape(config)))
    ids, mask = stage.model.tokenizer(["a red 3 moving left"] * batch)
    optimizer = make_optimizer(config.train_dit)
    params = unbox(stage.init_params(rng))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                       opt_state=optimizer.init(params), rng=jax.random.key_data(rng))
    step = jax.jit(make_train_step(latent_loss_fn(stage), optimizer, config.train_dit.ema_decay))
    batch_arrays = {"latents": latents, "ids": jnp.asarray(ids), "mask": jnp.asarray(mask)}
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch_arrays)
        return metrics["loss"]

    return median_seconds(run, repeats)


def _sampling_seconds(config, repeats, *, scanned: bool):
    stage = DiTStage(config, vae_params=None)
    model = stage.model
    batch = config.train_dit.batch_size
    rng = make_rng(0)
    params = unbox(stage.init_params(rng))
    ids, mask = model.tokenizer(["a red 3 moving left"] * batch)
    null_ids, null_mask = model.tokenizer([""] * batch)
    noise = jax.random.normal(rng, (batch, *latent_shape(config)))
    sampling = config.sampling
    kwargs = dict(prediction_type=config.diffusion.prediction_type, guidance_scale=sampling.guidance_scale)

    def conds(params):
        return ((model.encode_text(params, ids, mask), mask),
                (model.encode_text(params, null_ids, null_mask), null_mask))

    if scanned:
        @jax.jit
        def run_all(params, noise, rng):
            cond, uncond = conds(params)
            return samplers.sample(lambda x, t, c: model.denoise(params, x, t, c), model.schedule, noise, rng,
                                   method=sampling.method, num_steps=sampling.num_steps, cond=cond,
                                   uncond=uncond, eta=sampling.eta, **kwargs)

        return median_seconds(lambda: run_all(params, noise, rng), repeats)

    # Baseline: the same single steps, one jitted call per step from a Python loop.
    t_n, t_prev_n = samplers.timesteps(sampling.method, sampling.num_steps, model.schedule)
    cond_fn = jax.jit(conds)

    one_step = jax.jit(denoising_step(model, config))

    def run_loop():
        cond, uncond = cond_fn(params)
        x = noise
        for t, t_prev in zip(t_n, t_prev_n):
            x = one_step(params, x, t, t_prev, cond, uncond)
        return x

    return median_seconds(run_loop, repeats)


def _diffusers_allegro_kwargs(dit) -> dict:
    """AllegroTransformer3DModel arguments for a VideoDiT config (the inverse of the converter's reading)."""
    pt, ph, pw = dit.patch_thw
    if pt != 1 or ph != pw:
        raise ValueError(f"diffusers' Allegro has square spatial patches and no temporal patch; got {dit.patch_thw}")
    scale_t, scale_h, scale_w = dit.rope_interpolation_scale
    return dict(patch_size=ph, patch_size_t=1, num_attention_heads=dit.num_heads,
                attention_head_dim=dit.width // dit.num_heads, in_channels=dit.in_channels,
                out_channels=dit.out_channels, num_layers=dit.num_layers, cross_attention_dim=dit.width,
                caption_channels=dit.caption_channels, interpolation_scale_t=scale_t, interpolation_scale_h=scale_h,
                interpolation_scale_w=scale_w)


def _peak_device_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _denoise_vs_diffusers(config, repeats) -> dict:
    """Seconds and peak device memory of one CFG denoising step: ours (jit) vs diffusers (torch)."""
    import types

    import torch
    from diffusers import AllegroTransformer3DModel
    from diffusers.pipelines.allegro.pipeline_allegro import AllegroPipeline

    from t2v_jax.models.video_dit import VideoDiT

    batch, text_len = 2, config.text.max_length
    frames, height, width, channels = latent_shape(config)
    rng = np.random.default_rng(0)
    x_bcthw = rng.standard_normal((batch, channels, frames, height, width)).astype(np.float32)
    context_bld = rng.standard_normal((batch, text_len, config.dit.caption_channels)).astype(np.float32)
    mask_bl = np.ones((batch, text_len), np.int64)
    mask_bl[1, text_len // 8:] = 0  # the unconditional prompt is short, as in sampling
    t_b = np.full((batch,), 500.0, np.float32)

    model = VideoDiT(config.dit)
    x_bthwc = jnp.asarray(x_bcthw.transpose(0, 2, 3, 4, 1))
    args = (jnp.asarray(t_b), jnp.asarray(context_bld, config.dit.dtype), jnp.asarray(mask_bl.astype(bool)))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x_bthwc, *args)
    forward = jax.jit(model.apply)
    ours_s = median_seconds(lambda: forward(params, x_bthwc, *args), repeats)
    ours_peak = _peak_device_bytes()
    for leaf in jax.tree.leaves(params):
        leaf.delete()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[config.dit.dtype]
    torch.manual_seed(0)
    reference = AllegroTransformer3DModel(**_diffusers_allegro_kwargs(config.dit)).to(device, dtype).eval()
    shim = types.SimpleNamespace(vae_scale_factor_spatial=1, transformer=reference)
    rope = AllegroPipeline._prepare_rotary_positional_embeddings(shim, batch, height, width, frames, device)
    inputs = dict(hidden_states=torch.from_numpy(x_bcthw).to(device, dtype),
                  encoder_hidden_states=torch.from_numpy(context_bld).to(device, dtype),
                  timestep=torch.from_numpy(t_b).to(device), encoder_attention_mask=torch.from_numpy(mask_bl).to(device),
                  image_rotary_emb=rope, return_dict=False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run_reference():
        with torch.no_grad():
            out = reference(**inputs)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    reference_s = median_seconds(run_reference, repeats)
    reference_peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return dict(ours_seconds_per_step=ours_s, diffusers_seconds_per_step=reference_s,
                speedup_vs_diffusers=reference_s / ours_s, ours_peak_bytes=ours_peak,
                diffusers_peak_bytes=reference_peak, torch=torch.__version__, torch_device=device,
                cfg_batch=batch, latent_thwc=(frames, height, width, channels), text_len=text_len,
                dtype=config.dit.dtype, attention=config.dit.attention)


def main(argv):
    del argv
    quiet_library_logs()
    if _VS_DIFFUSERS.value:
        # JAX and torch share the device in this mode: JAX must not grab 75% of it up front.
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    initialize_distributed(_CONFIG.value.get("distributed"))
    config = validate(_CONFIG.value)
    if system(config) == "flashvideo":
        result = dict(date=datetime.date.today().isoformat(), device=jax.devices()[0].device_kind,
                      backend=jax.default_backend(), jax=jax.__version__, decoding=_decoding_benchmark(config))
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)
        print(f"-> {_OUT.value}")
        return
    if _VS_DIFFUSERS.value:
        result = dict(date=datetime.date.today().isoformat(), device=jax.devices()[0].device_kind,
                      backend=jax.default_backend(), jax=jax.__version__, dit=config.dit.to_dict(),
                      denoise_step=_denoise_vs_diffusers(config, _REPEATS.value))
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)
        step = result["denoise_step"]
        memory = ""
        if step["ours_peak_bytes"] and step["diffusers_peak_bytes"]:
            memory = (f"; peak memory {step['ours_peak_bytes'] / 2**30:.1f} GiB vs "
                      f"{step['diffusers_peak_bytes'] / 2**30:.1f} GiB")
        print(f"denoising step on {result['device']}: {step['ours_seconds_per_step']:.3f} s vs diffusers "
              f"{step['diffusers_seconds_per_step']:.3f} s (x{step['speedup_vs_diffusers']:.2f}){memory} "
              f"-> {_OUT.value}")
        return
    device = jax.devices()[0]
    grid = dit_token_grid(config)
    text_len = config.text.max_length
    batch = config.train_dit.batch_size
    peak = flops.peak_tflops(device)
    train_flops = flops.dit_train_flops(config.dit, grid, text_len, batch)
    guidance_batches = 2 if config.sampling.guidance_scale != 1 else 1
    sample_flops = config.sampling.num_steps * flops.dit_forward_flops(config.dit, grid, text_len,
                                                                        batch * guidance_batches)

    result = dict(date=datetime.date.today().isoformat(), device=device.device_kind, backend=jax.default_backend(),
                  num_devices=jax.device_count(), host=platform.node(), jax=jax.__version__,
                  batch=batch, token_grid=grid, text_len=text_len, dit=config.dit.to_dict(),
                  sampling=config.sampling.to_dict(), peak_tflops=peak)

    step_s = _train_step_seconds(config, config.dit.remat_policy, _REPEATS.value)
    result["train_step"] = dict(seconds=step_s, steps_per_sec=1 / step_s, tflops=train_flops / step_s / 1e12,
                                mfu=(train_flops / step_s / 1e12 / (peak * jax.device_count())) if peak else None,
                                remat_policy=config.dit.remat_policy)
    sample_s = _sampling_seconds(config, _REPEATS.value, scanned=True)
    result["sampling"] = dict(seconds=sample_s, denoising_steps_per_sec=config.sampling.num_steps / sample_s,
                              tflops=sample_flops / sample_s / 1e12,
                              mfu=(sample_flops / sample_s / 1e12 / (peak * jax.device_count())) if peak else None)
    if not _SKIP_BASELINES.value:
        base_step_s = _train_step_seconds(config, "full", _REPEATS.value)
        result["train_step"]["baseline_full_remat_seconds"] = base_step_s
        result["train_step"]["speedup_vs_full_remat"] = base_step_s / step_s
        if config.sampling.method == "ddim":
            base_sample_s = _sampling_seconds(config, _REPEATS.value, scanned=False)
            result["sampling"]["baseline_python_loop_seconds"] = base_sample_s
            result["sampling"]["speedup_vs_python_loop"] = base_sample_s / sample_s

    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    ts, sp = result["train_step"], result["sampling"]
    print(f"device {result['device']} x{result['num_devices']}, batch {batch}, tokens {np.prod(grid)}")
    print(f"train step: {ts['steps_per_sec']:.2f} steps/s, {ts['tflops']:.3f} TFLOP/s"
          + (f", MFU {ts['mfu']:.1%}" if ts["mfu"] else "")
          + (f", x{ts['speedup_vs_full_remat']:.2f} vs full remat" if "speedup_vs_full_remat" in ts else ""))
    print(f"sampling ({config.sampling.method}, {config.sampling.num_steps} steps): {sp['seconds']:.2f} s, "
          f"{sp['tflops']:.3f} TFLOP/s"
          + (f", MFU {sp['mfu']:.1%}" if sp["mfu"] else "")
          + (f", x{sp['speedup_vs_python_loop']:.2f} vs per-step Python loop"
             if "speedup_vs_python_loop" in sp else ""))
    print(f"-> {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
