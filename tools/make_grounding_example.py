"""Draw the README's grounding picture: a fixed model-style answer over the demo photo.

No trained weights are here, so the answer is written by hand in InternVL2's grounding format and
drawn exactly as `chat_demo.py --draw_boxes` draws a real one.

Usage: ``python tools/make_grounding_example.py [--out docs/grounding_example.jpg]``
"""
import argparse
import os

from paddlemix.models.internvl2.grounding import draw_boxes, parse_boxes, save_image_atomically
from paddlemix.models.internvl2.processing import open_image

ROOT = os.path.join(os.path.dirname(__file__), "..")
PHOTO = os.path.join(ROOT, "paddlemix", "demo_images", "examples_image1.jpg")
ANSWER = ("<ref>the rocket</ref><box>[[443, 292, 568, 955]]</box> stands between "
          "<ref>the lattice towers</ref><box>[[0, 0, 95, 1000], [922, 0, 1000, 1000]]</box>")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "grounding_example.jpg"))
    args = parser.parse_args(argv)
    image = open_image(PHOTO)
    save_image_atomically(draw_boxes(image, parse_boxes(ANSWER, image.size)), args.out)


if __name__ == "__main__":
    main()
