"""Chat with InternVL2 about a video.

    python paddlemix/examples/internvl2/chat_demo_video.py \
        --model_name_or_path OpenGVLab/InternVL2-1B \
        --video_path paddlemix/demo_images/demo_clip.mp4 \
        --text "Please describe this video in detail."

As on the model card: `--num_segments` frames, the middle one of each equal segment
of the video (or of `--bound START END` seconds), each tiled into at most `--max_num`
448px tiles, asked about as "Frame1: <image>\nFrame2: <image>\n...<text>".
"""
import argparse

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import (add_model_arguments, load_chat_model, prepare_device, prints_answers, run_main,
                           setup_logging)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video_path", required=True, help="video to ask about (mp4, avi, mkv...)")
    parser.add_argument("--text", default="Please describe this video in detail.")
    parser.add_argument("--num_segments", type=int, default=8, help="number of frames taken from the video")
    parser.add_argument("--bound", type=float, nargs=2, metavar=("START", "END"), default=None,
                        help="only use this part of the video (seconds)")
    add_model_arguments(parser, max_num=1)
    return parser.parse_args(argv)


def video_question(num_frames, text):
    """The model card's video prompt: one numbered <image> per frame, then the question."""
    return "".join(f"Frame{index + 1}: <image>\n" for index in range(num_frames)) + text


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    dtype = prepare_device(args)
    if args.num_segments < 1:
        raise ValueError(f"--num_segments must be at least 1, got {args.num_segments}")
    from paddlemix.models.internvl2 import load_video

    # Read the video before loading the model, so a bad path fails in a second, not after a minute.
    pixel_values, num_patches_list = load_video(args.video_path, bound=args.bound, max_num=args.max_num,
                                                num_segments=args.num_segments)
    model, tokenizer, generation_config = load_chat_model(args, dtype)
    question = video_question(len(num_patches_list), args.text)
    response = model.chat(tokenizer, pixel_values, question, generation_config, num_patches_list=num_patches_list,
                          verbose=args.verbose)
    if not args.stream and prints_answers(model):
        print(response)


if __name__ == "__main__":
    run_main(main)
