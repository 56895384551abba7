"""Orbax checkpointing of the train state together with the data iterator's position.

A checkpoint holds two items: `state` (params, optimizer state, EMA, step, RNG key) and
`data` (the grain iterator state as JSON), so a resumed run continues with exactly the batches
and random numbers the interrupted run would have used.
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from t2v_jax.convert.safetensors_io import flatten_tree

SAVED_CONFIG = "config.json"


def _to_json(data_state):
    if isinstance(data_state, bytes):
        return {"bytes": data_state.decode("utf-8")}
    return {"value": data_state}


def _from_json(blob):
    return blob["bytes"].encode("utf-8") if "bytes" in blob else blob["value"]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose arrays do not fit the model the config builds (other shapes, other layers)."""


def _check_fits(stored_state, abstract_state, where: str, limit: int = 3):
    """Raises CheckpointMismatchError naming the params whose path or shape differ between a stored train
    state (orbax metadata) and the one this config builds, before orbax's restore fails on them with a
    restore spec per array and a leaked task per failure. Optimizer state mirrors the params."""
    stored = flatten_tree(stored_state["params"])
    wanted = flatten_tree(abstract_state.params)
    problems = [f"{path} is not in the checkpoint" for path in sorted(wanted.keys() - stored.keys())]
    problems += [f"{path} is in the checkpoint but not in this model" for path in sorted(stored.keys() - wanted.keys())]
    problems += [f"{path} has shape {tuple(stored[path].shape)} in the checkpoint, {tuple(wanted[path].shape)} here"
                 for path in sorted(wanted.keys() & stored.keys())
                 if tuple(stored[path].shape) != tuple(wanted[path].shape)]
    if problems:
        more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
        raise CheckpointMismatchError(f"the checkpoint of {where} does not fit the model this config builds: "
                                      f"{'; '.join(problems[:limit])}{more}")


class Checkpointer:
    """Saves every `every` steps (async) and keeps the newest `keep`."""

    def __init__(self, directory: str, *, every: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, every), max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save)
        # The handlers named up front let `item_metadata` read a checkpoint's shapes before restoring it.
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, data_state=None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(_to_json(data_state))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, step: int | None = None, *, with_data: bool = True):
        """Restores onto the shardings of `abstract_state` (ShapeDtypeStructs with .sharding); a checkpoint
        whose params differ from it in path or shape raises `CheckpointMismatchError` before any array is read."""
        step = self.latest_step() if step is None else step
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = with_data and os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        _check_fits(self.manager.item_metadata(step)["state"], abstract_state,
                    f"step {step} under {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        data_state = _from_json(restored["data"]) if has_data else None
        return restored["state"], data_state

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_on(tree, shardings, dtype=None):
    """ShapeDtypeStructs of `tree`'s leaves placed on `shardings` (and cast to `dtype` if given), the
    target orbax restores or jit lowers onto without materialising anything."""
    return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=sharding),
                        tree, shardings)


def abstract_like(tree):
    """ShapeDtypeStructs carrying each leaf's sharding, for restoring in place."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def dump_json(path: str, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


def read_saved_config(workdir: str) -> dict | None:
    """The config `scripts/train.py` saved in a run's workdir, or None for a folder without one."""
    path = os.path.join(workdir, SAVED_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def mismatch_with_saved_config(error: CheckpointMismatchError, config, workdir: str,
                               limit: int = 8) -> CheckpointMismatchError:
    """`error` extended with the fields where `config` differs from the config the run saved in `workdir`,
    and with the config file that loads the run as it was trained."""
    saved = read_saved_config(workdir)
    if saved is None:
        return error
    here = flatten_tree(json.loads(json.dumps(config.to_dict(), default=str)))
    there = flatten_tree(saved)
    absent = "(absent)"
    changed = [f"{key.replace('/', '.')} (the run: {there.get(key, absent)!r}, this config: {here.get(key, absent)!r})"
               for key in sorted(here.keys() | there.keys()) if here.get(key, absent) != there.get(key, absent)]
    if not changed:
        return error
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return CheckpointMismatchError(f"{error}; this config differs from the run's {SAVED_CONFIG} in "
                                   f"{', '.join(changed[:limit])}{more}; --config configs/saved.py:{workdir} "
                                   "loads the config the run was trained with")


def save_params(directory: str, params) -> None:
    """Writes a params tree (numpy or jax arrays) as one orbax checkpoint, e.g. converted weights."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(directory), params, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()


def load_params(directory: str, abstract_params=None):
    """Reads what `save_params` wrote; with `abstract_params` (ShapeDtypeStructs with shardings and
    dtypes) each array is placed and cast as they say, without a full host copy first."""
    checkpointer = ocp.StandardCheckpointer()
    params = checkpointer.restore(os.path.abspath(directory), abstract_params)
    checkpointer.close()
    return params
