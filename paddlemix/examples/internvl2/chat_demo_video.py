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
from paddlemix.cli import run_main, setup_logging


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="OpenGVLab/InternVL2-1B",
                        help="local checkpoint directory or hub model id")
    parser.add_argument("--video_path", required=True, help="video to ask about (mp4, avi, mkv...)")
    parser.add_argument("--text", default="Please describe this video in detail.")
    parser.add_argument("--num_segments", type=int, default=8, help="number of frames taken from the video")
    parser.add_argument("--max_num", type=int, default=1, help="maximum number of 448px tiles per frame")
    parser.add_argument("--bound", type=float, nargs=2, metavar=("START", "END"), default=None,
                        help="only use this part of the video (seconds)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, "
                                                      "bfloat16 on GPUs that support it, else float16)")
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--stream", action="store_true", help="print the answer word by word as it is generated")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:1, npu ... (default: paddle's default)")
    parser.add_argument("--device_map", default=None, choices=["auto"],
                        help="auto: split a large model over all visible GPUs like the official split_model")
    parser.add_argument("--download_source", default=None, choices=["huggingface", "aistudio", "modelscope"])
    parser.add_argument("--verbose", action="store_true", help="log loading and prompt details")
    return parser.parse_args(argv)


def video_question(num_frames, text):
    """The model card's video prompt: one numbered <image> per frame, then the question."""
    return "".join(f"Frame{index + 1}: <image>\n" for index in range(num_frames)) + text


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    import paddle
    from paddlemix.models.internvl2 import InternVLChatModel, TextStreamer, load_tokenizer, load_video
    from paddlemix.models.internvl2.modeling import resolve_dtype

    if args.device:
        paddle.set_device(args.device)
    if args.max_num < 1:
        raise ValueError(f"--max_num must be at least 1, got {args.max_num}")
    if args.num_segments < 1:
        raise ValueError(f"--num_segments must be at least 1, got {args.num_segments}")
    dtype = resolve_dtype(args.dtype)  # fail on a bad --dtype before any download
    # Read the video before loading the model, so a bad path fails in a second, not after a minute.
    pixel_values, num_patches_list = load_video(args.video_path, bound=args.bound, max_num=args.max_num,
                                                num_segments=args.num_segments)
    model = InternVLChatModel.from_pretrained(args.model_name_or_path, dtype=dtype,
                                              download_source=args.download_source, device_map=args.device_map)
    tokenizer = load_tokenizer(model.model_dir)
    generation_config = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    if args.stream:
        # Prints the answer as it is generated, then a newline.
        generation_config["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    question = video_question(len(num_patches_list), args.text)
    response = model.chat(tokenizer, pixel_values, question, generation_config, num_patches_list=num_patches_list,
                          verbose=args.verbose)
    if not args.stream:
        print(response)


if __name__ == "__main__":
    run_main(main)
