"""Second-stage (supervised) fine-tuning of InternVL2, full or LoRA, on one or many devices.

    python paddlemix/examples/internvl2/internvl_chat_finetune.py \\
        --model_name_or_path OpenGVLab/InternVL2-1B --meta_path my_meta.json \\
        --output_dir work_dirs/my_run --dynamic_image_size True --use_thumbnail True ...

Several GPUs/NPUs: `python -m paddle.distributed.launch --devices 0,1,... <this script> ... --sharding stage1`
(see shell/internvl2.0/2nd_finetune/). A single `.json` argument is read as the argument file.
The run resumes from the newest complete checkpoint in output_dir unless --overwrite_output_dir;
at the end the model (LoRA merged) is written to output_dir in the original Hugging Face layout,
with the tokenizer files, ready for chat_demo.py.
"""
import dataclasses
import logging
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import hold_import_notices, run_main, setup_logging

hold_import_notices("paddleformers.trainer.trainer")  # import-time notices, shown with --verbose
import paddle  # noqa: E402
from paddle.utils import unique_name
from paddleformers.trainer import PdArgumentParser, TrainingArguments, set_seed
from paddleformers.trainer.trainer_utils import ShardingOption

from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer
from paddlemix.models.internvl2 import train_model as tm
from paddlemix.models.internvl2.checkpoint import open_checkpoint
from paddlemix.models.internvl2.config import InternVLChatConfig
from paddlemix.models.internvl2.conversation import TEMPLATE_NAMES
from paddlemix.models.internvl2.hub import resolve_model_dir
from paddlemix.models.internvl2.memory import Plan, estimate
from paddlemix.models.internvl2.tensor_parallel import TensorParallel
from paddlemix.models.internvl2.train_data import (NORMALIZATION, POLICIES, Collator, DataConfig,
                                                   SupervisedDataset, load_meta)
from paddlemix.models.internvl2.train_trainer import InternVLTrainer, last_complete_checkpoint

logger = logging.getLogger("internvl_chat_finetune")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "checkpoint directory or hub id"})
    verbose: bool = field(default=False, metadata={"help": "also show third-party notices and warnings"})
    freeze_llm: bool = field(default=False, metadata={"help": "freeze the language model"})
    freeze_backbone: bool = field(default=False, metadata={"help": "freeze the vision transformer"})
    freeze_mlp: bool = field(default=False, metadata={"help": "freeze the mlp1 projector"})
    unfreeze_vit_layers: int = field(default=0, metadata={"help": "train the last |k| ViT layers even if frozen"})
    vision_select_layer: int = field(default=-1, metadata={"help": "ViT layer whose features feed mlp1"})
    use_backbone_lora: int = field(default=0, metadata={"help": "LoRA rank for the ViT (0: none; alpha=2*rank)"})
    use_llm_lora: int = field(default=0, metadata={"help": "LoRA rank for the LLM (0: none; alpha=2*rank)"})
    unfreeze_lm_head: bool = field(default=False, metadata={"help": "train the LM head even if the LLM is frozen"})
    grad_checkpoint: bool = field(default=True, metadata={"help": "recompute ViT and LLM layer activations"})
    drop_path_rate: float = field(default=0.0, metadata={"help": "ViT stochastic depth at the last layer"})
    ps_version: str = field(default="v2", metadata={"help": "pixel shuffle version: v1 or v2"})


@dataclass
class DataTrainingArguments:
    meta_path: Optional[str] = field(default=None, metadata={"help": "meta JSON naming the datasets"})
    max_seq_length: int = field(default=8192, metadata={"help": "longer samples (image tokens included) are bad"})
    force_image_size: int = field(default=448, metadata={"help": "tile size in pixels"})
    down_sample_ratio: float = field(default=0.5, metadata={"help": "pixel shuffle ratio; must match the model"})
    conv_style: Optional[str] = field(default=None, metadata={"help": "chat template (default: the checkpoint's)"})
    dynamic_image_size: bool = field(default=False, metadata={"help": "tile images by aspect ratio"})
    use_thumbnail: bool = field(default=False, metadata={"help": "add a whole-image tile to multi-tile images"})
    min_dynamic_patch: int = field(default=1, metadata={"help": "fewest tiles per image"})
    max_dynamic_patch: int = field(default=12, metadata={"help": "most tiles per image (split among images)"})
    normalize_type: str = field(default="imagenet", metadata={"help": "imagenet, clip or siglip"})
    video_frames: int = field(default=8, metadata={"help": "frames taken from each video, one tile each"})
    bad_sample_policy: str = field(default="skip", metadata={"help": "skip (count and log) or error"})


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    group_by_length: bool = field(default=False, metadata={"help": "batch samples of similar length"})
    # fp32 training must not ask for master gradients; bf16 runs pass --amp_master_grad True.
    amp_master_grad: bool = field(default=False, metadata={"help": "fp32 gradients with --fp16_opt_level O2"})
    # Sharding stage1 "v2" (split parameters) requires master gradients, so fp32 runs on several
    # ranks need it off; the bf16 scripts pass --split_param True with --amp_master_grad True.
    split_param: bool = field(default=False, metadata={"help": "split parameters in sharding stage1 (bf16 runs)"})
    # The classic per-rank format: resumable on one device and with sharding stage1.
    save_checkpoint_format: Optional[str] = field(default="sharding_io", metadata={"help": "checkpoint format"})
    load_checkpoint_format: Optional[str] = field(default="sharding_io", metadata={"help": "checkpoint format"})
    report_to: Optional[List[str]] = field(default_factory=lambda: ["none"],
                                           metadata={"help": "visualdl, wandb, tensorboard or none"})
    dry_run: bool = field(default=False, metadata={"help": "check the arguments and data files, then exit"})
    tensor_parallel_degree: int = field(default=1, metadata={
        "help": "split the language model's layers over this many ranks (tensor parallelism); sharding and "
                "data parallelism use the rest"})

    def __post_init__(self):
        if self.tensor_parallel_degree > 1:  # paddleformers' name for it
            self.tensor_model_parallel_size = self.tensor_parallel_degree
        super().__post_init__()


def parse_arguments(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = PdArgumentParser((ModelArguments, DataTrainingArguments, FinetuneTrainingArguments))
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        return parser.parse_args_into_dataclasses(args=argv)
    except AssertionError as err:  # TrainingArguments checks combinations with asserts
        raise ValueError(f"invalid arguments: {err}") from err


def check_arguments(model_args, data_args, training_args):
    """Everything that can be checked without loading the model; returns the checkpoint's config or None."""
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required")
    if not data_args.meta_path:
        raise ValueError("--meta_path is required")
    choices = {"ps_version": (model_args.ps_version, ("v1", "v2")),
               "normalize_type": (data_args.normalize_type, tuple(NORMALIZATION)),
               "bad_sample_policy": (data_args.bad_sample_policy, POLICIES)}
    if data_args.conv_style is not None:
        choices["conv_style"] = (data_args.conv_style, TEMPLATE_NAMES)
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"--{name} {value!r} is not one of {', '.join(allowed)}")
    for name in ("use_backbone_lora", "use_llm_lora"):
        if getattr(model_args, name) < 0:
            raise ValueError(f"--{name} is a LoRA rank and cannot be negative")
    if not 1 <= data_args.min_dynamic_patch <= data_args.max_dynamic_patch:
        raise ValueError("need 1 <= --min_dynamic_patch <= --max_dynamic_patch")
    if training_args.world_size > 1 and training_args.max_grad_norm > 0 and not training_args.amp_master_grad:
        # paddleformers' Trainer reaches for the wrapped optimizer's `_inner_opt` there and crashes.
        raise ValueError("on several ranks, gradient clipping needs --amp_master_grad True (bf16); "
                         "fp32 runs must pass --max_grad_norm 0")
    if (training_args.world_size > 1 and ShardingOption.FULL_SHARD in training_args.sharding
            and not stage3_runs_on(training_args.device)):
        raise ValueError("sharding stage3 runs on GPUs, XPUs and NPUs only (Paddle refuses it on CPU); "
                         "use --sharding stage1 on CPU")
    if training_args.tensor_parallel_degree > 1 and not tensor_parallel_runs_on(training_args.device):
        raise ValueError("tensor parallelism runs on GPUs, XPUs and NPUs only (fleet's TensorParallel wrapper "
                         "refuses CPU); leave --tensor_parallel_degree at 1 on CPU")
    if training_args.world_size > 1 and training_args.split_param and training_args.device == "cpu":
        raise ValueError("--split_param True runs on GPUs, XPUs and NPUs only (Paddle's fused buffers); "
                         "pass --split_param False on CPU")
    for source in load_meta(data_args.meta_path):
        if not os.path.isfile(source.annotation):
            raise ValueError(f"dataset {source.name!r}: annotation file '{source.annotation}' does not exist")
    config = None
    path = model_args.model_name_or_path
    if not os.path.isdir(path) and (path.startswith((".", "/", "~")) or path.count("/") != 1):
        raise ValueError(f"--model_name_or_path '{path}' is not a local directory and not a hub id like "
                         "'OpenGVLab/InternVL2-1B'")
    if os.path.isdir(path):
        config = InternVLChatConfig.from_pretrained(path)
        if abs(config.downsample_ratio - data_args.down_sample_ratio) > 1e-9:
            raise ValueError(f"--down_sample_ratio {data_args.down_sample_ratio} differs from the checkpoint's "
                             f"{config.downsample_ratio}; mlp1's shape depends on it")
        if abs(model_args.unfreeze_vit_layers) > config.vision.num_hidden_layers:
            raise ValueError(f"--unfreeze_vit_layers {model_args.unfreeze_vit_layers}: the ViT has only "
                             f"{config.vision.num_hidden_layers} layers")
    return config


def stage3_runs_on(device):
    """Paddle's sharding stage3 asserts a GPU, an XPU or a custom device (an NPU)."""
    return device != "cpu"


def tensor_parallel_runs_on(device):
    """fleet's TensorParallel wrapper broadcasts each step's inputs only on a GPU, an XPU or an NPU."""
    return device != "cpu"


def load_model(model_args, data_args, training_args):
    """The checkpoint, prepared for training as the arguments say; returns (model, tokenizer, model_dir)."""
    model_dir = resolve_model_dir(model_args.model_name_or_path)
    if model_dir != model_args.model_name_or_path:  # downloaded: check its config.json too
        check_arguments(dataclasses.replace(model_args, model_name_or_path=model_dir), data_args, training_args)
    tokenizer = load_tokenizer(model_dir)
    dtype = _training_dtype(training_args)
    check_weights_fit_device(model_dir, dtype, tensor_parallel_degree=training_args.tensor_parallel_degree)
    tp = TensorParallel.from_fleet() if training_args.tensor_parallel_degree > 1 else None
    model = InternVLChatModel.from_pretrained(model_dir, dtype=dtype, cpu_bf16_weights=False,  # trains float32
                                              tensor_parallel=tp)
    tm.configure(model, template=data_args.conv_style or model.config.template,
                 select_layer=model_args.vision_select_layer, ps_version=model_args.ps_version,
                 force_image_size=data_args.force_image_size, dynamic_image_size=data_args.dynamic_image_size,
                 use_thumbnail=data_args.use_thumbnail, min_dynamic_patch=data_args.min_dynamic_patch,
                 max_dynamic_patch=data_args.max_dynamic_patch)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    tm.resize_token_embeddings(model, tm.tokenizer_vocab_size(tokenizer))
    tm.set_drop_path_rate(model, model_args.drop_path_rate)
    if model_args.use_backbone_lora:
        tm.add_lora(model, tm.VIT_LORA_TARGETS, model_args.use_backbone_lora)
    if model_args.use_llm_lora:
        tm.add_lora(model, tm.LLM_LORA_TARGETS, model_args.use_llm_lora)
    trainable = tm.set_trainable(model, freeze_llm=model_args.freeze_llm, freeze_backbone=model_args.freeze_backbone,
                                 freeze_mlp=model_args.freeze_mlp, unfreeze_vit_layers=model_args.unfreeze_vit_layers,
                                 unfreeze_lm_head=model_args.unfreeze_lm_head, use_llm_lora=model_args.use_llm_lora,
                                 use_backbone_lora=model_args.use_backbone_lora)
    if any(name.startswith(("language_model.lm_head.", "language_model.embed_tokens.")) for name in trainable):
        tm.untie_word_embeddings(model)
    in_eval = tm.keep_frozen_in_eval(model)
    tm.set_gradient_checkpointing(model, model_args.grad_checkpoint)
    total = sum(int(p.numel()) for p in model.parameters())
    count = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
    logger.info("trainable: %d of %d parameters (%.2f%%) in %d tensors; frozen parts in eval mode: %s", count, total,
                100.0 * count / total, len(trainable), ", ".join(in_eval) or "none")
    return model, tokenizer, model_dir


def check_weights_fit_device(model_dir, dtype, device_bytes=None, tensor_parallel_degree=1):
    """Stop with one sentence when the weights alone exceed a GPU's memory.

    Every rank loads its share onto its device: with tensor parallelism 1/degree of the language
    model plus the whole ViT and mlp1, else the whole model, which sharding (stage3 too) splits only
    afterwards. A model that cannot fit would otherwise fail with an out-of-memory error minutes into
    loading. `device_bytes` defaults to the current GPU's memory (no check elsewhere).
    """
    device = paddle.get_device()
    if device_bytes is None:
        if not device.startswith("gpu"):
            return
        device_bytes = paddle.device.cuda.get_device_properties(device).total_memory
    with open_checkpoint(model_dir) as checkpoint:
        count = sum(math.prod(checkpoint.shape(name)) for name in checkpoint.keys())
    # A rank's share, split exactly as tensor_parallel.py splits it (the model is built without memory).
    needed = estimate(InternVLChatConfig.from_pretrained(model_dir),
                      Plan(mode="full", tensor_parallel=tensor_parallel_degree, dtype=dtype))["weights"]
    if needed > device_bytes:
        where = (f"with --tensor_parallel_degree {tensor_parallel_degree}" if tensor_parallel_degree > 1
                 else "before sharding splits them")
        raise ValueError(f"the model's {count / 1e9:.1f}B weights need {needed / 2**30:.1f} GiB in {dtype} on every "
                         f"device {where}, more than the {device_bytes / 2**30:.1f} GiB of {device}; use devices "
                         "with more memory or a larger --tensor_parallel_degree")


def _training_dtype(training_args):
    """bf16/fp16 parameters for pure low-precision (O2) training, float32 otherwise (O1 autocasts)."""
    if training_args.fp16_opt_level == "O2" and (training_args.bf16 or training_args.fp16):
        return "bfloat16" if training_args.bf16 else "float16"
    return "float32"


def _export_dtype(training_args):
    """The precision the run trained in (bf16 like the official checkpoints when --bf16)."""
    return "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else "float32"


def build_dataset(data_args, training_args, tokenizer, model):
    config = DataConfig(template=model.config.template, num_image_token=model.num_image_token,
                        image_size=data_args.force_image_size, dynamic_image_size=data_args.dynamic_image_size,
                        use_thumbnail=data_args.use_thumbnail, min_dynamic_patch=data_args.min_dynamic_patch,
                        max_dynamic_patch=data_args.max_dynamic_patch, max_seq_length=data_args.max_seq_length,
                        normalize_type=data_args.normalize_type, video_frames=data_args.video_frames,
                        bad_sample_policy=data_args.bad_sample_policy, seed=training_args.seed)
    return SupervisedDataset(data_args.meta_path, tokenizer, config), Collator(tokenizer.pad_token_id)


def resume_checkpoint(training_args):
    """--resume_from_checkpoint, else the newest complete checkpoint in output_dir (unless overwriting)."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if training_args.overwrite_output_dir:
        return None
    checkpoint = last_complete_checkpoint(training_args.output_dir)
    if checkpoint:
        logger.info("resuming from %s (pass --overwrite_output_dir True to start over)", checkpoint)
    return checkpoint


def gather_full_parameters(trainer):
    """Sharding stage3 keeps a slice of each parameter per rank: gather them all on every rank
    (a collective) before rank 0 writes, the frozen ones too (a frozen ViT, LoRA's base weights)."""
    if ShardingOption.FULL_SHARD in trainer.args.sharding:
        trainer.model_wrapped.get_all_parameters(convert2cpu=True, with_freeze_param=True)


def main(argv=None, callbacks=None):
    """Fine-tune and export; returns the trainer (None for --dry_run). `callbacks` are TrainerCallbacks."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before parsing, which logs third-party notices. INFO: our lines and the Trainer's progress.
    setup_logging("--verbose" in argv, level=logging.INFO, keep_third_party_info=True)
    model_args, data_args, training_args = parse_arguments(argv)
    check_arguments(model_args, data_args, training_args)
    if training_args.dry_run:
        logger.info("dry run: the arguments and the data files named in %s are valid", data_args.meta_path)
        return None

    set_seed(training_args.seed)
    # Checkpointed optimizer states are keyed by parameter names, which Paddle numbers per process:
    # a fresh name scope gives every run the same names, so a resume inside one process
    # (a notebook, the tests) finds its states too.
    with unique_name.guard():
        model, tokenizer, model_dir = load_model(model_args, data_args, training_args)
        dataset, collator = build_dataset(data_args, training_args, tokenizer, model)
        trainer = InternVLTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                                  callbacks=callbacks)
        result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    metrics = dict(result.metrics, train_samples=len(dataset))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if dataset.skipped:
        logger.warning("bad samples skipped: %s", dict(dataset.skipped))
    gather_full_parameters(trainer)
    if training_args.should_save or model.language_model.tensor_parallel is not None:  # TP: gathered by all
        tm.export_checkpoint(model, model_dir, training_args.output_dir, dtype=_export_dtype(training_args))
    if training_args.world_size > 1:
        paddle.distributed.barrier()  # every rank waits for the export before it leaves
    return trainer


def cli(argv=None):
    """The command line: one-line user errors; a finished multi-process run exits at once.

    Everything is written and flushed by then. Skipping Paddle's C++ teardown matters because
    rank 0 sometimes aborted (SIGABRT) there after a finished run on two CPU processes. The data
    loader's worker processes are stopped first: skipped along with the teardown, they outlived the
    run (orphans blocked on a pipe, ~400 MB each).
    """
    run_main(main, argv)
    if paddle.distributed.get_world_size() > 1:
        stop_child_processes()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def stop_child_processes(timeout=10):
    """Terminate and reap this process's multiprocessing children (the data loader's workers)."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout)


if __name__ == "__main__":
    cli()
