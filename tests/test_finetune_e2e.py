"""internvl_chat_finetune.py end to end on a tiny InternVL2-2B-shaped checkpoint and a synthetic dataset
(images, one without a tag, two images, a video, a text-only chat): training, export, chat_demo, resume,
interrupted saves, and what the freeze/LoRA flags leave untouched in the exported weights."""
import logging
import math
import subprocess
import sys

import numpy as np
import paddle
import pytest
from paddleformers.trainer import Trainer, TrainerCallback

from paddlemix.examples.internvl2.internvl_chat_finetune import check_weights_fit_device, main
from paddlemix.models.internvl2.tensor_parallel import TensorParallel, apply_tensor_parallel
from paddlemix.models.internvl2 import InternVLChatModel, load_image, load_tokenizer
from paddlemix.models.internvl2.checkpoint import open_checkpoint
from paddlemix.models.internvl2.train_data import Collator, DataConfig, SupervisedDataset
from paddlemix.models.internvl2.train_trainer import COMPLETE_MARKER, IncompleteCheckpointError
from reference import REPO_ROOT, load_tool, require_asset
from test_finetune_data import write_synthetic_dataset

logger = logging.getLogger(__name__)
DEMO = REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "chat_demo.py"
DATA_ARGS = ["--dynamic_image_size", "True", "--use_thumbnail", "True", "--max_dynamic_patch", "1",
             "--video_frames", "2", "--max_seq_length", "1024", "--per_device_train_batch_size", "1",
             "--logging_steps", "1", "--seed", "7", "--save_steps", "1000"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = require_asset("tokenizers", "internvl2-2b")
    out = tmp_path_factory.mktemp("tiny2b")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out), seed=5)
    return str(out)


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"))


class Losses(TrainerCallback):
    def __init__(self):
        self.values = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.values.append(float(logs["loss"]))


def finetune(tiny, meta, output_dir, *extra, callbacks=()):
    losses = Losses()
    argv = ["--model_name_or_path", tiny, "--meta_path", meta, "--output_dir", str(output_dir), *DATA_ARGS, *extra]
    main(argv, callbacks=[losses, *callbacks])
    return losses.values


def dataset_loss(model_dir, meta):
    """Mean loss of the model in `model_dir` over every sample, in eval mode."""
    model, tokenizer = InternVLChatModel.from_pretrained(model_dir), load_tokenizer(model_dir)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    config = DataConfig(template=model.config.template, num_image_token=model.num_image_token, max_dynamic_patch=1,
                        video_frames=2)
    dataset, collate = SupervisedDataset(meta, tokenizer, config), Collator(tokenizer.pad_token_id)
    with paddle.no_grad():
        losses = [float(model(**{k: paddle.to_tensor(v) for k, v in collate([dataset[i]]).items()})["loss"])
                  for i in range(len(dataset))]
    return float(np.mean(losses))


def tensors(model_dir):
    with open_checkpoint(model_dir) as checkpoint:
        return {name: np.asarray(checkpoint.get(name)) for name in checkpoint.keys()}


def test_finetuning_lowers_the_loss_and_chat_demo_loads_the_result(tiny, meta, tmp_path):
    out = tmp_path / "run"
    losses = finetune(tiny, meta, out, "--max_steps", "30", "--learning_rate", "2e-3", "--lr_scheduler_type",
                      "constant", "--freeze_backbone", "True", "--group_by_length", "True")
    logger.info("training losses: %s", " ".join(f"{loss:.2f}" for loss in losses))
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.5
    before, after = dataset_loss(tiny, meta), dataset_loss(str(out), meta)
    logger.info("dataset loss %.3f -> %.3f", before, after)
    assert after < before - 1.5

    image = meta.replace("meta.json", "images/red.png")
    proc = subprocess.run([sys.executable, str(DEMO), "--model_name_or_path", str(out), "--image_path", image,
                           "--text", "What color is this?", "--max_num", "1", "--max_new_tokens", "8"],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, tokenizer = InternVLChatModel.from_pretrained(str(out)), load_tokenizer(str(out))
    expected = model.chat(tokenizer, load_image(image, max_num=1), "What color is this?",
                          dict(max_new_tokens=8, do_sample=False))
    assert proc.stdout == expected + "\n"  # the tiny model may well answer with its end token only


class Killed(Exception):
    """Stands in for the process dying."""


def test_resume_repeats_the_uninterrupted_run_and_never_uses_a_half_saved_checkpoint(tiny, meta, tmp_path,
                                                                                      monkeypatch):
    # Trainable ViT with drop path and length-grouped shuffled batches: the RNG and sampler state must resume too.
    args = ("--max_steps", "4", "--save_steps", "2", "--learning_rate", "1e-3", "--warmup_ratio", "0.25",
            "--freeze_backbone", "False", "--drop_path_rate", "0.2", "--group_by_length", "True")
    uninterrupted = finetune(tiny, meta, tmp_path / "a", *args)

    save = Trainer._save_checkpoint

    def dies_in_second_save(self, model, metrics=None):
        save(self, model, metrics)  # every file is written ...
        if self.state.global_step == 4:
            raise Killed  # ... but the process dies before the save counts as complete

    monkeypatch.setattr(Trainer, "_save_checkpoint", dies_in_second_save)
    with pytest.raises(Killed):
        finetune(tiny, meta, tmp_path / "b", *args)
    monkeypatch.undo()
    half_saved = tmp_path / "b" / "checkpoint-4"
    assert half_saved.is_dir() and not (half_saved / COMPLETE_MARKER).exists()
    assert (tmp_path / "b" / "checkpoint-2" / COMPLETE_MARKER).exists()

    with pytest.raises(IncompleteCheckpointError, match="not a complete checkpoint"):
        finetune(tiny, meta, tmp_path / "b", *args, "--resume_from_checkpoint", str(half_saved))
    resumed = finetune(tiny, meta, tmp_path / "b", *args)  # picks checkpoint-2, the newest complete one
    assert resumed == uninterrupted[2:]


def test_freeze_flags_leave_everything_else_bitwise_unchanged(tiny, meta, tmp_path):
    out = tmp_path / "run"
    finetune(tiny, meta, out, "--max_steps", "2", "--learning_rate", "1e-3", "--freeze_llm", "True",
             "--unfreeze_lm_head", "True", "--freeze_backbone", "True", "--unfreeze_vit_layers", "-1")
    source, trained = tensors(tiny), tensors(str(out))
    assert source.keys() == trained.keys()
    moved = {name for name in source if not np.array_equal(source[name], trained[name])}
    expected = {name for name in source if name.startswith(("mlp1.", "language_model.output.",
                                                            "vision_model.encoder.layers.1."))}
    assert moved == expected


def test_lora_changes_only_the_adapted_weights(tiny, meta, tmp_path):
    out = tmp_path / "run"
    finetune(tiny, meta, out, "--max_steps", "2", "--learning_rate", "1e-3", "--freeze_llm", "True",
             "--freeze_mlp", "True", "--freeze_backbone", "True", "--use_llm_lora", "4", "--use_backbone_lora", "4")
    source, trained = tensors(tiny), tensors(str(out))
    assert source.keys() == trained.keys()  # merged into a plain checkpoint
    moved = {name for name in source if not np.array_equal(source[name], trained[name])}
    adapted = ("attention.wqkv.weight", "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
               "feed_forward.w2.weight", "attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
    assert moved == {name for name in source if name.endswith(adapted)}


def test_weights_too_big_for_the_device_stop_before_loading(tiny):
    model = InternVLChatModel.from_pretrained(tiny)
    count = sum(math.prod(param.shape) for param in {id(p): p for p in model.parameters()}.values())
    assert check_weights_fit_device(tiny, "bfloat16", device_bytes=2 * count) is None  # exactly fits
    with pytest.raises(ValueError) as error:
        check_weights_fit_device(tiny, "float32", device_bytes=4 * count - 1)
    assert str(error.value).startswith(f"the model's {count / 1e9:.1f}B weights need {4 * count / 2**30:.1f} GiB in "
                                       "float32 on every device before sharding splits them, more than the ")
    assert check_weights_fit_device(tiny, "float32") is None  # no GPU here: nothing to check
    # Tensor parallelism: each device holds its share as tensor_parallel.py splits the model.
    with paddle.LazyGuard():
        split = InternVLChatModel(model.config)
        apply_tensor_parallel(split.language_model, TensorParallel(2, 0, group=object()))
    half = 4 * sum(math.prod(param.shape) for param in split.parameters())
    assert half < 4 * count
    assert check_weights_fit_device(tiny, "float32", device_bytes=half, tensor_parallel_degree=2) is None
    with pytest.raises(ValueError, match="on every device with --tensor_parallel_degree 2, more than the"):
        check_weights_fit_device(tiny, "float32", device_bytes=half - 4 * 64, tensor_parallel_degree=2)
