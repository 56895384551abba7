#!/usr/bin/env bash
# Downloads, here (where pip reaches a package index), the wheels that the GPU machine lacks into
# gpu_wheels/, for scripts/gpu_benchmarks.py --install to install there without a network:
#
#   bash scripts/gpu_wheels.sh          # then: device run, carry=["gpu_wheels"],
#                                       #   command "python3 scripts/gpu_benchmarks.py --install --out_dir $OUT"
#
# The GPU machine (/work/.library/device/KINDS.md) runs Python 3.12 with jax 0.11 + CUDA, flax, optax,
# orbax-checkpoint, torch, transformers, scikit-learn and pytest, but no diffusers, ml-collections, grain,
# array-record, tensorflow-datasets or tensorboardX. So: those and their missing dependencies; protobuf,
# etils, flax, optax and orbax-checkpoint as well, which --install uses only where the machine's own are
# older (never jax, jaxlib, numpy or torch). Versions are the ones installed here (the tested set), else
# the fallbacks below. Binary wheels come for every Python in GPU_PYTHON_VERSIONS (default "3.12 3.11":
# KINDS.md says 3.12; 3.11 is this machine's); --install picks the one that fits. imageio-ffmpeg's
# manylinux wheel carries a 68 MB ffmpeg, so a pure wheel is built from its sdist instead (importable;
# writing videos would need an ffmpeg there, which no part does). About 25 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${GPU_WHEELS_DIR:-gpu_wheels}
PY=${PYTHON:-python3}
read -r -a PY_VERSIONS <<< "${GPU_PYTHON_VERSIONS:-3.12 3.11}"

PURE="ml-collections==1.1.0 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0
googleapis-common-protos==1.76.0 simple-parsing==0.1.9 docstring-parser==0.18.0 termcolor==3.3.0
toml==0.10.2 immutabledict==4.3.1 importlib-resources==7.1.0 tensorboardX==2.6.5 diffusers==0.42.1
portpicker==1.6.0 etils==1.15.0 flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8"
BINARY="array-record==0.8.6 grain==0.2.18 dm-tree==0.1.10 protobuf==7.36.2"
# Built here from their sdists: promise has no wheel; imageio-ffmpeg, see above.
SDIST="promise==2.3 imageio-ffmpeg==0.8.1"

# NAME==FALLBACK -> NAME==<version installed here>, when it is installed here.
pin() {
  "$PY" - "$@" <<'EOF'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, fallback = spec.split("==")
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(spec)
EOF
}

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# shellcheck disable=SC2046
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSIONS[0]}" -d "$DEST" $(pin $PURE)
for version in "${PY_VERSIONS[@]}"; do
  # shellcheck disable=SC2046
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
      "${PLATFORMS[@]}" -d "$DEST" $(pin $BINARY)
done
# shellcheck disable=SC2046
"$PY" -m pip wheel -q --no-deps --no-binary=promise,imageio-ffmpeg -w "$DEST" $(pin $SDIST)
ls -1 "$DEST"
du -sh "$DEST"
