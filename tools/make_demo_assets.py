"""Regenerate the demo assets in ``paddlemix/demo_images/``.

The assets are made here rather than downloaded so that their provenance and
licence are known (see ``paddlemix/demo_images/README.md``). This script is a
maintainer tool, not a runtime dependency; it needs

    pip install scikit-image matplotlib pillow opencv-python-headless
    pip install decord  # optional: also check that decord reads the clip

Usage: ``python tools/make_demo_assets.py [--out paddlemix/demo_images]``
"""

import argparse
import logging
import os

import cv2
import matplotlib
import skimage.data
from PIL import Image, ImageDraw, ImageFont

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

logger = logging.getLogger("make_demo_assets")

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "paddlemix", "demo_images")
JPEG_QUALITY = 90
MAX_BYTES = 300 * 1024
CLIP_SIZE = (320, 240)
CLIP_FPS = 10
CLIP_FRAMES = 40  # 4 seconds


def make_photo1(path):
    """The rocket launch photo (public domain), cropped to 4:3 and enlarged to 1000x750.

    At 4:3 the model card's tiling gives a 4x3 grid plus a thumbnail, like its own demo photo.
    """
    image = Image.fromarray(skimage.data.rocket())
    width, height = image.size
    crop_width = height * 4 // 3
    left = (width - crop_width) // 2
    image = image.crop((left, 0, left + crop_width, height)).resize((1000, 750), Image.BICUBIC)
    image.save(path, quality=JPEG_QUALITY)


def make_photo2(path):
    """The coffee cup photo (CC0) at its native 600x400, a second scene of a different shape."""
    Image.fromarray(skimage.data.coffee()).save(path, quality=JPEG_QUALITY)


def make_chart(path):
    """A labelled bar chart, for chart-reading prompts with exact values to check answers against."""
    quarters = ["Q1", "Q2", "Q3", "Q4"]
    revenue = [12.4, 15.1, 9.8, 18.6]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    bars = ax.bar(quarters, revenue, color=["#4C72B0", "#55A868", "#C44E52", "#8172B2"])
    ax.bar_label(bars, labels=[f"{value:.1f}" for value in revenue], padding=3)
    ax.set_title("Quarterly revenue, 2024")
    ax.set_xlabel("Quarter")
    ax.set_ylabel("Revenue (million USD)")
    ax.set_ylim(0, 21)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _font(bold=False, size=20):
    """DejaVu Sans as shipped inside matplotlib, so the page renders the same everywhere."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), size)


def make_document(path):
    """A one-page invoice, for OCR and document-question prompts with a known total."""
    page = Image.new("RGB", (850, 1100), "white")
    draw = ImageDraw.Draw(page)
    draw.text((60, 50), "INVOICE", font=_font(bold=True, size=44), fill="black")
    for index, line in enumerate(["Invoice no. 2024-0117", "Date: 12 March 2024", "Due: 11 April 2024"]):
        draw.text((560, 55 + 28 * index), line, font=_font(size=18), fill="black")
    for index, line in enumerate(["Bill to:", "Northwind Bakery", "14 Harbour Street", "Bristol BS1 4DJ"]):
        draw.text((60, 170 + 28 * index), line, font=_font(bold=index == 0, size=18), fill="black")

    columns = [60, 470, 580, 700]  # left edges: item, quantity, unit price, amount
    items = [
        ("Stand mixer, 5 L", 2, 249.00),
        ("Proofing baskets", 12, 8.50),
        ("Baking paper roll", 6, 4.25),
        ("Delivery", 1, 15.00),
    ]
    top = 330
    draw.rectangle((50, top - 8, 800, top + 30), fill="#E8E8E8")
    for left, heading in zip(columns, ["Item", "Qty", "Unit price", "Amount"]):
        draw.text((left, top), heading, font=_font(bold=True, size=18), fill="black")
    total = 0.0
    for row, (item, quantity, price) in enumerate(items, start=1):
        amount = quantity * price
        total += amount
        y = top + 45 * row
        cells = [item, str(quantity), f"{price:.2f}", f"{amount:.2f}"]
        for left, cell in zip(columns, cells):
            draw.text((left, y), cell, font=_font(size=18), fill="black")
        draw.line((50, y + 32, 800, y + 32), fill="#BBBBBB")
    y = top + 45 * (len(items) + 1) + 10
    draw.text((470, y), "Total (USD)", font=_font(bold=True, size=22), fill="black")
    draw.text((700, y), f"{total:.2f}", font=_font(bold=True, size=22), fill="black")
    draw.text(
        (60, 1000),
        "Payment by bank transfer within 30 days. Thank you for your order.",
        font=_font(size=16),
        fill="#444444",
    )
    page.save(path, optimize=True)


def make_clip(photo_path, path):
    """A 4 s, 10 fps 320x240 clip that slowly zooms and pans across the first photo.

    Consecutive frames differ a little and the first and last differ a lot,
    which is what frame-sampling code in a video demo needs to show.
    """
    photo = cv2.imread(photo_path)
    height, width = photo.shape[:2]
    out_width, out_height = CLIP_SIZE
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, CLIP_SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with the mp4v codec")
    for index in range(CLIP_FRAMES):
        progress = index / (CLIP_FRAMES - 1)
        crop_width = int(width * (1.0 - 0.45 * progress))  # zoom in to 55 % of the width
        crop_height = crop_width * out_height // out_width
        left = int((width - crop_width) * progress)  # pan from the left edge to the right
        top = (height - crop_height) // 2
        window = photo[top : top + crop_height, left : left + crop_width]
        writer.write(cv2.resize(window, CLIP_SIZE, interpolation=cv2.INTER_AREA))
    writer.release()


def check_clip(path):
    """Both readers the project may use must see every frame of the clip."""
    capture = cv2.VideoCapture(path)
    opencv_frames = 0
    while capture.read()[0]:
        opencv_frames += 1
    capture.release()
    if opencv_frames != CLIP_FRAMES:
        raise RuntimeError(f"OpenCV reads {opencv_frames} frames from {path}, expected {CLIP_FRAMES}")
    try:
        import decord
    except ImportError:
        logger.warning("decord is not installed: only OpenCV was checked on %s", path)
        return
    decord_frames = len(decord.VideoReader(path))
    if decord_frames != CLIP_FRAMES:
        raise RuntimeError(f"decord reads {decord_frames} frames from {path}, expected {CLIP_FRAMES}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder to write the assets to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.makedirs(args.out, exist_ok=True)

    photo1 = os.path.join(args.out, "examples_image1.jpg")
    make_photo1(photo1)
    make_photo2(os.path.join(args.out, "examples_image2.jpg"))
    make_chart(os.path.join(args.out, "chart.png"))
    make_document(os.path.join(args.out, "document.png"))
    clip = os.path.join(args.out, "demo_clip.mp4")
    make_clip(photo1, clip)
    check_clip(clip)

    for name in ["examples_image1.jpg", "examples_image2.jpg", "chart.png", "document.png", "demo_clip.mp4"]:
        size = os.path.getsize(os.path.join(args.out, name))
        if size > MAX_BYTES:
            raise RuntimeError(f"{name} is {size} bytes, over the {MAX_BYTES} byte budget")
        logger.info("%-20s %7d bytes", name, size)


if __name__ == "__main__":
    main()
