"""Allegro 40x360p's DiT for comparing sharding strategies (scripts/compare_sharding.py).

Both variants keep Allegro's 24 heads, MLP ratio 4, patch (1, 2, 2), 4 latent channels, caption
features of T5-XXL's width 4096, bf16 params and activations, remat
"dots_with_no_batch_dims_saveable", and use batch 8. Reduced in both, and why: the text encoder is
a one-layer stand-in of T5-XXL's width 4096 (1 head x 64, MLP 64) instead of T5 v1.1 XXL (4.7B),
which Allegro keeps frozen but this train step would train along with the DiT; captions have 32
tokens instead of 512.
- "full": the DiT itself at full size (32 layers, width 2304 = 24 x 96, 10 x 46 x 80 latents =
  9,200 tokens). On a CPU, compile only (--repeats 0) with --config.dit.attention=chunked: the
  memory and collectives of the real model.
- "cpu" (default), so that all five presets are timed in minutes on a 2-core CPU with 8 simulated
  devices: 2 layers, width 1152 = 24 x 48 (at 2304 dp's 8 replicas need 17 GB of host memory),
  latents 2 x 8 x 10 (8 frames at 64 x 80 px: 40 tokens).

Commands:
  python scripts/compare_sharding.py --config configs/allegro_sharding.py:full --config.dit.attention=chunked \
      --host_devices 8 --repeats 0 --out sharding_full.json
  python scripts/compare_sharding.py --config configs/allegro_sharding.py --host_devices 8 --out sharding_cpu.json
Hardware: 2-core x86-64 CPU shared with two other jobs, 8 simulated devices, jax 0.10.2.
Result:   2026-11-21, tables in docs/sharding.md. Full size: per-device train state (params, EMA,
          Adam) 21,170 MiB under dp, 2,718 fsdp, 2,659 tp, 2,679 fsdp_tp, 5,354 context (fsdp 4 x
          context 2), in 1 min 49 s. "cpu": all five presets compiled and timed in 4 min 43 s.
"""

from t2v_jax.models import text_encoder
from t2v_jax.systems.allegro import allegro_config


def get_config(arg: str = "cpu"):
    if arg not in ("cpu", "full"):
        raise ValueError(f"configs/allegro_sharding.py:{arg}: choose 'cpu' or 'full'")
    config = allegro_config("40x360p")
    config.text.max_length = 32
    encoder = text_encoder.default_config()
    encoder.update(width=4096, num_layers=1, num_heads=1, head_dim=64, mlp_dim=64, dtype="bfloat16",
                   param_dtype="bfloat16")
    config.text.encoder = encoder
    config.train_dit.batch_size = 8
    if arg == "cpu":
        config.dit.update(num_layers=2, width=1152)
        config.data.update(num_frames=8, canvas=64, width=80)
    return config
