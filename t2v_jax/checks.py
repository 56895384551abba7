"""Config errors and the checks every system shares; imports nothing of the project.

Each module validates its own config section (the mesh in `parallel/mesh.py`, the dataset in
`data/loader.py`, diffusion and sampling in `diffusion/samplers.py`, a system's models in its
`systems/` module) with these helpers, so every message has one shape: the field, what is wrong,
and what is allowed.
"""


DTYPES = ("float32", "bfloat16")  # compute dtypes a model config may name


class ConfigError(ValueError):
    """A config field holds a value the system cannot run with."""


def require(condition: bool, field: str, message: str) -> None:
    """Raises ConfigError("config.<field>: <message>") unless `condition` holds."""
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def one_of(value, field: str, allowed) -> None:
    require(value in allowed, field, f"{value!r} is not allowed; choose one of {list(allowed)}")


def video_size(data_cfg) -> tuple[int, int]:
    """(height, width) in pixels: `canvas` is the height, and the width too unless `width` is set."""
    return data_cfg.canvas, data_cfg.get("width", data_cfg.canvas)


def check_heads(num_heads: int, field: str, mesh_sizes: dict) -> None:
    """Attention heads split over the tensor axis."""
    require(num_heads > 0, field, f"must be positive, got {num_heads}")
    require(num_heads % mesh_sizes["tensor"] == 0, field,
            f"{num_heads} heads are not divisible by the tensor axis (mesh.shape.tensor={mesh_sizes['tensor']})")


def check_batches(config, mesh_sizes: dict, train_fields) -> None:
    """Each stage's batch splits over the data-parallel axes (data x fsdp)."""
    data_parallel = mesh_sizes["data"] * mesh_sizes["fsdp"]
    for field in train_fields:
        batch = config[field].batch_size
        require(batch % data_parallel == 0, f"{field}.batch_size",
                f"{batch} is not divisible by the data-parallel size {data_parallel} "
                f"(mesh data {mesh_sizes['data']} x fsdp {mesh_sizes['fsdp']})")


def check_caption_budget(prompts, token_counts, max_length: int) -> None:
    """Every prompt's tokens (eos included) must fit `config.text.max_length`: a caption cut short
    would generate a video of another prompt, so no pipeline truncates silently."""
    for i, (prompt, count) in enumerate(zip(prompts, token_counts)):
        if count > max_length:
            shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            raise ValueError(f"prompt {i} ({shown!r}) needs {count} tokens with eos, over the caption budget "
                             f"config.text.max_length={max_length}; shorten it or raise that field")
