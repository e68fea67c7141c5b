"""Chat with InternVL2 about one image.

    python paddlemix/examples/internvl2/chat_demo.py \
        --model_name_or_path OpenGVLab/InternVL2-1B \
        --image_path paddlemix/demo_images/examples_image1.jpg \
        --text "Please describe this image in detail."
"""
import argparse

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import run_main, setup_logging


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="OpenGVLab/InternVL2-1B",
                        help="local checkpoint directory or hub model id")
    parser.add_argument("--image_path", default=None, help="image to ask about; omit for a text-only chat")
    parser.add_argument("--text", default="Please describe this image in detail.")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, "
                                                      "bfloat16 on GPUs that support it, else float16)")
    parser.add_argument("--max_num", type=int, default=12, help="maximum number of 448px tiles")
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--stream", action="store_true", help="print the answer word by word as it is generated")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:1, npu ... (default: paddle's default)")
    parser.add_argument("--device_map", default=None, choices=["auto"],
                        help="auto: split a large model over all visible GPUs like the official split_model")
    parser.add_argument("--download_source", default=None, choices=["huggingface", "aistudio", "modelscope"])
    parser.add_argument("--verbose", action="store_true", help="log loading and prompt details")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    import paddle
    from paddlemix.models.internvl2 import InternVLChatModel, TextStreamer, load_image, load_tokenizer
    from paddlemix.models.internvl2.modeling import resolve_dtype

    if args.device:
        paddle.set_device(args.device)
    if args.max_num < 1:
        raise ValueError(f"--max_num must be at least 1, got {args.max_num}")
    dtype = resolve_dtype(args.dtype)  # fail on a bad --dtype before any download
    # Read the image before loading the model, so a bad path fails in a second, not after a minute.
    pixel_values = load_image(args.image_path, max_num=args.max_num) if args.image_path else None
    model = InternVLChatModel.from_pretrained(args.model_name_or_path, dtype=dtype,
                                              download_source=args.download_source, device_map=args.device_map)
    tokenizer = load_tokenizer(model.model_dir)
    generation_config = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    if args.stream:
        # Prints the answer as it is generated, then a newline.
        generation_config["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    response = model.chat(tokenizer, pixel_values, args.text, generation_config, verbose=args.verbose)
    if not args.stream:
        print(response)


if __name__ == "__main__":
    run_main(main)
