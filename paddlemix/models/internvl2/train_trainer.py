"""paddleformers' Trainer with what InternVL fine-tuning adds: length-grouped batches,
checkpoints that only count once they are complete, and frozen parameters under sharding stage3.

Trainer writes a checkpoint-N folder file by file (weights, optimizer shards of every
rank, scheduler, RNG, trainer state). A run killed in the middle leaves a folder that
looks like a checkpoint but lacks some of them; resuming from it would silently restart
the optimizer or the schedule. InternVLTrainer writes COMPLETE_MARKER after every rank
has finished, resumes only from marked folders, and refuses an unmarked one.

Paddle's stage3 gathers a layer's full parameters before its backward and gives them back to
their slices from the gradient hooks of trainable parameters only. A frozen parameter on the
gradient path (LoRA's base weights, a frozen head or projector) therefore stays whole on every
rank after the first backward: the memory stage3 should save is lost, and the next checkpoint
save fails with a KeyError. FrozenSlices gives them back after each layer's backward.
"""
import collections
import contextlib
import json
import logging
import os
import re

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer
from paddle.distributed.fleet.meta_parallel.sharding.group_sharded_stage3 import GroupShardedStage3
from paddleformers.trainer import Trainer
from paddleformers.utils.batch_sampler import MappingDistributedBatchSampler

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


class IncompleteCheckpointError(ValueError):
    """A checkpoint folder whose save was interrupted."""


def is_complete_checkpoint(path):
    return os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def last_complete_checkpoint(output_dir):
    """The newest checkpoint-N folder of `output_dir` whose save completed, or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted((int(match.group(1)), name) for name in os.listdir(output_dir)
                   if (match := _CHECKPOINT_DIR.match(name)) and os.path.isdir(os.path.join(output_dir, name)))
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning("ignoring %s: its save did not complete (no %s)", path, COMPLETE_MARKER)
    return None


class LengthGroupedBatchSampler(MappingDistributedBatchSampler):
    """Batches of samples of similar length, so little of each batch is padding.

    As transformers' LengthGroupedSampler: a seeded permutation (fixed by seed and
    epoch, so a resumed run sees the same batches) is cut into mega-batches of
    MEGA_BATCH global batches, each sorted by length, longest first. Rank r takes
    its slice of every global batch.
    """

    MEGA_BATCH = 50

    def __init__(self, lengths, batch_size, num_replicas=1, rank=0, drop_last=False, data_seed=0):
        super().__init__(lengths, batch_size, num_replicas=num_replicas, rank=rank, shuffle=True,
                         drop_last=drop_last, data_seed=data_seed)
        self.lengths = np.asarray(lengths)
        self.num_samples = self.total_size // self.nranks

    def __iter__(self):
        local = self.batch_size * self._acc_steps
        global_size = local * self.nranks
        order = np.random.default_rng(self.base_seed + self.epoch).permutation(self.total_size)
        mega = global_size * self.MEGA_BATCH
        order = np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                                for chunk in np.split(order, range(mega, len(order), mega))])
        skip = self.consumed_samples // self.nranks
        batch = []
        for start in range(0, len(order), global_size):
            chunk = order[start:start + global_size]
            per_rank = len(chunk) // self.nranks
            for index in chunk[self.local_rank * per_rank:(self.local_rank + 1) * per_rank].tolist():
                if skip:
                    skip -= 1
                    continue
                batch.append(index)
                if len(batch) == local:
                    yield batch
                    batch = []
        if batch and not self.drop_last:
            yield batch


class _AfterBackward(PyLayer):
    """Identity on a layer's input whose backward runs once the layer's own backward is done."""

    @staticmethod
    def forward(ctx, tensor, callback):
        ctx.callback = callback
        return tensor

    @staticmethod
    def backward(ctx, grad):
        ctx.callback()
        return grad


class FrozenSlices:
    """Returns stage3's gathered frozen parameters to their slices (see the module docstring).

    The layer owning a frozen sliced parameter gets its input wrapped by _AfterBackward, so the
    parameter is released as soon as that layer's backward has used it; `release_all` after
    every training step catches the rest (layers whose input needs no gradient, as the first
    LoRA layer, and parameters shared by several layers).
    """

    def __init__(self, stage3):
        self.stage3 = stage3
        self.reported = False
        self.frozen = [param for param in stage3._layer.parameters()
                       if param.name in stage3._param2buffer_size and param.stop_gradient]
        owners = collections.defaultdict(list)
        for layer in stage3._layer.sublayers(include_self=True):
            for param in layer.parameters(include_sublayers=False):
                owners[id(param)].append(layer)
        for param in self.frozen:
            if len(owners[id(param)]) == 1:  # a shared one may still be needed by another layer's backward
                owners[id(param)][0].register_forward_pre_hook(self._hook([param]))

    def _hook(self, params):
        def release():
            for param in params:
                self.release(param)

        def wrap_inputs(layer, inputs):
            return tuple(_AfterBackward.apply(value, release)
                         if isinstance(value, paddle.Tensor) and not value.stop_gradient else value
                         for value in inputs)
        return wrap_inputs

    def release(self, param):
        """As stage3 does for a trainable parameter after its gradient: keep this rank's slice."""
        full_params = self.stage3._task_flow.full_param
        if getattr(param, "status", None) != "all" or param.name not in full_params:
            return
        start, end = self.stage3._param2buffer[param.name][self.stage3._rank]
        param.use_count = 0
        param._clear_data()
        param.fw_storage = full_params[param.name][0]._slice(start, end).detach().clone()
        param.status = "part"
        del full_params[param.name]

    def release_all(self):
        whole = [param for param in self.frozen if getattr(param, "status", None) == "all"]
        if not self.reported:
            self.reported = True
            logger.info("sharding stage3: %d of %d frozen sliced parameters were still whole after the first "
                        "training step", len(whole), len(self.frozen))
        for param in whole:
            self.release(param)


class InternVLTrainer(Trainer):
    """Trainer + group_by_length + complete-only checkpoints + stage3 with frozen parameters
    (see the module docstring)."""

    frozen_slices = None

    def _wrap_model(self, model, training=True):
        wrapped = super()._wrap_model(model, training)
        if isinstance(wrapped, GroupShardedStage3) and self.frozen_slices is None:
            self.frozen_slices = FrozenSlices(wrapped)
            if self.frozen_slices.frozen and wrapped._offload:
                raise ValueError("sharding stage3 offload cannot run with frozen parameters (a frozen ViT, LoRA); "
                                 "drop enable_stage3_offload")
            logger.info("sharding stage3: %d frozen sliced parameters go back to their slices after each backward",
                        len(self.frozen_slices.frozen))
        return wrapped

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        if self.frozen_slices is not None:
            self.frozen_slices.release_all()
        return loss

    def _get_train_sampler(self):
        if not getattr(self.args, "group_by_length", False):
            return super()._get_train_sampler()
        return LengthGroupedBatchSampler(self.train_dataset.lengths, self.args.per_device_train_batch_size,
                                         num_replicas=max(1, self.args.dataset_world_size),
                                         rank=max(0, self.args.dataset_rank),
                                         drop_last=self.args.dataloader_drop_last, data_seed=self.args.seed)

    def _save_checkpoint(self, model, metrics=None):
        super()._save_checkpoint(model, metrics)
        if dist.get_world_size() > 1:
            dist.barrier()
        if self.args.should_save:
            path = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            temporary = os.path.join(path, COMPLETE_MARKER + ".tmp")
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump({"global_step": self.state.global_step, "world_size": dist.get_world_size()}, f)
            os.replace(temporary, os.path.join(path, COMPLETE_MARKER))

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise IncompleteCheckpointError(f"no complete checkpoint in '{self.args.output_dir}' to resume from")
        if resume_from_checkpoint and not is_complete_checkpoint(resume_from_checkpoint):
            raise IncompleteCheckpointError(
                f"'{resume_from_checkpoint}' is not a complete checkpoint (no {COMPLETE_MARKER}: its save was "
                "interrupted, or it was not written by this script); resume from an earlier one or start over")
        with _synchronize_tolerates_cpu():
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


@contextlib.contextmanager
def _synchronize_tolerates_cpu():
    """Let `paddle.device.synchronize()` return on CPU instead of raising TypeError.

    Trainer waits for the device after every accumulated step, but Paddle's synchronize only
    knows GPU, XPU and custom devices; CPU kernels finish before they return, so there is
    nothing to wait for. Without this, --gradient_accumulation_steps > 1 cannot run on CPU.
    """
    original = paddle.device.synchronize

    def synchronize(device=None):
        if device is None and paddle.get_device() == "cpu":
            return None
        return original(device)

    paddle.device.synchronize = synchronize
    try:
        yield
    finally:
        paddle.device.synchronize = original

