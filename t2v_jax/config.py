"""Config validation that runs before anything compiles.

The config's system (`t2v_jax/systems/`) checks its own fields; every check names the config field
that is wrong and what is allowed, so that a bad flag on the command line fails in a second with a
readable message instead of deep inside XLA.
"""

import importlib.util
import os

import jax
from ml_collections import config_dict

from t2v_jax import systems
from t2v_jax.train.checkpoint import SAVED_CONFIG, read_saved_config


def validate(config, num_devices: int | None = None):
    """Runs every check of the config's system and returns the config; call it before building
    models or compiling. `num_devices` defaults to all of JAX's devices."""
    systems.get(config).validate(config, num_devices or jax.device_count())
    return config


def module_from_file(path: str):
    """A .py file outside any package (configs/, scripts/) as a module: how notebooks and tests reach them."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_from_file(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file such as configs/quickstart.py; `get_config()` when arg is None (some
    configs take no argument, others have their own default)."""
    module = module_from_file(path)
    return module.get_config() if arg is None else module.get_config(arg)


def sibling_config(config_file: str, name: str):
    """`get_config()` of configs/NAME.py next to `config_file` (pass `__file__`): how a config builds on
    another (the released cascade on its base, a long run on the quickstart)."""
    return config_from_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def config_from_saved(workdir: str) -> config_dict.ConfigDict:
    """The config a `scripts/train.py` run saved in `workdir/config.json`: what it was trained with, flags
    included, so loading it needs no flags repeated. JSON turned tuples into lists (turned back: configs
    hold no lists) and typed placeholders into None (now placeholders of any type, so that a flag can
    still set them)."""
    saved = read_saved_config(workdir)
    if saved is None:
        raise FileNotFoundError(f"no {SAVED_CONFIG} in {workdir}: not a scripts/train.py workdir")

    def restore(value):
        if isinstance(value, dict):
            return {key: restore(item) for key, item in value.items()}
        if isinstance(value, list):
            return tuple(restore(item) for item in value)
        return config_dict.placeholder(object) if value is None else value

    return config_dict.ConfigDict(restore(saved))
