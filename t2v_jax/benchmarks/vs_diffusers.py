"""One Allegro DiT denoising step against diffusers' AllegroTransformer3DModel of the same size.

Classifier-free guidance batch of 2, the text at its full length (the unconditional row mostly
padding), random weights, same dtype and device, same process: JAX first, its buffers freed, then
torch. Seconds per step and peak device memory of each (each framework's own counter, GPUs only).
Needs the [ref] extra (torch, diffusers).
"""

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.models.text_to_video import latent_shape
from t2v_jax.models.video_dit import VideoDiT
from t2v_jax.parallel.report import median_seconds


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


def vs_diffusers_benchmark(config, options) -> dict:
    """The step comparison as a JSON-ready dict; prints one summary line."""
    result = dict(dit=config.dit.to_dict(), denoise_step=_denoise_vs_diffusers(config, options.repeats))
    step = result["denoise_step"]
    memory = ""
    if step["ours_peak_bytes"] and step["diffusers_peak_bytes"]:
        memory = (f"; peak memory {step['ours_peak_bytes'] / 2**30:.1f} GiB vs "
                  f"{step['diffusers_peak_bytes'] / 2**30:.1f} GiB")
    print(f"denoising step on {jax.devices()[0].device_kind}: {step['ours_seconds_per_step']:.3f} s vs diffusers "
          f"{step['diffusers_seconds_per_step']:.3f} s (x{step['speedup_vs_diffusers']:.2f}){memory}")
    return result
