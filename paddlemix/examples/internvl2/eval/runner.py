"""Answering a benchmark across processes, resumably.

Under ``python -m paddle.distributed.launch`` every process gets a contiguous block of the
questions (PADDLE_TRAINER_ID of PADDLE_TRAINERS_NUM, as the official InferenceSampler splits
them) and appends each answer to its own ``answers.rank<N>.jsonl`` as soon as it is produced.
A rerun skips every question already answered in any of those files, so an interrupted run
resumes where it stopped, even with a different number of processes. Rank 0 then waits until
all questions are answered and merges the answers in dataset order. A single process is rank 0
of 1 and needs no launcher.
"""
import glob
import json
import logging
import os
import time
from typing import Callable, Dict, List, Sequence, Tuple

from tqdm import tqdm

from .datafiles import drop_torn_tail, read_keyed
from .tasks import Item

logger = logging.getLogger(__name__)

ANSWER_GLOB = "answers.rank*.jsonl"


def distributed_rank() -> Tuple[int, int]:
    """(rank, world size) from the variables paddle.distributed.launch sets; (0, 1) without it."""
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"PADDLE_TRAINER_ID={rank} is not below PADDLE_TRAINERS_NUM={world}")
    return rank, world


def shard(items: Sequence, rank: int, world: int) -> Sequence:
    """Contiguous block ``rank`` of ``world``; the first ``len % world`` blocks get one extra item."""
    size, extra = divmod(len(items), world)
    begin = rank * size + min(rank, extra)
    return items[begin:begin + size + (rank < extra)]


def read_answers(run_dir: str) -> Dict[str, str]:
    """Every complete answer in the run's answer files, by key (a torn last line is ignored)."""
    return read_keyed(sorted(glob.glob(os.path.join(run_dir, ANSWER_GLOB))), "response")


def answer_shard(items: Sequence[Item], run_dir: str, answer: Callable[[Item], str], desc: str) -> None:
    """Answer this rank's unanswered questions, one flushed JSONL line each.

    ``answer`` is only called for unanswered questions, so a caller that loads the model on the
    first call never loads it for a finished shard.
    """
    rank, world = distributed_rank()
    mine = shard(items, rank, world)
    done = read_answers(run_dir)
    todo = [item for item in mine if item.key not in done]
    logger.info("rank %d/%d: %d questions, %d already answered", rank, world, len(mine), len(mine) - len(todo))
    if not todo:
        return
    path = os.path.join(run_dir, f"answers.rank{rank}.jsonl")
    drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as log, \
            tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="q") as bar:
        for item in todo:
            response = answer(item)
            log.write(json.dumps({"key": item.key, "response": response}, ensure_ascii=False) + "\n")
            log.flush()
            bar.update()


def wait_for_answers(items: Sequence[Item], run_dir: str, timeout: float, poll: float = 2.0) -> Dict[str, str]:
    """Rank 0: block until every question has an answer; TimeoutError after ``timeout`` s without progress."""
    last_missing, last_change = None, time.monotonic()
    while True:
        answers = read_answers(run_dir)
        missing = sum(1 for item in items if item.key not in answers)
        if not missing:
            return answers
        if missing != last_missing:
            last_missing, last_change = missing, time.monotonic()
            logger.info("waiting for the other ranks: %d answers missing", missing)
        elif time.monotonic() - last_change > timeout:
            raise TimeoutError(f"{missing} answers still missing in {run_dir} after {timeout:.0f} s without "
                               f"progress from the other ranks; rerun the same command to resume")
        time.sleep(poll)


def merge(items: Sequence[Item], answers: Dict[str, str]) -> List[Dict]:
    """One record per question in dataset order: key, prompt, raw response and the task's metadata."""
    return [{"key": item.key, "question": item.prompt, "response": answers[item.key], **item.meta}
            for item in items]
