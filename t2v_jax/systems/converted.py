"""Loading the folders that converters write (`scripts/convert_*.py`): the manifest, a check that the
config describes the models in it, and params restored straight onto their mesh shardings."""

import json
import os

import jax

from t2v_jax.checks import ConfigError
from t2v_jax.convert.allegro import MANIFEST
from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.rules import sharding_context
from t2v_jax.train.checkpoint import abstract_on, load_params

# Config fields that say how to run a model rather than what it is: they may differ from the checkpoint.
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention", "remat_policy", "scan_unroll", "dropout", "tile_frames",
                  "tile_size", "tile_overlap_frames", "tile_overlap")


def is_converted(checkpoint_dir: str) -> bool:
    """Whether the folder was written by a converter (it has a manifest) rather than by scripts/train.py."""
    return os.path.isfile(os.path.join(checkpoint_dir, MANIFEST))


def read_manifest(checkpoint_dir: str, convert_command: str, required=()) -> dict:
    """The folder's manifest; FileNotFoundError saying how to write it, or naming the `required`
    components it lacks."""
    path = os.path.join(checkpoint_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: convert the released weights first with {convert_command}")
    with open(path) as f:
        manifest = json.load(f)
    missing = sorted(set(required) - set(manifest["components"]))
    if missing:
        raise FileNotFoundError(f"{checkpoint_dir} lacks converted component(s) {missing}")
    return manifest


def check_against_checkpoint(sections: dict, checkpoint_configs: dict) -> None:
    """`sections` maps each converted component to (its config field's name, that config); every field the
    checkpoint states must agree, except the runtime ones. Raises ConfigError naming every mismatch."""
    mismatches = []
    for component, stored in sorted(checkpoint_configs.items()):
        if component not in sections:
            continue
        prefix, ours = sections[component]
        for field, value in sorted(stored.items()):
            if field in RUNTIME_FIELDS or field not in ours:
                continue
            mine = ours[field]
            if json.loads(json.dumps(mine)) != json.loads(json.dumps(value)):
                mismatches.append(f"{prefix}.{field}: config {mine!r}, checkpoint {value!r}")
    if mismatches:
        raise ConfigError("the config does not match the converted checkpoint (another size's config?): "
                          + "; ".join(mismatches))


def abstract_params(init_fn, mesh, rules, dtype):
    """ShapeDtypeStructs of a model's {"params": ...} in `dtype`, carrying their mesh shardings, so
    that orbax restores each array straight onto its devices."""
    with sharding_context(mesh, rules):
        boxed = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
        shardings = sharding_rules.state_shardings(boxed, mesh, rules)
    return abstract_on(sharding_rules.unbox(boxed), shardings, dtype)["params"]


def load_component(checkpoint_dir: str, component: str, abstract) -> dict:
    """{"params": ...} of one converted component, placed and cast as `abstract` says."""
    return {"params": load_params(os.path.join(checkpoint_dir, component), abstract)}
