"""VideoFolder: a tfds builder over your own clips, a folder of videos plus a tab-separated captions file.

captions file (UTF-8, default `captions.tsv` inside the folder), one clip per line:

    clip_0001.mp4<TAB>a dog runs along the beach

The filename is relative to the folder; the caption is everything after the first tab. Each clip is scaled
to cover a canvas x canvas square and centre-cropped (inside ffmpeg), then `num_frames` frames are taken
every `frame_stride` frames from the middle of the clip. The last `test_size` lines form the test split.

Bad data never stops a build: a clip that cannot be decoded (or is missing), one with too few frames, and a
line with an empty caption are skipped and counted; videos in the folder that no line names are counted as
uncaptioned. The counts are logged and kept in `builder.info.metadata["counts"]`.
"""

import dataclasses
import hashlib
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from t2v_jax.io import video as video_io

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
SKIP_REASONS = ("unreadable", "too_few_frames", "empty_caption")


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """Where the clips are and how they are cut; the name hashes the folder so builds never collide."""

    folder: str = ""
    captions_file: str = "captions.tsv"
    num_frames: int = 16
    canvas: int = 32
    frame_stride: int = 1
    test_size: int = 0


def make_config(folder, *, captions_file="captions.tsv", num_frames=16, canvas=32, frame_stride=1, test_size=0):
    """Validated config for one folder; captions_file is relative to the folder unless absolute."""
    folder = os.path.abspath(os.fspath(folder))
    captions_path = os.path.join(folder, captions_file)
    if not os.path.isfile(captions_path):
        raise ValueError(
            f"captions file {captions_path} not found (config.data.folder / config.data.captions_file)"
        )
    if num_frames < 1 or canvas < 2 or frame_stride < 1 or test_size < 0:
        raise ValueError(
            f"need num_frames >= 1, canvas >= 2, frame_stride >= 1, test_size >= 0; got {num_frames}, {canvas}, "
            f"{frame_stride}, {test_size}"
        )
    digest = hashlib.sha1(captions_path.encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(folder)) or "root"
    return VideoFolderConfig(
        name=f"{stem}_{digest}_f{num_frames}_c{canvas}_stride{frame_stride}_test{test_size}",
        description=f"{captions_path}: {num_frames} frames every {frame_stride} at {canvas}x{canvas}",
        folder=folder,
        captions_file=captions_path,
        num_frames=num_frames,
        canvas=canvas,
        frame_stride=frame_stride,
        test_size=test_size,
    )


def read_captions(captions_path):
    """[(filename, caption)] in file order; blank lines are ignored, a line without a tab has no caption."""
    entries = []
    with open(captions_path, encoding="utf-8") as captions_file:
        for line in captions_file:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            filename, _, text = line.partition("\t")
            entries.append((filename.strip(), text.strip()))
    return entries


def sample_clip(frames_thwc, num_frames, frame_stride):
    """num_frames frames every frame_stride from the middle of the clip, or None if it is too short."""
    span = (num_frames - 1) * frame_stride + 1
    if len(frames_thwc) < span:
        return None
    start = (len(frames_thwc) - span) // 2
    return frames_thwc[start : start + span : frame_stride]


class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """tfds builder for a captioned folder; pass config=make_config(...) and file_format="array_record"."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        config = self.builder_config
        video_shape = (config.num_frames, config.canvas, config.canvas, 3)
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(
                        shape=video_shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "caption": tfds.features.Text(),
                    "filename": tfds.features.Text(),
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        entries = read_captions(config.captions_file)
        named = {filename for filename, _ in entries}
        uncaptioned = sorted(
            name
            for name in os.listdir(config.folder)
            if name.lower().endswith(VIDEO_EXTENSIONS) and name not in named
        )
        self.info.metadata["counts"] = {"uncaptioned": len(uncaptioned)}
        if uncaptioned:
            logger.warning("%s: %d videos have no caption line and are left out", config.folder, len(uncaptioned))
        num_train = max(len(entries) - config.test_size, 0)
        splits = {"train": list(enumerate(entries))[:num_train]}
        if config.test_size:
            splits["test"] = list(enumerate(entries))[num_train:]
        return {split: self._generate_examples(split, lines) for split, lines in splits.items()}

    def _generate_examples(self, split, numbered_entries):
        config = self.builder_config
        counts = dict.fromkeys(("written",) + SKIP_REASONS, 0)
        for line_index, (filename, text) in numbered_entries:
            if not text:
                counts["empty_caption"] += 1
                continue
            path = os.path.join(config.folder, filename)
            try:
                frames_thwc = video_io.read_video(path, size=(config.canvas, config.canvas))
            except (OSError, RuntimeError, ValueError) as error:
                counts["unreadable"] += 1
                logger.warning("skipping unreadable %s: %s", path, (str(error) or repr(error)).splitlines()[0])
                continue
            clip_thwc = sample_clip(frames_thwc, config.num_frames, config.frame_stride)
            if clip_thwc is None:
                counts["too_few_frames"] += 1
                continue
            counts["written"] += 1
            yield line_index, dict(video=clip_thwc, caption=text, filename=filename)
        self.info.metadata["counts"][split] = counts
        skipped = sum(counts[reason] for reason in SKIP_REASONS)
        logger.log(
            logging.WARNING if skipped else logging.INFO,
            "video_folder %s/%s: wrote %d clips, skipped %d (%s)",
            config.name,
            split,
            counts["written"],
            skipped,
            ", ".join(f"{reason}={counts[reason]}" for reason in SKIP_REASONS),
        )
