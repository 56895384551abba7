"""Analytic model FLOPs for the VideoDiT and MFU.

We count model FLOPs (what the math needs), not hardware FLOPs: a matmul of (m, k) by (k, n)
is 2*m*k*n; attention is non-causal, so QK^T and AV each cost 2*L*S*D per layer; a training
step is 3x the forward pass (forward + two matmuls per weight in the backward pass);
rematerialisation is not counted, as MaxText does. Norms, softmax and elementwise ops are
ignored (a few percent at these widths).
"""

import jax

# Dense bf16 peak per chip, TFLOP/s, from the vendors' spec sheets.
PEAK_TFLOPS = {
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def dit_forward_flops(dit_cfg, grid_thw, text_len: int, batch: int) -> float:
    """Forward FLOPs of VideoDiT for `batch` videos of latent token grid `grid_thw` (after patching)."""
    width = dit_cfg.width
    mlp = int(width * dit_cfg.mlp_ratio)
    tokens = grid_thw[0] * grid_thw[1] * grid_thw[2]
    pt, ph, pw = dit_cfg.patch_thw
    patch_in = pt * ph * pw * dit_cfg.in_channels
    patch_out = pt * ph * pw * dit_cfg.out_channels
    per_layer = (
        2 * tokens * width * 4 * width          # self-attention q, k, v, out
        + 2 * 2 * tokens * tokens * width       # QK^T and AV over all video tokens
        + 2 * tokens * width * 2 * width        # cross-attention q, out
        + 2 * text_len * width * 2 * width      # cross-attention k, v on the caption
        + 2 * 2 * tokens * text_len * width     # cross-attention QK^T and AV
        + 2 * tokens * width * mlp * 2          # feed-forward in and out
    )
    embed = 2 * tokens * (patch_in + patch_out) * width + 2 * text_len * (dit_cfg.caption_channels + width) * width
    return float(batch * (dit_cfg.num_layers * per_layer + embed))


def dit_train_flops(dit_cfg, grid_thw, text_len: int, batch: int) -> float:
    return 3.0 * dit_forward_flops(dit_cfg, grid_thw, text_len, batch)


def peak_tflops(device=None):
    """Known bf16 peak of the device, or None (e.g. CPU) so that MFU is not invented."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_TFLOPS.items():
        if kind.startswith(name):
            return peak
    return None
