"""Images and videos of benchmark questions turned into the model's pixel tiles.

As in the official evaluation: with ``--dynamic`` an image is tiled like ``load_image`` (up
to ``max_num`` tiles plus the thumbnail when the config uses one); without it the whole image
is resized to a single ``input_size`` tile. Video frames are the model card's (``processing``'s
``read_video_frames``/``get_index``: middle of ``num_segments`` equal segments, which is also
``evaluate_mvbench.py``'s choice) and each frame is tiled the same way.
"""
import base64
import io
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from paddlemix.models.internvl2.processing import (ImageLoadError, build_transform, dynamic_preprocess, get_index,
                                                   open_image, read_video_frames)

Pixels = Tuple[np.ndarray, List[int]]  # [tiles, 3, H, W] float32 and the tile count of each image


@dataclass(frozen=True)
class PixelSettings:
    dynamic: bool
    max_num: int
    input_size: int
    use_thumbnail: bool
    num_segments: int = 16


def image_tiles(image: Image.Image, settings: PixelSettings) -> np.ndarray:
    transform = build_transform(settings.input_size)
    if settings.dynamic:
        parts = dynamic_preprocess(image, image_size=settings.input_size, use_thumbnail=settings.use_thumbnail,
                                   max_num=settings.max_num)
    else:
        parts = [image]
    return np.stack([transform(part) for part in parts])


def frames_to_pixels(frames: Sequence[Image.Image], settings: PixelSettings) -> Pixels:
    per_frame = [image_tiles(frame, settings) for frame in frames]
    return np.concatenate(per_frame), [len(tiles) for tiles in per_frame]


@dataclass(frozen=True)
class ImageFile:
    path: str

    @property
    def files(self):
        return (self.path,)

    def pixels(self, settings: PixelSettings) -> Pixels:
        return frames_to_pixels([open_image(self.path)], settings)


@dataclass(frozen=True)
class EncodedImage:
    """A base64 image embedded in the annotation file (MMBench)."""

    data: str
    name: str

    files = ()

    def pixels(self, settings: PixelSettings) -> Pixels:
        try:
            image = Image.open(io.BytesIO(base64.b64decode(self.data))).convert("RGB")
        except (OSError, ValueError) as error:
            raise ImageLoadError(f"cannot decode the image of {self.name} ({error})") from error
        return frames_to_pixels([image], settings)


def read_frame_folder(path: str, bound, num_segments: int, fps: float = 3) -> List[Image.Image]:
    """Pre-extracted frames ``00001.jpg``... (MVBench's TVQA clips, stored at 3 fps, numbered from 1)."""
    indices = get_index(bound, fps, len(os.listdir(path)), first_idx=1, num_segments=num_segments)
    return [open_image(os.path.join(path, f"{i:05d}.jpg")) for i in indices]


@dataclass(frozen=True)
class VideoClip:
    path: str
    bound: Optional[Tuple[float, float]] = None
    frame_folder: bool = False

    @property
    def files(self):
        return (self.path,)

    def pixels(self, settings: PixelSettings) -> Pixels:
        if self.frame_folder:
            frames = read_frame_folder(self.path, self.bound, settings.num_segments)
        else:
            frames = [Image.fromarray(f) for f in read_video_frames(self.path, self.bound, settings.num_segments)]
        return frames_to_pixels(frames, settings)
