"""Shared plumbing for the command-line demos: common options, model loading, one-line user errors."""
import logging
import sys

# Errors a user can cause and fix (bad path, no network, wrong dtype, bad prompt...):
# they print one sentence and exit non-zero instead of a traceback.
USER_ERRORS = (ValueError, OSError, NotImplementedError)


def setup_logging(verbose=False):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def add_model_arguments(parser, max_num):
    """Options every demo shares: which model, where it runs, how much it may generate."""
    parser.add_argument("--model_name_or_path", default="OpenGVLab/InternVL2-1B",
                        help="local checkpoint directory or hub model id")
    parser.add_argument("--max_num", type=int, default=max_num, help="maximum number of 448px tiles per image")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, "
                                                      "bfloat16 on GPUs that support it, else float16)")
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--stream", action="store_true", help="print the answer word by word as it is generated")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:1, npu ... (default: paddle's default)")
    parser.add_argument("--device_map", default=None, choices=["auto"],
                        help="auto: split a large model over all visible GPUs like the official split_model")
    parser.add_argument("--quant", default=None, help="weight_only_int8: keep the LLM's Linear weights in int8 "
                                                      "(faster decoding on GPUs; on CPU it only saves memory)")
    parser.add_argument("--download_source", default=None, choices=["huggingface", "aistudio", "modelscope"])
    parser.add_argument("--verbose", action="store_true", help="log loading and prompt details")


def prepare_device(args):
    """Select the device and validate the cheap options, so mistakes fail before any download.

    Returns the resolved dtype.
    """
    import paddle
    from paddlemix.models.internvl2.modeling import resolve_dtype

    if args.device:
        paddle.set_device(args.device)
    if args.max_num < 1:
        raise ValueError(f"--max_num must be at least 1, got {args.max_num}")
    return resolve_dtype(args.dtype)


def load_chat_model(args, dtype):
    """(model, tokenizer, generation_config) as the demos use them: greedy, optionally streamed to stdout."""
    from paddlemix.models.internvl2 import InternVLChatModel, TextStreamer, load_tokenizer

    model = InternVLChatModel.from_pretrained(args.model_name_or_path, dtype=dtype,
                                              download_source=args.download_source, device_map=args.device_map,
                                              quant=args.quant)
    tokenizer = load_tokenizer(model.model_dir)
    generation_config = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    if args.stream:
        # Prints the answer as it is generated, then a newline.
        generation_config["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    return model, tokenizer, generation_config


def run_main(main, argv=None):
    """Run `main(argv)` and turn user errors into `error: <message>` on stderr with exit code 1."""
    try:
        main(argv)
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
