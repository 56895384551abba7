"""Convert Allegro's diffusers folder (transformer/, vae/, text_encoder/, tokenizer/) to a t2v_jax checkpoint.

  python scripts/convert_allegro.py --diffusers-dir PATH/TO/rhymes-ai/Allegro --out allegro_88x720p
  python scripts/sample.py --config configs/allegro_88x720p.py --checkpoint allegro_88x720p --prompt "..."

Tensors are read one at a time from memory-mapped safetensors, so host memory holds each converted
model once (peak: T5 v1.1 XXL, 9.5 GB in bf16). Missing, unused or mis-shaped tensors are named.
"""

import argparse
import sys
import time

from t2v_jax import cli
from t2v_jax.convert.allegro import COMPONENTS, convert_allegro
from t2v_jax.convert.safetensors_io import ConversionError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers-dir", required=True, help="Folder with transformer/, vae/, text_encoder/, "
                        "tokenizer/ (a local copy of rhymes-ai/Allegro or its 40-frame variants).")
    parser.add_argument("--out", required=True, help="Output folder for scripts/sample.py --checkpoint.")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="Storage dtype of the transformer and text encoder (the VAE is always float32).")
    parser.add_argument("--components", default=",".join(COMPONENTS),
                        help=f"Comma-separated subset of {','.join(COMPONENTS)}.")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = convert_allegro(args.diffusers_dir, args.out, dtype=args.dtype,
                                   components=tuple(filter(None, args.components.split(","))))
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"converted {', '.join(manifest['components'])} ({args.dtype}) in {time.perf_counter() - start:.0f} s "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
