"""Allegro 88x720p: 88 frames at 720 x 1280 px (22 x 90 x 160 latents), from the released weights (rhymes-ai/Allegro).

Commands:
  python scripts/convert_allegro.py --diffusers-dir PATH/TO/rhymes-ai/Allegro --out allegro_88x720p
  python scripts/sample.py --config configs/allegro_88x720p.py --checkpoint allegro_88x720p \
      --prompt "a seaside harbor at sunrise, boats rocking gently" --out a.mp4
Hardware: one NVIDIA H100/H200 (bf16 DiT, cuDNN attention) or a TPU slice (splash attention).
Result:   a 88-frame mp4 at 15 fps; Euler ancestral, 100 steps, CFG 7.5, the official prompt template and
          negative prompt (turn the template off with --config.sampling.prompt_template="").
          Seconds per step and peak memory: BENCHMARKS.md (pending: needs a GPU).
"""

from t2v_jax.systems.allegro import allegro_config


def get_config():
    return allegro_config("88x720p")
