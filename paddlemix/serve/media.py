"""Images from a request (data: URLs, or local files under an allowed folder) into the model card's tiles.

Sizes are checked before any pixel is decoded (the base64 length, the file size, the header's
width x height), so an oversized or decompression-bomb image costs nothing. Tiles are kept as
uint8 PIL images; the worker normalises them to float32 only when it runs them (4x less memory
for the queued requests).
"""
import base64
import binascii
import io
import os
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from ..models.internvl2.processing import dynamic_preprocess
from .errors import invalid

# The model card's load_image input_size, and its max_num for video frames (one tile per frame).
TILE_SIZE = 448
VIDEO_FRAME_MAX_NUM = 1


@dataclass(frozen=True)
class MediaLimits:
    max_images: int = 16
    max_image_bytes: int = 20 * 2 ** 20
    max_image_pixels: int = 25_000_000
    max_num: int = 6
    allowed_local_media_path: Optional[str] = None


def image_tiles(url, limits, param, max_num=None):
    """The uint8 448px tiles (thumbnail included) of the image at `url`; a 400 for anything unusable."""
    data = _read_bytes(url, limits, param)
    image = _decode(data, limits, param)
    return dynamic_preprocess(image, max_num=max_num or limits.max_num, image_size=TILE_SIZE, use_thumbnail=True)


def _read_bytes(url, limits, param):
    if url.startswith("data:"):
        return _data_url_bytes(url, limits.max_image_bytes, param)
    if url.startswith(("http://", "https://")):
        raise invalid("remote image URLs are not fetched; send the image as a base64 data: URL", param=param,
                      code="unsupported_url")
    return _local_file_bytes(url, limits, param)


def _data_url_bytes(url, max_bytes, param):
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise invalid("a data: URL must be base64-encoded (data:image/png;base64,...)", param=param,
                      code="invalid_image")
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:  # checked before decoding
        raise _too_large(max_bytes, param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("the image data: URL is not valid base64", param=param, code="invalid_image") from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes, param)
    return data


def _local_file_bytes(url, limits, param):
    """A local path (or file:// URL) is read only from inside --allowed_local_media_path, symlinks resolved."""
    if not limits.allowed_local_media_path:
        raise invalid("local image paths are not allowed on this server (start it with --allowed_local_media_path)",
                      param=param, code="unsupported_url")
    path = unquote(urlparse(url).path) if url.startswith("file://") else url
    root = os.path.realpath(limits.allowed_local_media_path)
    real = os.path.realpath(path)
    if not os.path.isabs(path) or os.path.commonpath([root, real]) != root:
        raise invalid(f"image path {path!r} is not an absolute path inside the allowed media folder", param=param,
                      code="unsupported_url")
    if not os.path.isfile(real):
        raise invalid(f"image file {path!r} does not exist", param=param, code="invalid_image")
    if os.path.getsize(real) > limits.max_image_bytes:
        raise _too_large(limits.max_image_bytes, param)
    with open(real, "rb") as handle:
        return handle.read()


def _decode(data, limits, param):
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise invalid(f"the image has {width}x{height} pixels, more than the {limits.max_image_pixels} "
                              "allowed", param=param, code="image_too_large")
            return image.convert("RGB")  # decodes fully now, so a truncated file fails here
    except Image.DecompressionBombError:
        raise invalid(f"the image has more than the {limits.max_image_pixels} pixels allowed", param=param,
                      code="image_too_large") from None
    except UnidentifiedImageError:
        raise invalid("the image cannot be decoded: unknown image format", param=param, code="invalid_image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise invalid(f"the image cannot be decoded ({error})", param=param, code="invalid_image") from None


def _too_large(max_bytes, param):
    return invalid(f"the image is larger than the {max_bytes} bytes allowed", param=param, code="image_too_large")
