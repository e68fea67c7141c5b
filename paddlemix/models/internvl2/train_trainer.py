"""paddleformers' Trainer with what InternVL fine-tuning adds: length-grouped batches and
checkpoints that only count once they are complete.

Trainer writes a checkpoint-N folder file by file (weights, optimizer shards of every
rank, scheduler, RNG, trainer state). A run killed in the middle leaves a folder that
looks like a checkpoint but lacks some of them; resuming from it would silently restart
the optimizer or the schedule. InternVLTrainer writes COMPLETE_MARKER after every rank
has finished, resumes only from marked folders, and refuses an unmarked one.
"""
import contextlib
import json
import logging
import os
import re

import numpy as np
import paddle
import paddle.distributed as dist
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


class InternVLTrainer(Trainer):
    """Trainer + group_by_length + complete-only checkpoints (see the module docstring)."""

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

