"""Streaming safetensors reading and name-mapped conversion into Flax parameter trees.

Checkpoints of the released models are large (Allegro's DiT 2.8B, T5 v1.1 XXL 4.7B parameters), so
nothing here loads a whole file: `SafetensorsCheckpoint` memory-maps each file (one file or a sharded
folder with a `*.safetensors.index.json`) and hands out one tensor at a time, and `convert` writes
each converted tensor straight into its slot of a preallocated output tree. Host memory holds the
output once; the mapped input lives in the page cache, which the OS can drop.

No torch is needed: the format is an 8-byte header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then raw little-endian data.

A converter is a mapping {target path "a/b/c": Tensor | Stacked} plus the target shapes from
`jax.eval_shape` of the model's init. `convert` checks it whole before reading any tensor data:
checkpoint tensors that are missing, left unused, or of the wrong shape are all named in one
`ConversionError`.
"""

import dataclasses
import glob
import json
import os
from typing import Callable, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class ConversionError(ValueError):
    """A checkpoint does not fit the model: names every missing, unused and mismatched tensor."""


class SafetensorsCheckpoint:
    """Lazy, read-only view of the tensors in a .safetensors file or a folder of them."""

    def __init__(self, path: str):
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
            if not files:
                raise FileNotFoundError(f"no *.safetensors file in {path}")
        elif os.path.isfile(path):
            files = [path]
        else:
            raise FileNotFoundError(f"{path} is neither a .safetensors file nor a folder of them")
        self.path = path
        self._entries = {}
        for file in files:
            for name, entry in _read_header(file).items():
                if name in self._entries:
                    raise ConversionError(f"tensor {name!r} appears in both {self._entries[name][0]} "
                                          f"and {file}")
                self._entries[name] = (file, entry)
        self._maps = {}

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name][1]["shape"])

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array in its stored dtype (no copy yet)."""
        file, entry = self._entries[name]
        if file not in self._maps:
            self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
        start, end = entry["data_offsets"]
        data = self._maps[file][entry["base"] + start: entry["base"] + end]
        return data.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


class StateDictCheckpoint:
    """The same read-only view over an in-memory {name: array or torch tensor} state dict (a PyTorch
    `.pt` file that `torch.load` has read, as LaVie releases its models); `path` names it in errors."""

    def __init__(self, arrays: Mapping[str, np.ndarray], path: str = "the state dict"):
        self.path = path
        self._arrays = dict(arrays)

    def keys(self) -> list[str]:
        return sorted(self._arrays)

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self._arrays[name]))

    def read(self, name: str) -> np.ndarray:
        tensor = self._arrays[name]
        if hasattr(tensor, "detach"):
            # numpy has no bfloat16: go through float32; `convert` casts to the target dtype.
            return tensor.detach().cpu().float().numpy()
        return np.asarray(tensor)


def _read_header(file: str) -> dict:
    with open(file, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    header.pop("__metadata__", None)
    for name, entry in header.items():
        if entry["dtype"] not in _DTYPES:
            raise ConversionError(f"{file}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        entry["base"] = 8 + header_size
    return header


def storage_dtype(name: str):
    """The numpy dtype a converter writes for `--dtype` "float32" or "bfloat16"."""
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {name!r} is not supported; choose float32 or bfloat16")
    return np.float32 if name == "float32" else ml_dtypes.bfloat16


def read_config_json(directory: str) -> dict:
    """`directory/config.json`, the model config every released checkpoint folder carries."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; the converter reads the model's config from it")
    with open(path) as f:
        return json.load(f)


def _identity(array):
    return array


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One checkpoint tensor, with the transform that takes it to the Flax layout
    (e.g. `linear` for a torch Linear weight -> Dense kernel)."""

    name: str
    transform: Callable[[np.ndarray], np.ndarray] = _identity


@dataclasses.dataclass(frozen=True)
class Stacked:
    """Tensors stacked on a new leading axis: one per layer of an `nn.scan` stack."""

    parts: tuple[Tensor, ...]


def linear(weight_oi):
    """torch Linear (out, in) -> Dense kernel (in, out)."""
    return weight_oi.T


def conv(weight_oi_spatial):
    """torch Conv{1,2,3}d (out, in, *k) -> Flax (*k, in, out)."""
    ndim = weight_oi_spatial.ndim
    return weight_oi_spatial.transpose(tuple(range(2, ndim)) + (1, 0))


def flatten_tree(tree, prefix: str = "") -> dict:
    """{"a/b/c": leaf} for a nested dict (Flax params)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_tree(flat: dict) -> dict:
    tree = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _source_names(source) -> list[str]:
    return [part.name for part in source.parts] if isinstance(source, Stacked) else [source.name]


def _converted_shape(part: Tensor, source_shape) -> tuple[int, ...]:
    """The shape `part.transform` gives a tensor of `source_shape`, computed on a zero-stride view
    (no memory for the tensor itself)."""
    return tuple(part.transform(np.broadcast_to(np.float32(0), source_shape)).shape)


def check_mapping(source_shapes: dict, mapping: dict, target_shapes: dict, *, source: str = "the checkpoint",
                  ignore_unused: Callable[[str], bool] = lambda name: False) -> None:
    """Raises `ConversionError` naming every problem of `mapping` between checkpoint tensors
    {name: shape} and model parameters {path: shape}, before any tensor is read: parameters without
    a source, sources the checkpoint lacks, checkpoint tensors left unused (unless `ignore_unused`
    says they may be), and tensors that convert to the wrong shape."""
    target_shapes = {path: tuple(getattr(s, "shape", s)) for path, s in target_shapes.items()}
    problems = []
    unmapped = sorted(set(target_shapes) - set(mapping))
    if unmapped:
        problems.append(f"model parameters with no source in the converter: {unmapped}")
    unknown = sorted(set(mapping) - set(target_shapes))
    if unknown:
        problems.append(f"converter targets that the model does not have: {unknown}")
    used = {name for src in mapping.values() for name in _source_names(src)}
    missing = sorted(name for name in used if name not in source_shapes)
    if missing:
        problems.append(f"tensors missing from {source}: {missing}")
    unused = sorted(name for name in source_shapes if name not in used and not ignore_unused(name))
    if unused:
        problems.append(f"tensors in {source} that the model has no place for: {unused}")
    mismatched = []
    for path in sorted(set(mapping) & set(target_shapes)):
        src, shape = mapping[path], target_shapes[path]
        parts = src.parts if isinstance(src, Stacked) else (src,)
        if isinstance(src, Stacked) and len(parts) != shape[0]:
            mismatched.append(f"{path} stacks {shape[0]} layers but the converter names {len(parts)}")
        part_shape = shape[1:] if isinstance(src, Stacked) else shape
        for part in parts:
            if part.name not in source_shapes:
                continue
            converted = _converted_shape(part, source_shapes[part.name])
            if converted != tuple(part_shape):
                mismatched.append(f"{part.name} {tuple(source_shapes[part.name])} -> {path} expects "
                                  f"{tuple(part_shape)} but converts to {converted}")
    if mismatched:
        problems.append("tensors of the wrong shape: " + "; ".join(mismatched))
    if problems:
        raise ConversionError("; ".join(problems))


def convert(checkpoint: SafetensorsCheckpoint, mapping: dict, target_shapes: dict, *, dtype=np.float32,
            ignore_unused: Callable[[str], bool] = lambda name: False, progress=None) -> dict:
    """Fills a params tree {path: np.ndarray of `dtype`} from `checkpoint` through `mapping`.

    `target_shapes` is {path: shape} (or anything with `.shape`) for every parameter of the model;
    `ignore_unused(name)` marks checkpoint tensors that may stay unused (buffers the model computes
    itself). The whole mapping is checked (`check_mapping`) before the first tensor is read.
    """
    check_mapping({name: checkpoint.shape(name) for name in checkpoint.keys()}, mapping, target_shapes,
                  source=checkpoint.path, ignore_unused=ignore_unused)
    out = {}
    for path in sorted(mapping):
        source = mapping[path]
        shape = tuple(getattr(target_shapes[path], "shape", target_shapes[path]))
        array = np.empty(shape, dtype)
        if isinstance(source, Stacked):
            for index, part in enumerate(source.parts):
                array[index] = part.transform(checkpoint.read(part.name))
        else:
            array[...] = source.transform(checkpoint.read(source.name))
        out[path] = array
        if progress is not None:
            progress(path)
    return unflatten_tree(out)
