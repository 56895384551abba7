"""Allegro 40x360p: 40 frames at 368 x 640 px (10 x 46 x 80 latents), from the released weights (rhymes-ai/Allegro-T2V-40x360P).

Commands:
  python scripts/convert_allegro.py --diffusers-dir PATH/TO/rhymes-ai/Allegro-T2V-40x360P --out allegro_40x360p
  python scripts/sample.py --config configs/allegro_40x360p.py --checkpoint allegro_40x360p \
      --prompt "a seaside harbor at sunrise, boats rocking gently" --out a.mp4
Hardware: one NVIDIA H100/H200 (bf16 DiT, cuDNN attention) or a TPU slice (splash attention).
Result:   a 40-frame mp4 at 15 fps; Euler ancestral, 100 steps, CFG 7.5, the official prompt template and
          negative prompt (turn the template off with --config.sampling.prompt_template="").
          Seconds per step and peak memory: BENCHMARKS.md (pending: needs a GPU).
"""

from t2v_jax.systems.allegro import allegro_config


def get_config():
    return allegro_config("40x360p")
