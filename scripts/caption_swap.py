"""Does the caption steer shape and motion? A latent system's x0 predictions under swapped captions.

  python scripts/caption_swap.py --config configs/quickstart.py --checkpoint runs/quickstart [--num 128]

Encodes rendered test videos (posterior mean), noises them to each --timesteps t with one fixed noise
draw, predicts x0 under the true caption and under captions that change only the digit (d -> d + 5 mod
10) or only the direction (to the opposite one), decodes, and judges each x0 against the caption it was
given. A model whose text steers the content scores high against a swapped caption at large t; one that
copies what the noisy input still shows scores ~10% (digit) or ~0% (direction). Prints a table, then JSON.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from t2v_jax import cli
from t2v_jax.config import validate
from t2v_jax.data import bouncing_digits
from t2v_jax.diffusion.samplers import to_x0_eps
from t2v_jax.diffusion.schedules import expand_like, signal_noise
from t2v_jax.eval.judge import Judge, parse_caption
from t2v_jax.io.video import to_uint8
from t2v_jax.models.video_vae import vae_decode, vae_encode
from t2v_jax.pipelines.load import load_pipeline
from t2v_jax.pipelines.text_to_video import TextToVideoPipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A --workdir of scripts/train.py (a latent system).")
_NUM = flags.DEFINE_integer("num", 128, "Test videos.")
_SEED = flags.DEFINE_integer("seed", 1234, "Seed of the test videos.")
_TIMESTEPS = flags.DEFINE_list("timesteps", ["300", "500", "700"], "Noise levels t in [0, num_train_steps).")
SWAPS = ("true", "digit", "direction")


def swapped(caption: str, what: str) -> str:
    digit, colour, direction = parse_caption(caption)
    if what == "digit":
        digit = (digit + 5) % 10
    elif what == "direction":
        direction = (direction + 2) % len(bouncing_digits.DIRECTIONS)  # left <-> right, up <-> down
    return bouncing_digits.caption(digit, bouncing_digits.COLOURS[colour], bouncing_digits.DIRECTIONS[direction])


def main(argv):
    del argv
    config = validate(_CONFIG.value)
    pipeline = load_pipeline(config, _CHECKPOINT.value)
    if not isinstance(pipeline, TextToVideoPipeline):
        raise ValueError(f"--checkpoint must hold a latent diffusion system, not a {type(pipeline).__name__}")
    videos_nthwc, captions = bouncing_digits.sample_videos(_NUM.value, "test", seed=_SEED.value,
                                                           num_frames=config.data.num_frames, canvas=config.data.canvas)
    model, schedule = pipeline.model, pipeline.model.schedule
    x0_bthwc = vae_encode(pipeline.vae, pipeline.vae_params, jnp.asarray(videos_nthwc, jnp.float32) / 127.5 - 1.0,
                          tiled=False)
    noise_bthwc = jax.random.normal(jax.random.PRNGKey(_SEED.value), x0_bthwc.shape)

    @jax.jit
    def predicted_video(dit_params, vae_params, t_b, cond):
        alpha_b, sigma_b = signal_noise(schedule, t_b)
        x_t = expand_like(alpha_b, x0_bthwc) * x0_bthwc + expand_like(sigma_b, x0_bthwc) * noise_bthwc
        pred = model.denoise({"dit": dit_params}, x_t, t_b, cond)
        x0_pred, _ = to_x0_eps(pred, x_t, t_b, schedule, config.diffusion.prediction_type)
        return vae_decode(pipeline.vae, vae_params, x0_pred, tiled=False)

    judge = Judge.fit(canvas=config.data.canvas)
    results = []
    for t in (int(t) for t in _TIMESTEPS.value):
        for what in SWAPS:
            prompts = captions if what == "true" else [swapped(c, what) for c in captions]
            t_b = jnp.full((len(prompts),), t)
            video = to_uint8(jax.device_get(predicted_video(pipeline.dit_params, pipeline.vae_params, t_b,
                                                            pipeline.encode_prompts(prompts))))
            scores = judge.score(video, prompts)
            results.append(dict(t=t, caption=what, **scores))
            print(f"t={t:4d} caption={what:9s} digit {scores['digit']:6.1%} colour {scores['colour']:6.1%} "
                  f"direction {scores['direction']:6.1%}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "checkpoint"])
    cli.run(main)
