"""Convert LaVie's released checkpoints, with what they need from Stable Diffusion, to t2v_jax folders.

  python scripts/convert_lavie.py --sd-dir PATH/TO/stable-diffusion-v1-4 \
      --base lavie_base.pt --interpolation lavie_interpolation.pt \
      --upscaler-dir PATH/TO/stable-diffusion-x4-upscaler --vsr lavie_vsr.pt --out lavie

SD 1.4 gives the 2D VAE (vae/), the CLIP ViT-L/14 text encoder (text_encoder/) and tokenizer, and the UNet's
config (unet/config.json); LaVie's `.pt` files give the base and interpolation UNets (their EMA weights
when the file holds training state). The x4 upscaler gives the super-resolution model's VAE (vsr_vae/), its
OpenCLIP ViT-H/14 text encoder (vsr_text_encoder/) and tokenizer, and, unless --vsr-config names LaVie's
vsr/configs/unet_3d_config.json, the UNet config LaVie's VSR model inflates; `lavie_vsr.pt` gives vsr/.
Either folder may be left out when none of its models is converted (e.g. only --upscaler-dir and --vsr).
Needs torch to read `.pt` files (`pip install -e ".[ref]"`). Missing, unused or mis-shaped tensors are
named before anything is written.
"""

import argparse
import sys
import time

from t2v_jax.convert.lavie import convert_lavie
from t2v_jax.convert.safetensors_io import ConversionError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd-dir", help="A diffusers Stable Diffusion 1.4 folder (vae/, text_encoder/, tokenizer/, "
                        "unet/config.json); needed for --base and --interpolation.")
    parser.add_argument("--base", help="LaVie's base model .pt file.")
    parser.add_argument("--interpolation", help="LaVie's interpolation model .pt file.")
    parser.add_argument("--upscaler-dir", help="A diffusers stable-diffusion-x4-upscaler folder (vae/, text_encoder/, "
                        "tokenizer/, unet/config.json); needed for --vsr.")
    parser.add_argument("--vsr", help="LaVie's super-resolution model .pt file.")
    parser.add_argument("--vsr-config", help="LaVie's vsr/configs/unet_3d_config.json (default: the upscaler's "
                        "unet/config.json with LaVie's temporal layers).")
    parser.add_argument("--out", required=True, help="Output folder.")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="Storage dtype of the UNets and text encoders (the VAEs stay float32).")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = convert_lavie(args.out, sd_dir=args.sd_dir, base=args.base, interpolation=args.interpolation,
                                 upscaler_dir=args.upscaler_dir, vsr=args.vsr, vsr_config=args.vsr_config,
                                 dtype=args.dtype)
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"converted {', '.join(manifest['components'])} in {time.perf_counter() - start:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
