"""The training split encoded once by a frozen first stage, so the second stage skips the encoder.

Without a cache, every DiT step runs the VAE encoder on its batch: on the CPU that is about half the
step (measured in docs/latent_diffusion_study.md). The cache stores each video's posterior moments
(mean and log-variance), not one sample of them, so a step that draws its latent from the cached
moments trains on the same distribution, with the same random numbers, as one that encodes.

The cache is a grain data source: the sampler, shuffling and exact resume of `make_loader` are
unchanged, only the record's "video" becomes "latent_moments". It is saved beside the stage's
checkpoints, keyed by the source's length and the moments' shape, so a resumed run reads it back
instead of encoding again.
"""

import os

import jax
import numpy as np
from tqdm.auto import tqdm

CACHE_FILE = "latent_moments.npy"


def encode_source(source, encode_moments, *, batch_size: int, directory: str, progress: bool = True) -> np.ndarray:
    """(N, 2, *latent) float32 moments of every record's video, in record order; read from
    `directory` when a cache of the same length and shape is there.

    `encode_moments(video_bthwc) -> (mean, logvar)` must be jitted by the caller.
    """
    path = os.path.join(directory, CACHE_FILE)
    video_thwc = np.asarray(source[0]["video"])
    mean_shape = jax.eval_shape(encode_moments, jax.ShapeDtypeStruct((1, *video_thwc.shape), np.float32))[0].shape
    shape = (len(source), 2, *mean_shape[1:])
    if os.path.exists(path):
        cached = np.load(path, mmap_mode="r")
        if cached.shape == shape:
            return np.asarray(cached)
    moments = np.empty(shape, np.float32)
    starts = range(0, len(source), batch_size)
    for start in tqdm(starts, desc="encode training set", disable=not progress):
        indices = list(range(start, min(start + batch_size, len(source))))
        # Pad the last batch to full size so the encoder compiles once.
        padded = indices + [indices[-1]] * (batch_size - len(indices))
        video_bthwc = np.stack([source[i]["video"] for i in padded]).astype(np.float32) / 127.5 - 1.0
        mean, logvar = jax.device_get(encode_moments(video_bthwc))
        moments[start:start + len(indices), 0] = mean[:len(indices)]
        moments[start:start + len(indices), 1] = logvar[:len(indices)]
    os.makedirs(directory, exist_ok=True)
    np.save(path + ".tmp.npy", moments)
    os.replace(path + ".tmp.npy", path)
    return moments


class CachedLatentSource:
    """A grain RandomAccessDataSource: the wrapped source's records with "video" swapped for the
    cached "latent_moments" (2, *latent) float32.

    The records' other fields (captions, labels) are read once here and kept, so a training step
    does not read and decode a video only to drop it (0.25 ms a record on the CPU, about 4% of a
    quickstart DiT step).
    """

    def __init__(self, source, moments):
        if len(source) != len(moments):
            raise ValueError(f"the cache holds {len(moments)} videos but the source has {len(source)}")
        self.source = source
        self.moments = moments
        self.records = [{key: value for key, value in source[index].items() if key != "video"}
                        for index in range(len(source))]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return dict(self.records[index], latent_moments=self.moments[index])

    def __repr__(self):
        return f"CachedLatentSource({self.source!r}, {self.moments.shape})"
