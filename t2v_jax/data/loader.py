"""From `config.data` to batches: build the tfds dataset once, then read it with grain.

grain reads the array_record files through tfds' data source (no TensorFlow), shuffles with a seed,
shards by JAX process and batches; its iterator state is a few bytes of JSON, so training resumes on
exactly the next batch. `batch_size` is per process: the global batch is batch_size * jax.process_count().

config.data fields: name ("bouncing_digits" | "video_folder"), dir (tfds data_dir), num_frames, canvas,
train_size, test_size, seed (dataset generation), folder and captions_file (video_folder only); optional
frame_stride (video_folder, default 1), frame_rate and scale (bouncing_digits, default 1: the same clips
rendered at that many times the frame rate and size, for cascades) and worker_count (grain worker
processes, default 0).
"""

import grain
import ml_collections
import numpy as np

from t2v_jax.checks import ConfigError, one_of, require
from t2v_jax.data import bouncing_digits, video_folder

DATASET_NAMES = ("bouncing_digits", "video_folder")
LABEL_KEYS = ("digit", "colour", "direction")
READ_THREADS = 4
PREFETCH_RECORDS = 128


def bouncing_digits_config(**overrides) -> ml_collections.ConfigDict:
    """config.data for Bouncing Digits (16 px canvas, 8000 training videos), `overrides` applied."""
    cfg = ml_collections.ConfigDict(dict(
        name="bouncing_digits", dir="data_cache", num_frames=8, canvas=16, train_size=8000,
        test_size=512, seed=0, folder="", captions_file="", worker_count=0))
    cfg.update(overrides)
    return cfg


def check_caption_budget(config) -> None:
    """config.text.max_length must hold the dataset's longest caption plus eos: pipelines refuse longer
    prompts, so a budget below the test-set captions would refuse the very prompts it is judged on."""
    if config.data.name != "bouncing_digits":
        return
    longest = max(len(bouncing_digits.caption(d, c, m)) for d in range(10)
                  for c in bouncing_digits.COLOURS for m in bouncing_digits.DIRECTIONS)
    text_length = config.text.max_length
    require(text_length > longest, "text.max_length",
            f"{text_length} tokens cannot hold the longest Bouncing Digits caption ({longest} bytes + eos); "
            f"set at least {longest + 1}")


def validate_data_config(data_cfg) -> None:
    """The dataset name, and the video geometry Bouncing Digits can render."""
    one_of(data_cfg.name, "data.name", DATASET_NAMES)
    if data_cfg.name == "bouncing_digits":
        try:
            bouncing_digits.validate_geometry(data_cfg.num_frames, data_cfg.canvas)
        except ValueError as error:
            raise ConfigError(f"config.data ({data_cfg.num_frames} frames, {data_cfg.canvas} px): {error}") from None


def make_builder(data_cfg):
    """The tfds builder that `data_cfg` describes (nothing is generated yet)."""
    if data_cfg.name == "bouncing_digits":
        config = bouncing_digits.make_config(
            num_frames=data_cfg.num_frames,
            canvas=data_cfg.canvas,
            train_size=data_cfg.train_size,
            test_size=data_cfg.test_size,
            seed=data_cfg.seed,
            frame_rate=data_cfg.get("frame_rate", 1),
            scale=data_cfg.get("scale", 1),
        )
        return bouncing_digits.BouncingDigits(data_dir=data_cfg.dir, config=config, file_format="array_record")
    if data_cfg.name == "video_folder":
        config = video_folder.make_config(
            data_cfg.folder,
            captions_file=data_cfg.captions_file,
            num_frames=data_cfg.num_frames,
            canvas=data_cfg.canvas,
            frame_stride=data_cfg.get("frame_stride", 1),
            test_size=data_cfg.test_size,
        )
        return video_folder.VideoFolder(data_dir=data_cfg.dir, config=config, file_format="array_record")
    raise ValueError(f"config.data.name must be one of {DATASET_NAMES}, got {data_cfg.name!r}")


def build_dataset(data_cfg):
    """Generates the dataset into data_cfg.dir if it is not there yet (a few ms when it is); returns the builder.

    With several JAX processes sharing one data dir, build before launching (or on process 0 and wait):
    tfds does not lock against concurrent writers.
    """
    builder = make_builder(data_cfg)
    builder.download_and_prepare()
    return builder


class _DecodeRecord(grain.transforms.Map):
    """Text comes back from tfds as bytes; keep only what the model and the judge use."""

    def map(self, record):
        example = {"caption": record["caption"].decode("utf-8")}
        for key in ("video", "latent_moments"):
            if key in record:
                example[key] = record[key]
        for key in LABEL_KEYS:
            if key in record:
                example[key] = np.int32(record[key])
        return example


class _ScaleVideo(grain.transforms.Map):
    """uint8 [0, 255] -> float32 [-1, 1], once per batch rather than per record."""

    def map(self, batch):
        if "video" in batch:
            batch["video"] = batch["video"].astype(np.float32) / 127.5 - 1.0
        return batch


def data_source(data_cfg, split):
    """The grain random-access source of one split (the dataset is built first if missing)."""
    return build_dataset(data_cfg).as_data_source(split=split)


def make_loader(data_cfg, split, *, batch_size, seed, num_epochs=None, shuffle=True, drop_remainder=True,
                source=None):
    """grain DataLoader over one split of the dataset that `data_cfg` describes (built first if missing).

    Batches are dict(video=float32 (B, T, H, W, 3) in [-1, 1], caption=str array (B,)) plus int32 digit,
    colour and direction for bouncing_digits. num_epochs=None repeats forever. `iter(loader)` has
    get_state() -> JSON bytes and set_state(bytes) for exact resume. `source` replaces the split's own
    records with a source over the same videos (a cache of their latents passes "latent_moments" through).
    """
    source = data_source(data_cfg, split) if source is None else source
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[
            _DecodeRecord(),
            grain.transforms.Batch(batch_size, drop_remainder=drop_remainder),
            _ScaleVideo(),
        ],
        worker_count=data_cfg.get("worker_count", 0),
        read_options=grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH_RECORDS),
    )
