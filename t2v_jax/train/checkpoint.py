"""Orbax checkpointing of the train state together with the data iterator's position.

A checkpoint holds two items: `state` (params, optimizer state, EMA, step, RNG key) and
`data` (the grain iterator state as JSON), so a resumed run continues with exactly the batches
and random numbers the interrupted run would have used.
"""

import json
import os

import jax
import orbax.checkpoint as ocp


def _to_json(data_state):
    if isinstance(data_state, bytes):
        return {"bytes": data_state.decode("utf-8")}
    return {"value": data_state}


def _from_json(blob):
    return blob["bytes"].encode("utf-8") if "bytes" in blob else blob["value"]


class Checkpointer:
    """Saves every `every` steps (async) and keeps the newest `keep`."""

    def __init__(self, directory: str, *, every: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, every), max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, data_state=None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(_to_json(data_state))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, step: int | None = None, *, with_data: bool = True):
        """Restores onto the shardings of `abstract_state` (ShapeDtypeStructs with .sharding)."""
        step = self.latest_step() if step is None else step
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = with_data and os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            items["data"] = ocp.args.JsonRestore()
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
