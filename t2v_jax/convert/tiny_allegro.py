"""A tiny random diffusers Allegro folder, laid out like rhymes-ai/Allegro, and the config that samples it.

With it the official-weights path (convert -> load -> sample) runs end to end on a CPU in seconds and
without a download: tests/test_allegro_pipeline.py compares it with diffusers' own AllegroPipeline, and
colab/allegro.ipynb runs it on a CPU runtime. The models are diffusers' and transformers' own classes at
toy sizes, saved by diffusers' AllegroPipeline (model_index.json, transformer/, vae/, text_encoder/,
tokenizer/, scheduler/). Every weight is redrawn, so that a tensor the converter mishandled cannot hide
behind a zero or a one; the T5 tokenizer is a sentencepiece model fitted here to a few sentences.

Writing the folder needs torch, diffusers, transformers and sentencepiece (the [ref] extra has them);
reading its config needs none of them.
"""

import os
import tempfile

from t2v_jax.convert.allegro import read_component_configs
from t2v_jax.systems.allegro import allegro_config

FRAMES, HEIGHT, WIDTH = 4, 16, 24  # pixels: 2 x 8 x 12 latents with the x2 (time) / x2 (space) VAE below
TEXT_LENGTH = 224  # holds Allegro's prompt template around a short prompt in this tokenizer's pieces
# The VAE's tiles in the config below; diffusers fixes its own in AutoencoderKLAllegro.__init__, so
# tests/test_allegro_pipeline.py sets these on its reference.
TILE = dict(frames=4, size=16, overlap_frames=2, overlap=(8, 8))
# What the tokenizer is fitted to: a few prompts and the words of Allegro's template and negative prompt.
CORPUS = ["a red car drives down a rainy street at night", "a cat sleeps on a warm windowsill",
          "waves crash on the rocks under a grey sky", "a harbor at sunrise with boats rocking gently",
          "masterpiece best quality ultra detailed unwatermarked emotional harmonious vignette",
          "nsfw lowres bad anatomy text error cropped worst quality jpeg artifacts watermark blurry"]


def write_tiny_allegro(diffusers_dir: str, *, seed: int = 0) -> str:
    """Writes the folder at `diffusers_dir` and returns that path; the same seed writes the same weights."""
    try:
        import diffusers
        import sentencepiece
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(f"writing a tiny diffusers Allegro folder needs torch, diffusers, transformers and "
                          f"sentencepiece (pip install -e '.[ref]'): {error}") from error
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as spm_dir:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 20), model_prefix=os.path.join(spm_dir, "spiece"), vocab_size=64,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)  # T5's special ids
        tokenizer = transformers.T5TokenizerFast.from_pretrained(spm_dir, model_max_length=TEXT_LENGTH, extra_ids=0)
    text_encoder = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dropout_rate=0.0))
    vae = diffusers.AutoencoderKLAllegro(
        block_out_channels=(8, 16), down_block_types=("AllegroDownBlock3D",) * 2,
        up_block_types=("AllegroUpBlock3D",) * 2, layers_per_block=1, norm_num_groups=4, latent_channels=4,
        temporal_downsample_blocks=(True, False), temporal_upsample_blocks=(False, True),
        temporal_compression_ratio=2, sample_size=128)  # > diffusers' fixed 120 px tile overlap
    transformer = diffusers.AllegroTransformer3DModel(
        num_layers=2, num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        cross_attention_dim=24, caption_channels=32, interpolation_scale_t=1.0, interpolation_scale_h=2.0,
        interpolation_scale_w=2.0)
    with torch.no_grad():
        for model in (text_encoder, vae, transformer):
            for param in model.parameters():
                param.add_(0.1 * torch.randn_like(param))
    # Allegro samples with Euler ancestral; its defaults are Allegro's training betas (linear, 1e-4 to 0.02).
    pipeline = diffusers.AllegroPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer,
                                         scheduler=diffusers.EulerAncestralDiscreteScheduler())
    pipeline.save_pretrained(diffusers_dir)
    return diffusers_dir


def tiny_allegro_config(diffusers_dir: str):
    """allegro_config() with the folder's own model configs, in float32, for a FRAMES x HEIGHT x WIDTH video
    sampled in 4 DDIM steps."""
    config = allegro_config("40x360p")
    models = read_component_configs(diffusers_dir, dtype="float32")
    config.dit = models["transformer"]
    config.dit.param_dtype = "float32"
    config.dit.attention = "xla"
    config.vae = models["vae"]
    config.vae.update(dict(tile_frames=TILE["frames"], tile_size=TILE["size"],
                           tile_overlap_frames=TILE["overlap_frames"], tile_overlap=TILE["overlap"]))
    config.text.encoder = models["text_encoder"]
    config.text.max_length = TEXT_LENGTH
    config.data.update(dict(num_frames=FRAMES, canvas=HEIGHT, width=WIDTH))
    config.sampling.update(dict(method="ddim", num_steps=4, guidance_scale=3.0))
    return config
