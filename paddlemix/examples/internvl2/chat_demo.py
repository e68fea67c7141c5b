"""Chat with InternVL2 about one image.

    python paddlemix/examples/internvl2/chat_demo.py \
        --model_name_or_path OpenGVLab/InternVL2-1B \
        --image_path paddlemix/demo_images/examples_image1.jpg \
        --text "Please describe this image in detail."
"""
import argparse

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import add_model_arguments, load_chat_model, prepare_device, run_main, setup_logging


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_path", default=None, help="image to ask about; omit for a text-only chat")
    parser.add_argument("--text", default="Please describe this image in detail.")
    add_model_arguments(parser, max_num=12)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    dtype = prepare_device(args)
    from paddlemix.models.internvl2 import load_image

    # Read the image before loading the model, so a bad path fails in a second, not after a minute.
    pixel_values = load_image(args.image_path, max_num=args.max_num) if args.image_path else None
    model, tokenizer, generation_config = load_chat_model(args, dtype)
    response = model.chat(tokenizer, pixel_values, args.text, generation_config, verbose=args.verbose)
    if not args.stream:
        print(response)


if __name__ == "__main__":
    run_main(main)
