"""Chat with InternVL2 about one image.

    python paddlemix/examples/internvl2/chat_demo.py \
        --model_name_or_path OpenGVLab/InternVL2-1B \
        --image_path paddlemix/demo_images/examples_image1.jpg \
        --text "Please describe this image in detail."
"""
import argparse

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import (add_model_arguments, load_chat_model, prepare_device, prints_answers, run_main,
                           setup_logging)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_path", default=None, help="image to ask about; omit for a text-only chat")
    parser.add_argument("--text", default="Please describe this image in detail.")
    parser.add_argument("--draw_boxes", default=None, metavar="OUT.jpg",
                        help="write the image with the answer's <ref>/<box> grounding boxes drawn, and print them "
                             "in pixels (ask e.g. 'Please provide the bounding box coordinate of the region this "
                             "sentence describes: <ref>the red panda</ref>')")
    add_model_arguments(parser, max_num=12)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    dtype = prepare_device(args)
    from paddlemix.models.internvl2 import load_image
    from paddlemix.models.internvl2.grounding import image_format
    from paddlemix.models.internvl2.processing import open_image

    if args.draw_boxes and not args.image_path:
        raise ValueError("--draw_boxes needs --image_path: boxes are drawn on that image")
    if args.draw_boxes:
        image_format(args.draw_boxes)  # an unwritable extension fails now, not after the answer
    # Read the image before loading the model, so a bad path fails in a second, not after a minute.
    image = open_image(args.image_path) if args.image_path else None
    pixel_values = load_image(image, max_num=args.max_num) if image is not None else None
    model, tokenizer, generation_config = load_chat_model(args, dtype)
    response = model.chat(tokenizer, pixel_values, args.text, generation_config, verbose=args.verbose)
    if not prints_answers(model):  # another rank of a tensor-parallel group shows it
        return
    if not args.stream:
        print(response)
    if args.draw_boxes:
        draw_answer_boxes(response, image, args.draw_boxes)


def draw_answer_boxes(response, image, out_path):
    """Print the answer's boxes in pixels and write them drawn on the image; an answer without boxes is an error."""
    from paddlemix.models.internvl2.grounding import draw_boxes, parse_boxes, save_image_atomically

    boxes = parse_boxes(response, image.size)
    if not boxes:
        raise ValueError(f"the answer holds no <box>[[x1, y1, x2, y2]]</box>; nothing drawn to {out_path}")
    for phrase, box in boxes:
        print(f"box: {phrase or '(no ref)'} [{', '.join(str(round(v)) for v in box)}]")
    save_image_atomically(draw_boxes(image, boxes), out_path)


if __name__ == "__main__":
    run_main(main)
