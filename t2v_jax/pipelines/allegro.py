"""Allegro's pipeline: the latent text-to-video pipeline with Allegro's prompt preprocessing (its
template around the prompt, its negative prompt). `systems/allegro.py` loads it from a folder
written by `scripts/convert_allegro.py`.
"""

from t2v_jax.pipelines.text_to_video import TextToVideoPipeline

# Allegro's inference script wraps the user's prompt in this template and pairs it with this negative.
POSITIVE_TEMPLATE = """
(masterpiece), (best quality), (ultra-detailed), (unwatermarked), 
{} 
emotional, harmonious, vignette, 4k epic detailed, shot on kodak, 35mm photo, 
sharp focus, high budget, cinemascope, moody, epic, gorgeous
"""
NEGATIVE_PROMPT = """
nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, 
low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry.
"""


def preprocess_prompt(prompt: str, template: str = "") -> str:
    """Allegro's text preprocessing: the prompt (lower-cased, stripped) in the template, then the whole
    text lower-cased and stripped, as diffusers' AllegroPipeline does without caption cleaning."""
    text = template.format(prompt.lower().strip()) if template else prompt
    return text.lower().strip()


class AllegroPipeline(TextToVideoPipeline):
    """TextToVideoPipeline over converted Allegro weights, with Allegro's prompt preprocessing."""

    def _conditions(self, prompts, negatives):
        template = self.config.sampling.prompt_template
        return super()._conditions([preprocess_prompt(p, template) for p in prompts],
                                   [preprocess_prompt(n) for n in negatives])
