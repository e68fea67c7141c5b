"""Tests for InternVL2 image preprocessing: tiling, normalisation and image-loading errors.

Tiling and pixels are also checked against an independent implementation, the
Hugging Face transformers GotOcr2/InternVL image processor, run in the PyTorch
reference venv as a subprocess (set PADDLEMIX_REF_PYTHON to its python; the
default is <repo>/.venv-ref/bin/python; PADDLEMIX_REQUIRE_REF=1 turns a missing
reference into a failure instead of a skip).

Where transformers and the model card genuinely differ:

* Equal-tile-count ties. Both sort the candidate grids by tile count and, on an
  exact tie in aspect-ratio distance, keep the later grid while the image covers
  more than half of it. The model card builds the candidates as a Python set, so
  grids with the same tile count stay in CPython set order; transformers orders
  them by width. The order only matters when two grids with the same tile count
  are both the closest, which needs ``min_num > 1``: with ``min_num == 1`` the
  grid (a, d) lies strictly between same-count grids (a, b) and (c, d) and is
  closer. Example: min_num = max_num = 4 on a 10x4 image, the model card picks
  4x1 and transformers 2x2. Those cases are left out of the comparison and
  pinned against the model card in ``test_equal_tile_count_tie_follows_model_card``.
* Transparency. transformers composites alpha onto white; the model card's
  ``convert('RGB')`` drops the alpha channel. Only RGB images are compared.

Everything else (the candidate set, the half-area tie rule, row-major crops,
the thumbnail rule, bicubic PIL resizing) is the same, and compared.
"""

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix.models.internvl2.processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLoadError,
    build_transform,
    candidate_grids,
    dynamic_preprocess,
    get_tile_grid,
    image_to_pixel_values,
    load_image,
)
from reference import require_reference_python

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "paddlemix" / "demo_images"
RED_PANDA = REPO.parent / "shared" / "assets" / "images" / "red_panda.jpg"

# Runs in the reference venv: reads a JSON request on stdin, answers JSON on stdout.
REFERENCE_SCRIPT = r"""
import json, sys
import numpy as np
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil, get_optimal_tiled_canvas)

request = json.load(sys.stdin)
processor = GotOcr2ImageProcessorPil(
    crop_to_patches=True, size={"height": 448, "width": 448},
    image_mean=request["mean"], image_std=request["std"])
answer = {"tiling": [], "pixels": []}
for width, height, min_num, max_num in request["tiling"]:
    columns, rows = get_optimal_tiled_canvas((height, width), (448, 448), min_num, max_num)
    count = processor.get_number_of_image_patches(
        height, width, {"min_patches": min_num, "max_patches": max_num})
    answer["tiling"].append([columns, rows, count])
for path, max_num, out in request["pixels"]:
    image = Image.open(path).convert("RGB")
    values = processor(image, max_patches=max_num, return_tensors="np")["pixel_values"]
    np.save(out, values)
    answer["pixels"].append(out)
json.dump(answer, sys.stdout)
"""


@pytest.fixture(scope="module")
def reference_python():
    """Path of the reference venv's python, or skip (fail under PADDLEMIX_REQUIRE_REF=1) when absent."""
    return require_reference_python()


def run_reference(python, tiling=(), pixels=()):
    """Ask the transformers image processor for grids/counts of ``tiling`` and pixel arrays of ``pixels``."""
    request = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "tiling": list(tiling), "pixels": list(pixels)}
    result = subprocess.run(
        [python, "-c", REFERENCE_SCRIPT], input=json.dumps(request), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"reference failed:\n{result.stderr[-3000:]}"
    answer = json.loads(result.stdout)
    assert len(answer["tiling"]) == len(request["tiling"]) and len(answer["pixels"]) == len(request["pixels"])
    return answer


def expected_tile_count(width, height, min_num, max_num):
    columns, rows = get_tile_grid(width, height, min_num, max_num)
    return columns * rows + (1 if columns * rows > 1 else 0)


def has_equal_count_tie(width, height, min_num, max_num):
    """True when two grids with the same tile count are both the closest in aspect ratio."""
    ratio = width / height
    grids = candidate_grids(min_num, max_num)
    best = min(abs(ratio - columns / rows) for columns, rows in grids)
    counts = [columns * rows for columns, rows in grids if abs(ratio - columns / rows) == best]
    return len(counts) != len(set(counts))


def random_sizes(seed, count, max_side=4000):
    """Seeded (width, height) pairs, log-uniform so tiny, huge and extreme aspect ratios all occur."""
    rng = random.Random(seed)

    def side():
        return int(round(2 ** rng.uniform(0, np.log2(max_side))))

    return [(side(), side()) for _ in range(count)]


# ---------------------------------------------------------------- hand-checked tiling


@pytest.mark.parametrize(
    "width, height, max_num, grid, tiles",
    [
        (1000, 747, 12, (4, 3), 13),  # ratio 1.339, 4:3 is closest; plus thumbnail
        (1000, 747, 6, (3, 2), 7),  # 4:3 not allowed; 3:2 (diff 0.16) beats 1:1 (0.34)
        (1000, 747, 1, (1, 1), 1),  # a single tile never gets a thumbnail
        (448, 448, 12, (1, 1), 1),  # 2x2 ties 1x1 but the image covers only 1/4 of it
        (900, 900, 12, (2, 2), 5),  # 810000 px > half of 2x2 (401408), < half of 3x3 (903168)
        (1000, 1000, 12, (3, 3), 10),  # 1e6 px > half of 3x3; 4x4 exceeds max_num
        (4000, 100, 12, (12, 1), 13),  # very wide: the widest allowed grid
        (100, 3000, 12, (1, 12), 13),  # very tall: the tallest allowed grid
        (10, 10, 12, (1, 1), 1),  # tiny: the tie rule keeps one tile
        (20, 10, 12, (2, 1), 3),  # tiny 2:1 gets 2x1 (exact), 4x2 tie rejected as too big
        (1, 1, 12, (1, 1), 1),
    ],
)
def test_hand_checked_grids(width, height, max_num, grid, tiles):
    assert get_tile_grid(width, height, max_num=max_num) == grid
    result = dynamic_preprocess(Image.new("RGB", (width, height)), max_num=max_num, use_thumbnail=True)
    assert len(result) == tiles
    assert all(tile.size == (448, 448) for tile in result)


@pytest.mark.parametrize("width, height, grid", [(10, 4, (4, 1)), (2000, 800, (2, 2))])
def test_equal_tile_count_tie_follows_model_card(width, height, grid):
    """With min_num = max_num = 4, grids 4x1 and 2x2 are equally close to a 2.5 aspect ratio.

    The model card's set order lists 4x1 first, so a small image keeps it and a large one
    (over half the area of four tiles) moves on to 2x2; transformers lists 2x2 first and
    does the opposite. Expected values come from running the model card's code.
    """
    assert get_tile_grid(width, height, min_num=4, max_num=4) == grid


def test_tiles_are_row_major_then_thumbnail():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    image = Image.new("RGB", (3 * 448, 2 * 448))
    for index, colour in enumerate(colours):
        left, top = (index % 3) * 448, (index // 3) * 448
        image.paste(colour, (left, top, left + 448, top + 448))
    tiles = dynamic_preprocess(image, max_num=6, use_thumbnail=True)
    assert len(tiles) == 7
    for tile, colour in zip(tiles, colours):
        assert np.array_equal(np.unique(np.asarray(tile).reshape(-1, 3), axis=0), [colour])
    assert np.unique(np.asarray(tiles[-1]).reshape(-1, 3), axis=0).shape[0] > 1  # the whole image, downscaled


def test_no_thumbnail_unless_asked():
    assert len(dynamic_preprocess(Image.new("RGB", (1000, 747)))) == 12


@pytest.mark.parametrize("width, height", random_sizes(seed=1, count=300))
def test_grid_properties(width, height):
    """The chosen grid respects the tile budget and no allowed grid is closer in aspect ratio."""
    for min_num, max_num in [(1, 12), (1, 6), (2, 9)]:
        columns, rows = get_tile_grid(width, height, min_num, max_num)
        assert min_num <= columns * rows <= max_num
        ratio = width / height
        assert all(abs(ratio - columns / rows) <= abs(ratio - c / r) for c, r in candidate_grids(min_num, max_num))


# ---------------------------------------------------------------- normalisation and loading


def test_transform_normalises_like_torchvision():
    """A flat colour gives exactly (value / 255 - mean) / std per channel, in float32."""
    colour = (12, 130, 250)
    values = build_transform(448)(Image.new("RGB", (448, 448), colour))
    assert values.dtype == np.float32 and values.shape == (3, 448, 448)
    for channel in range(3):
        expected = (np.float32(colour[channel]) / np.float32(255) - np.float32(IMAGENET_MEAN[channel])) / np.float32(
            IMAGENET_STD[channel]
        )
        assert np.all(values[channel] == expected)


def test_transform_resizes_and_converts_to_rgb():
    values = build_transform(224)(Image.new("L", (300, 100), 128))
    assert values.shape == (3, 224, 224)


def test_load_image_returns_paddle_float32_tiles():
    path = DEMO_IMAGES / "examples_image1.jpg"
    pixels = load_image(str(path), max_num=12)
    assert isinstance(pixels, paddle.Tensor)
    assert pixels.dtype == paddle.float32
    assert pixels.shape == [13, 3, 448, 448]  # the 1000x750 demo photo: 4x3 grid plus thumbnail
    np.testing.assert_array_equal(pixels.numpy(), image_to_pixel_values(path, max_num=12))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_pil_input_of_any_mode(mode):
    pixels = image_to_pixel_values(Image.new(mode, (896, 448)), max_num=12)
    assert pixels.shape == (3, 3, 448, 448)  # 2x1 grid plus thumbnail


def test_red_panda_photo_gives_13_tiles():
    if not RED_PANDA.exists():
        pytest.skip(f"{RED_PANDA} not found: the shared assets are not next to the repo")
    with Image.open(RED_PANDA) as image:
        assert image.size == (1000, 747)
    assert load_image(RED_PANDA, max_num=12).shape == [13, 3, 448, 448]


# ---------------------------------------------------------------- errors


def _noise_jpeg(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path, quality=95)


def test_missing_file(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError, match="file not found") as error:
        load_image(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, ValueError)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError, match="not a valid image file") as error:
        image_to_pixel_values(path)
    assert str(path) in str(error.value)


def test_truncated_jpeg(tmp_path):
    whole = tmp_path / "whole.jpg"
    _noise_jpeg(whole)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with Image.open(path) as image:  # the header is fine: PIL only fails once it decodes
        assert image.size == (400, 300)
    with pytest.raises(ImageLoadError, match="not a valid image file") as error:
        load_image(str(path))
    assert str(path) in str(error.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="directory"):
        image_to_pixel_values(tmp_path)


# ---------------------------------------------------------------- against transformers


def test_tiling_matches_transformers_when_min_num_is_1(reference_python):
    """300 seeded random sizes and tile budgets: same grid and same tile count (thumbnail rule) as transformers."""
    rng = random.Random(7)
    cases = [(width, height, 1, rng.randint(1, 40)) for width, height in random_sizes(seed=2, count=300)]
    cases += [(1000, 747, 1, 12), (448, 448, 1, 12), (1000, 1000, 1, 12), (900, 900, 1, 12), (20, 10, 1, 12)]
    answer = run_reference(reference_python, tiling=cases)["tiling"]
    for (width, height, min_num, max_num), (columns, rows, count) in zip(cases, answer):
        case = (width, height, min_num, max_num)
        assert get_tile_grid(width, height, min_num, max_num) == (columns, rows), case
        assert expected_tile_count(width, height, min_num, max_num) == count, case


def test_tiling_matches_transformers_when_min_num_above_1(reference_python):
    """Same comparison with min_num > 1, leaving out the equal-tile-count ties the two order differently."""
    rng = random.Random(8)
    cases = []
    for width, height in random_sizes(seed=3, count=300):
        max_num = rng.randint(2, 30)
        cases.append((width, height, rng.randint(2, max_num), max_num))
    # Sizes exactly between two grids with the same tile count, where ties happen.
    for max_num in range(5, 13):
        for scale in (1, 1000):
            cases += [(10 * scale, 4 * scale, 4, max_num), (26 * scale, 10 * scale, 5, max_num)]
    compared = [case for case in cases if not has_equal_count_tie(*case)]
    assert len(compared) > 250
    answer = run_reference(reference_python, tiling=compared)["tiling"]
    for (width, height, min_num, max_num), (columns, rows, _) in zip(compared, answer):
        assert get_tile_grid(width, height, min_num, max_num) == (columns, rows), (width, height, min_num, max_num)


def test_pixels_match_transformers(reference_python, tmp_path):
    """Full load_image pixels equal the transformers processor's bit for bit (tolerance 0).

    Both resize uint8 RGB with PIL bicubic, so the tiles are byte-identical. The /255
    is computed differently (transformers multiplies by 1/255 in float64 then casts,
    torchvision divides in float32) but both give the same float32 for all 256 byte
    values, and both normalise as float32 (x - mean) / std.
    """
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (333, 777, 3), dtype=np.uint8)).save(noise)
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(small)
    images = [(DEMO_IMAGES / "examples_image1.jpg", 12), (DEMO_IMAGES / "chart.png", 6), (noise, 12), (small, 4)]
    if RED_PANDA.exists():
        images.append((RED_PANDA, 12))
    requests = [(str(path), max_num, str(tmp_path / f"ref{index}.npy")) for index, (path, max_num) in enumerate(images)]
    outputs = run_reference(reference_python, pixels=requests)["pixels"]
    for (path, max_num), output in zip(images, outputs):
        ours = image_to_pixel_values(path, max_num=max_num)
        theirs = np.load(output)
        assert ours.shape == theirs.shape, path
        np.testing.assert_array_equal(ours, theirs, err_msg=str(path))
