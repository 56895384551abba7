"""A diffusers Allegro folder (transformer/, vae/, text_encoder/, tokenizer/) -> t2v_jax checkpoint.

Output layout, read by `systems.allegro.load_converted`:

    OUT/transformer/    orbax params of VideoDiT
    OUT/vae/            orbax params of VideoVAE (always float32: Allegro's VAE loses detail in bf16)
    OUT/text_encoder/   orbax params of the T5 v1.1 encoder
    OUT/tokenizer/      the checkpoint's own tokenizer files, copied
    OUT/t2v_jax.json    the model configs read from the checkpoint, the dtype and the source

Components are converted one at a time and freed before the next, so host memory peaks at the
largest one (T5 v1.1 XXL: 4.7B parameters, 9.5 GB in bf16), never at the sum.
"""

import json
import os
import shutil

import numpy as np
from tqdm.auto import tqdm

from t2v_jax.convert import allegro_transformer, allegro_vae, t5
from t2v_jax.convert.safetensors_io import read_config_json, storage_dtype
from t2v_jax.train.checkpoint import save_params

COMPONENTS = ("transformer", "vae", "text_encoder")
MANIFEST = "t2v_jax.json"


def read_component_configs(diffusers_dir: str, *, dtype: str = "bfloat16") -> dict:
    """{component: ml_collections config} from each subfolder's config.json; names what is missing."""
    missing = [name for name in COMPONENTS + ("tokenizer",)
               if not os.path.isdir(os.path.join(diffusers_dir, name))]
    if missing:
        raise FileNotFoundError(f"{diffusers_dir} is not a diffusers Allegro folder: missing subfolder(s) "
                                f"{missing} (expected transformer/, vae/, text_encoder/, tokenizer/)")

    def load(component):
        return read_config_json(os.path.join(diffusers_dir, component))

    return {
        "transformer": allegro_transformer.dit_config_from_diffusers(load("transformer"), dtype=dtype),
        "vae": allegro_vae.vae_config_from_diffusers(load("vae")),
        "text_encoder": t5.t5_config_from_hf(load("text_encoder"), dtype=dtype),
    }


def convert_allegro(diffusers_dir: str, out_dir: str, *, dtype: str = "bfloat16",
                    components=COMPONENTS, show_progress: bool = True) -> dict:
    """Converts the chosen components; returns the manifest written to OUT/t2v_jax.json."""
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {COMPONENTS}")
    np_dtype = storage_dtype(dtype)
    configs = read_component_configs(diffusers_dir, dtype=dtype)
    converters = {
        "transformer": lambda cfg, progress: allegro_transformer.convert_dit(
            os.path.join(diffusers_dir, "transformer"), cfg, dtype=np_dtype, progress=progress),
        "vae": lambda cfg, progress: allegro_vae.convert_vae(
            os.path.join(diffusers_dir, "vae"), cfg, dtype=np.float32, progress=progress),
        "text_encoder": lambda cfg, progress: t5.convert_t5(
            os.path.join(diffusers_dir, "text_encoder"), cfg, dtype=np_dtype, progress=progress),
    }
    os.makedirs(out_dir, exist_ok=True)
    for component in components:
        with tqdm(desc=f"converting {component}", unit=" tensors", disable=not show_progress) as bar:
            params = converters[component](configs[component], lambda path: bar.update())
        save_params(os.path.join(out_dir, component), params)
        del params
    tokenizer_out = os.path.join(out_dir, "tokenizer")
    shutil.copytree(os.path.join(diffusers_dir, "tokenizer"), tokenizer_out, dirs_exist_ok=True)
    manifest = {
        "source": os.path.abspath(diffusers_dir),
        "dtype": dtype,
        "components": sorted(components),
        "configs": {name: cfg.to_dict() for name, cfg in configs.items()},
    }
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest
