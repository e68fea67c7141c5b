"""Image and video preprocessing for InternVL2: dynamic high-resolution tiling and ImageNet normalisation.

This mirrors the preprocessing published on the InternVL2 model cards
(``build_transform``, ``find_closest_aspect_ratio``, ``dynamic_preprocess``,
``load_image``, ``get_index``, ``load_video``) so that the Paddle model sees exactly
the pixels the original PyTorch model was trained and evaluated on, without
needing torch or torchvision.
"""

import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ...extras import require

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Grid = Tuple[int, int]  # (columns, rows) of square tiles
ImageInput = Union[str, os.PathLike, Image.Image]


class ImageLoadError(ValueError):
    """An image path or file the user gave cannot be read; raised instead of PIL's varied errors."""


def candidate_grids(min_num: int, max_num: int) -> List[Grid]:
    """All grids with ``min_num <= columns * rows <= max_num``, fewest tiles first.

    The model card collects the grids in a Python ``set`` and sorts them by tile
    count only, so grids with the same count stay in CPython's set iteration
    order. That order decides exact ties between equal-count grids (possible only
    when ``min_num > 1``), so the set is filled in the model card's insertion
    order to reproduce it.
    """
    grids = set()
    for limit in range(min_num, max_num + 1):
        for columns in range(1, limit + 1):
            for rows in range(1, limit + 1):
                if min_num <= columns * rows <= max_num:
                    grids.add((columns, rows))
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def find_closest_aspect_ratio(
    aspect_ratio: float, target_ratios: Sequence[Grid], width: int, height: int, image_size: int
) -> Grid:
    """Pick the grid whose width/height ratio is closest to ``aspect_ratio``.

    On an exact tie the later (larger) grid wins only while the image has more
    than half the pixels of that grid, so small images are not blown up into
    many tiles.
    """
    best_diff = float("inf")
    best_grid = (1, 1)
    area = width * height
    for columns, rows in target_ratios:
        diff = abs(aspect_ratio - columns / rows)
        if diff < best_diff:
            best_diff = diff
            best_grid = (columns, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * columns * rows:
            best_grid = (columns, rows)
    return best_grid


def get_tile_grid(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448) -> Grid:
    """The (columns, rows) grid ``dynamic_preprocess`` uses, without touching any pixels.

    Useful to count image tokens or tiles before loading an image.
    """
    return find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num), width, height, image_size)


def dynamic_preprocess(
    image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = False
) -> List[Image.Image]:
    """Cut an image into ``image_size`` square tiles on the grid closest to its aspect ratio.

    Tiles come row by row; with ``use_thumbnail`` and more than one tile, a
    downscaled copy of the whole image is appended so the model also sees the
    global layout.
    """
    width, height = image.size
    columns, rows = get_tile_grid(width, height, min_num, max_num, image_size)
    logger.debug("tiling a %dx%d image on a %dx%d grid", width, height, columns, rows)

    # PIL's default filter (bicubic for RGB) as in the model card.
    resized = image.resize((columns * image_size, rows * image_size))
    tiles = []
    for index in range(columns * rows):
        left = (index % columns) * image_size
        top = (index // columns) * image_size
        tiles.append(resized.crop((left, top, left + image_size, top + image_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def build_transform(input_size: int) -> Callable[[Image.Image], np.ndarray]:
    """Return the model card's per-tile transform as ``PIL image -> float32 CHW array``.

    torchvision's ``Resize`` on a PIL image is a plain PIL bicubic resize (it
    returns the image untouched when the size already matches, and PIL always
    antialiases, so torchvision's ``antialias`` flag has no effect), and
    ``ToTensor``/``Normalize`` are float32 ``/255`` then ``(x - mean) / std``:
    doing the same in PIL and float32 numpy gives identical numbers.
    """
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    size = (input_size, input_size)

    def transform(image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        return (pixels - mean) / std

    return transform


def open_image(image_file: ImageInput) -> Image.Image:
    """Open a path (or take a PIL image) as a fully decoded RGB image.

    PIL decodes lazily, so the conversion happens here, inside the error
    handling: a truncated file fails now with a clear ``ImageLoadError`` rather
    than later, deep inside tiling.
    """
    if isinstance(image_file, Image.Image):
        name = getattr(image_file, "filename", "") or "<PIL image>"
        try:
            return image_file.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageLoadError(f"cannot read image '{name}': not a valid image ({error})") from error

    name = os.fspath(image_file)
    try:
        with Image.open(name) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise ImageLoadError(f"cannot read image '{name}': file not found") from error
    except IsADirectoryError as error:
        raise ImageLoadError(f"cannot read image '{name}': it is a directory, not a file") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"cannot read image '{name}': not a valid image file ({error})") from error


def image_to_pixel_values(image_file: ImageInput, input_size: int = 448, max_num: int = 12) -> np.ndarray:
    """Tile and normalise one image into a float32 ``[tiles, 3, input_size, input_size]`` array.

    The numpy twin of ``load_image``, for data pipelines that should not depend on paddle.
    """
    image = open_image(image_file)
    tiles = dynamic_preprocess(image, image_size=input_size, use_thumbnail=True, max_num=max_num)
    transform = build_transform(input_size)
    return np.stack([transform(tile) for tile in tiles])


def load_image(image_file: ImageInput, input_size: int = 448, max_num: int = 12):
    """Model-card ``load_image``: a float32 ``paddle.Tensor`` of shape ``[tiles, 3, input_size, input_size]``."""
    import paddle  # imported here so the numpy path above works without paddle

    return paddle.to_tensor(image_to_pixel_values(image_file, input_size=input_size, max_num=max_num))


# --- video ---------------------------------------------------------------------------
VIDEO_BACKENDS = ("decord", "opencv")


class VideoLoadError(ValueError):
    """A video the user gave cannot be read, or a time bound lies outside it."""


def get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    """The model card's frame choice: the middle of each of ``num_segments`` equal segments.

    The segments split ``[start, end]`` (``bound`` in seconds, else the whole video)
    converted to frame numbers with Python's ``round`` and clipped to
    ``[first_idx, max_frame]`` (``max_frame`` is the last frame's index, not the
    count). With more segments than frames, frames repeat, as in the official code.
    """
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    offsets = np.round(seg_size * np.arange(num_segments))
    return (start_idx + seg_size / 2 + offsets).astype(np.int64)


def _frame_chooser(path, bound, num_segments):
    """(num_frames, fps) -> frame indices, refusing a video without frames or a bound outside it."""

    def choose(num_frames, fps):
        if num_frames < 1:
            raise VideoLoadError(f"cannot read video '{path}': it contains no video frames")
        if not fps > 0:
            raise VideoLoadError(f"cannot read video '{path}': it reports no frame rate")
        if bound:
            start, end = bound
            if end < start:
                raise VideoLoadError(f"cannot read video '{path}': bound ({start:g}, {end:g}) s ends before it starts")
            duration = num_frames / fps
            first, last = max(0, round(start * fps)), min(round(end * fps), num_frames - 1)
            if first > last:
                raise VideoLoadError(f"cannot read video '{path}': bound ({start:g}, {end:g}) s is outside the video "
                                     f"(0 to {duration:.2f} s)")
        return get_index(bound, fps, num_frames - 1, first_idx=0, num_segments=num_segments)

    return choose


def _decord_frames(path, choose):
    """RGB frames read by decord, one seek per frame as in the model card."""
    decord = require("decord", "video")

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError) as error:
        raise VideoLoadError(f"cannot read video '{path}': not a readable video file ({error})") from error
    indices = choose(len(reader), float(reader.get_avg_fps()))
    try:
        return [reader[int(index)].asnumpy() for index in indices]
    except (RuntimeError, IndexError, decord.DECORDError) as error:
        raise VideoLoadError(f"cannot read video '{path}': decoding failed ({error})") from error


def _opencv_frames(path, choose):
    """RGB frames read by OpenCV, for platforms without a decord wheel.

    The same metadata (frame count, average fps) picks the same frames as decord.
    Frames are decoded in order rather than seeked to, because OpenCV's seeking
    is not frame-exact for every codec; a file that ends before the frame count
    it declares is an error, never a silent shift.
    """
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise VideoLoadError(f"cannot read video '{path}': not a readable video file")
        indices = choose(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), float(capture.get(cv2.CAP_PROP_FPS)))
        wanted, frames = set(int(i) for i in indices), {}
        for index in range(max(wanted) + 1):
            if not capture.grab():
                raise VideoLoadError(f"cannot read video '{path}': only {index} of its frames could be decoded")
            if index in wanted:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise VideoLoadError(f"cannot read video '{path}': frame {index} could not be decoded")
                frames[index] = np.ascontiguousarray(bgr[:, :, ::-1])
        return [frames[int(index)] for index in indices]
    finally:
        capture.release()


def _pick_backend(backend):
    if backend is not None:
        if backend not in VIDEO_BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(VIDEO_BACKENDS)}")
        return backend
    try:
        import decord  # noqa: F401
    except ImportError:
        logger.info("decord is not installed; reading videos with OpenCV")
        return "opencv"
    return "decord"


def read_video_frames(video_path, bound=None, num_segments=32, backend: Optional[str] = None) -> List[np.ndarray]:
    """The model card's ``num_segments`` frames of a video as RGB ``uint8`` ``[H, W, 3]`` arrays.

    ``backend`` is "decord" (the model card's reader, the default when installed) or "opencv".
    """
    if not isinstance(num_segments, int) or num_segments < 1:
        raise ValueError(f"num_segments must be a positive integer, got {num_segments!r}")
    path = os.fspath(video_path)
    if not os.path.exists(path):
        raise VideoLoadError(f"cannot read video '{path}': file not found")
    if os.path.isdir(path):
        raise VideoLoadError(f"cannot read video '{path}': it is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise VideoLoadError(f"cannot read video '{path}': the file is empty")
    read = _decord_frames if _pick_backend(backend) == "decord" else _opencv_frames
    return read(path, _frame_chooser(path, bound, num_segments))


def video_to_pixel_values(video_path, bound=None, input_size: int = 448, max_num: int = 1, num_segments: int = 32,
                          backend: Optional[str] = None) -> Tuple[np.ndarray, List[int]]:
    """The numpy twin of ``load_video``: float32 ``[tiles, 3, input_size, input_size]`` and tiles per frame."""
    if max_num < 1:
        raise ValueError(f"max_num must be at least 1, got {max_num}")
    transform = build_transform(input_size)
    pixel_values, num_patches_list = [], []
    for frame in read_video_frames(video_path, bound, num_segments, backend):
        tiles = dynamic_preprocess(Image.fromarray(frame), image_size=input_size, use_thumbnail=True, max_num=max_num)
        pixel_values.extend(transform(tile) for tile in tiles)
        num_patches_list.append(len(tiles))
    return np.stack(pixel_values), num_patches_list


def load_video(video_path, bound=None, input_size: int = 448, max_num: int = 1, num_segments: int = 32,
               backend: Optional[str] = None):
    """Model-card ``load_video``: ``(pixel_values, num_patches_list)`` for ``num_segments`` frames.

    ``pixel_values`` is a float32 ``paddle.Tensor`` ``[tiles, 3, input_size, input_size]``,
    each frame tiled like an image with up to ``max_num`` tiles; ``bound`` is
    ``(start, end)`` in seconds. Ask about it with one ``<image>`` per frame:
    ``"".join(f"Frame{i + 1}: <image>\\n" for i in range(len(num_patches_list))) + question``.
    """
    import paddle

    pixel_values, num_patches_list = video_to_pixel_values(video_path, bound, input_size, max_num, num_segments,
                                                           backend)
    return paddle.to_tensor(pixel_values), num_patches_list
