"""python -m paddlemix.serve --model_name_or_path OpenGVLab/InternVL2-1B [--host 127.0.0.1] [--port 8000]

Loads the model first (so an open port means a ready server), then serves the API and the chat page.
"""
import argparse
import logging

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import prepare_device, run_main, setup_logging
from paddlemix.extras import require

logger = logging.getLogger("paddlemix.serve")

MiB = 2 ** 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="OpenAI-compatible chat server for InternVL2 with a chat page at /")
    parser.add_argument("--model_name_or_path", required=True, help="local checkpoint directory or hub model id")
    parser.add_argument("--served_model_name", default=None,
                        help="the id clients pass as `model` (default: --model_name_or_path)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: as chat_demo.py)")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:1, npu ... (default: paddle's default)")
    parser.add_argument("--device_map", default=None, choices=["auto"],
                        help="auto: split a large model over all visible GPUs like the official split_model")
    parser.add_argument("--download_source", default=None, choices=["huggingface", "aistudio", "modelscope"])
    parser.add_argument("--max_num", type=int, default=6, help="maximum 448px tiles per image")
    parser.add_argument("--max_batch", type=int, default=8, help="requests decoded together at most")
    parser.add_argument("--max_queue", type=int, default=64,
                        help="requests waiting beyond the running batch; more are answered 429")
    parser.add_argument("--max_tokens", type=int, default=1024, help="answer length when a request sets none")
    parser.add_argument("--max_images", type=int, default=16, help="images (video frames included) per request")
    parser.add_argument("--max_image_mb", type=float, default=20, help="size of one encoded image, in MiB")
    parser.add_argument("--max_image_pixels", type=int, default=25_000_000, help="width x height of one image")
    parser.add_argument("--max_request_mb", type=float, default=50, help="size of a request body, in MiB")
    parser.add_argument("--allowed_local_media_path", default=None,
                        help="folder from which image_url may name local files (default: none)")
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    for name in ("max_batch", "max_queue", "max_tokens", "max_images", "max_image_pixels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("max_image_mb", "max_request_mb"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    setup_logging(verbose=args.log_level == "debug", level=args.log_level.upper())
    uvicorn = require("uvicorn", "serve")
    require("fastapi", "serve")

    from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer

    from .app import create_app
    from .engine import Engine
    from .media import MediaLimits

    dtype = prepare_device(args)  # fails on a bad --device, --dtype or --max_num before any download
    limits = MediaLimits(max_images=args.max_images, max_image_bytes=int(args.max_image_mb * MiB),
                         max_image_pixels=args.max_image_pixels, max_num=args.max_num,
                         allowed_local_media_path=args.allowed_local_media_path)
    model = InternVLChatModel.from_pretrained(args.model_name_or_path, dtype=dtype,
                                              download_source=args.download_source, device_map=args.device_map)
    engine = Engine(model, load_tokenizer(model.model_dir), max_batch=args.max_batch, max_queue=args.max_queue,
                    default_max_tokens=args.max_tokens)
    app = create_app(engine, args.served_model_name or args.model_name_or_path, limits,
                     int(args.max_request_mb * MiB))
    logger.info("serving %s on http://%s:%d (chat page at /, API at /v1)", args.model_name_or_path, args.host,
                args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, log_level=args.log_level,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    run_main(main)
