"""Image preprocessing for InternVL2: dynamic high-resolution tiling and ImageNet normalisation.

This mirrors the preprocessing published on the InternVL2 model cards
(``build_transform``, ``find_closest_aspect_ratio``, ``dynamic_preprocess``,
``load_image``) so that the Paddle model sees exactly the pixels the original
PyTorch model was trained and evaluated on, without needing torch or torchvision.
"""

import logging
import os
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image

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
