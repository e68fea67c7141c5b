"""Shared plumbing for the command lines: common options, model loading, a quiet terminal, one-line user errors."""
import contextlib
import importlib
import io
import logging
import sys
import warnings

from .extras import MissingExtraError

# Errors a user can cause and fix (bad path, no network, wrong dtype, bad prompt, a missing extra...):
# they print one sentence and exit non-zero instead of a traceback.
USER_ERRORS = (ValueError, OSError, NotImplementedError, MissingExtraError)


# What Paddle, paddleformers, transformers and setuptools print while they are imported (Paddle's
# OMP_NUM_THREADS advice, "No ccache found", "PyTorch was not found", ...), held for --verbose.
_held_notices = []


def hold_import_notices(*modules):
    """Import paddle, paddleformers and `modules` with their import-time notices held back (see setup_logging).

    A command line calls this before anything imports paddle; the notices are shown with --verbose.
    """
    modules = [name for name in ("paddle", "paddleformers", *modules) if name not in sys.modules]
    if not modules:
        return
    held = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(held):
        warnings.simplefilter("always")
        for name in modules:
            importlib.import_module(name)
    # Handlers made during the imports would keep writing into `held`. Paddle puts one on the root
    # logger, which would make our logging.basicConfig a no-op: that one goes.
    root = logging.getLogger()
    for logger in [root] + list(logging.Logger.manager.loggerDict.values()):
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.StreamHandler) and handler.stream is held:
                if logger is root:
                    root.removeHandler(handler)
                else:
                    handler.setStream(sys.stderr)
    _held_notices.append(held.getvalue())
    _held_notices.extend(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)


class _ThirdPartyFilter(logging.Filter):
    """Lets paddleformers' errors through, and with `keep_info` the INFO and DEBUG records of its
    Trainer's own files (the run's arguments, steps, losses and metrics)."""

    TRAINER_FILES = ("trainer.py", "trainer_callback.py")

    def __init__(self, keep_info):
        super().__init__()
        self.keep_info = keep_info

    def filter(self, record):
        return record.levelno >= logging.ERROR or (
            self.keep_info and record.levelno <= logging.INFO and record.filename in self.TRAINER_FILES)


def setup_logging(verbose=False, level=None, keep_third_party_info=False):
    """Our log lines at `level` (INFO with --verbose, else WARNING); third-party output only with --verbose.

    Without --verbose a user sees progress bars, our log lines and the answer: Python warnings,
    paddleformers' and transformers' notices and sentencepiece's C++ warnings are dropped (the
    fine-tune keeps the lines of paddleformers' Trainer: its arguments, progress and losses).
    """
    hold_import_notices()
    level = level or (logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        for notice in _held_notices:
            sys.stderr.write(notice)
        _held_notices.clear()
        return
    warnings.simplefilter("ignore")
    # paddleformers logs every record on its one logger, so a logger filter sees them all (a filter on
    # its handlers could also sit on the root logger's: test runners share handlers between loggers).
    paddleformers_logger = logging.getLogger("PaddleFormers")
    if not any(isinstance(old, _ThirdPartyFilter) for old in paddleformers_logger.filters):
        paddleformers_logger.addFilter(_ThirdPartyFilter(keep_third_party_info))
    if "transformers" in sys.modules:  # its records come from child loggers: its own verbosity switch
        sys.modules["transformers"].utils.logging.set_verbosity_error()
    import sentencepiece

    sentencepiece.set_min_log_level(2)  # its C++ (absl) warnings go straight to the terminal


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
    parser.add_argument("--tensor_parallel_degree", type=int, default=1,
                        help="split the language model over this many GPUs; run under "
                             "`python -m paddle.distributed.launch --devices 0,1,...` with as many devices")
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


def tensor_parallel_group(degree):
    """This process's place in the tensor-parallel group paddle.distributed.launch started, or None for 1.

    Called before the model is loaded (or downloaded), so a wrong degree fails at once."""
    if degree < 1:
        raise ValueError(f"--tensor_parallel_degree must be at least 1, got {degree}")
    if degree == 1:
        return None
    import paddle.distributed as dist
    from paddlemix.models.internvl2.tensor_parallel import TensorParallel

    if dist.get_world_size() != degree:
        raise ValueError(f"--tensor_parallel_degree {degree} needs {degree} processes: run it under "
                         f"`python -m paddle.distributed.launch` with {degree} devices (this run has "
                         f"{dist.get_world_size()})")
    return TensorParallel.over_all_processes()


def prints_answers(model):
    """Whether this process shows the answer: the only one, or the first of a tensor-parallel group."""
    tp = model.language_model.tensor_parallel
    return tp is None or tp.rank == 0


def load_chat_model(args, dtype):
    """(model, tokenizer, generation_config) as the demos use them: greedy, optionally streamed to stdout."""
    from paddlemix.models.internvl2 import InternVLChatModel, TextStreamer, load_tokenizer

    model = InternVLChatModel.from_pretrained(args.model_name_or_path, dtype=dtype,
                                              download_source=args.download_source, device_map=args.device_map,
                                              quant=args.quant,
                                              tensor_parallel=tensor_parallel_group(args.tensor_parallel_degree))
    tokenizer = load_tokenizer(model.model_dir)
    # Greedy: every rank of a tensor-parallel group picks the same tokens from the same gathered logits.
    generation_config = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    if args.stream and prints_answers(model):
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
