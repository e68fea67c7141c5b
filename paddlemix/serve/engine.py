"""The model on one worker thread; requests that wait together are decoded together.

Paddle is not safe for concurrent forward passes, and the tokenizer mutates its own state, so both
are used only on the worker thread: the event loop validates, queues and relays events. The
worker takes up to `max_batch` waiting requests with the same sampling settings and runs them as
one left-padded batch through `model.generate`, which gives each row chat()'s answer. A row ends
at the template separator, its own `max_tokens` or a stop sequence; a cancelled row (its client
went away) ends at once, and the batch stops when no row is left.
"""
import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..models.internvl2.conversation import get_conv_template
from ..models.internvl2.generation import GenerationError
from ..models.internvl2.modeling import IMG_CONTEXT_TOKEN, PromptError
from ..models.internvl2.processing import build_transform
from .answer import final_text, settled_text
from .errors import APIError
from .media import TILE_SIZE

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room for another waiting request: the caller answers 429."""


class _BatchDone(Exception):
    """Raised by the streamer to end generation once every row has finished or was cancelled."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: Optional[int] = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple = ()

    def group(self, job_id):
        """Requests with equal groups may share a batch."""
        if self.temperature == 0:
            return ("greedy",)  # rows differing only in max_tokens are cut per row
        if self.seed is not None:
            return ("seeded", job_id)  # the RNG is shared by a batch: a seed reproduces only alone
        return ("sample", self.temperature, self.top_p)

    def generation_settings(self):
        if self.temperature == 0:
            return dict(do_sample=False)
        return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, seed=self.seed)


# Events a job receives, in order: Started, then Delta pieces (streaming only), then Finished; or Failed.
@dataclass
class Started:
    prompt_tokens: int


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    error: APIError


class Job:
    """One chat request: its prompt, its settings and the queue its coroutine reads events from."""

    def __init__(self, prompt, sampling, stream, loop):
        self.prompt, self.sampling, self.stream = prompt, sampling, stream
        self.group = sampling.group(id(self))
        self.events = asyncio.Queue()
        self.cancelled = False
        self.done = False
        self._loop = loop

    def emit(self, event):
        """Called on the worker thread; the event reaches the request's coroutine on the event loop."""
        if isinstance(event, (Finished, Failed)):
            self.done = True
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled = True


class Engine:
    """The bounded queue of waiting jobs and the worker thread that batches and decodes them."""

    def __init__(self, model, tokenizer, max_batch=8, max_queue=64, default_max_tokens=1024):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.default_max_tokens = max_batch, max_queue, default_max_tokens
        self.sep = get_conv_template(model.template).stop_token
        self.eos_id = tokenizer.convert_tokens_to_ids(self.sep)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        self.transform = build_transform(TILE_SIZE)
        self._cond = threading.Condition()
        self._pending = deque()
        self._reserved = 0  # waiting requests, counted from arrival (before their bodies are read)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="paddlemix-serve-model", daemon=True)

    # --- event-loop side --------------------------------------------------------
    def start(self):
        self._thread.start()

    def stop(self, timeout=10):
        """Refuse the waiting requests and let the running batch finish (up to `timeout` seconds)."""
        with self._cond:
            self._stopping = True
            for job in self._pending:
                job.emit(Failed(APIError(503, "the server is shutting down", type="server_error")))
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def alive(self):
        return self._thread.is_alive()

    def reserve(self):
        """Claim a waiting slot for a request that has just arrived; QueueFull when none is left."""
        with self._cond:
            if self._reserved >= self.max_queue:
                raise QueueFull()
            self._reserved += 1

    def release(self):
        """Give back a slot whose request was refused before it was queued."""
        with self._cond:
            self._reserved -= 1

    def submit(self, job):
        with self._cond:
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job):
        """The client went away: a waiting job leaves the queue, a running one ends at the next token."""
        job.cancelled = True
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._reserved -= 1

    # --- worker thread ----------------------------------------------------------
    def _run(self):
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            try:
                self._run_batch(jobs)
            except Exception:  # a failed batch must not stop the server: its requests get a 500
                logger.exception("a batch of %d request(s) failed", len(jobs))
                for job in jobs:
                    if not job.done:
                        job.emit(Failed(APIError(500, "internal server error", type="server_error")))

    def _next_batch(self):
        """The oldest waiting job and up to max_batch - 1 later ones of its group."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._pending.popleft()
            jobs = [first] + [job for job in self._pending if job.group == first.group][:self.max_batch - 1]
            for job in jobs[1:]:
                self._pending.remove(job)
            self._reserved -= len(jobs)
            return jobs

    def _run_batch(self, jobs):
        rows = []
        for job in jobs:
            if job.cancelled:
                continue
            try:
                rows.append(self._prepare(job))
            except APIError as error:
                job.emit(Failed(error))
        if not rows:
            return
        if self._fits(max(len(row.ids) for row in rows), max(row.max_new for row in rows)):
            self._generate(rows)
        else:  # long prompts and long answers in different rows: together they would pass the context
            for row in rows:
                self._generate([row])

    def _prepare(self, job):
        ids = self.tokenizer(job.prompt.query, return_tensors="np")["input_ids"][0]
        max_new = job.sampling.max_tokens or self.default_max_tokens
        try:
            self.model._check_context(len(ids), max_new)
        except PromptError as error:
            raise APIError(400, str(error), param="messages", code="context_length_exceeded") from None
        pixels = [self.transform(tile) for tiles in job.prompt.images for tile in tiles]
        return _Row(job, ids, np.stack(pixels) if pixels else None, max_new, self)

    def _fits(self, prompt_len, max_new):
        try:
            self.model._check_context(prompt_len, max_new)
        except PromptError:
            return False
        return True

    def _generate(self, rows):
        start = time.perf_counter()
        length = max(len(row.ids) for row in rows)
        input_ids = np.full([len(rows), length], self.pad_id, dtype=np.int64)
        attention_mask = np.zeros([len(rows), length], dtype=np.int64)
        for index, row in enumerate(rows):  # left padding
            input_ids[index, length - len(row.ids):] = row.ids
            attention_mask[index, length - len(row.ids):] = 1
        pixels = [row.pixels for row in rows if row.pixels is not None]
        for row in rows:
            row.job.emit(Started(len(row.ids)))
        streamer = _BatchStreamer(rows)
        settings = rows[0].job.sampling.generation_settings()
        try:
            self.model.generate(pixel_values=np.concatenate(pixels) if pixels else None, input_ids=input_ids,
                                attention_mask=attention_mask, streamer=streamer, eos_token_id=self.eos_id,
                                max_new_tokens=max(row.max_new for row in rows), **settings)
        except _BatchDone:
            pass
        except (PromptError, GenerationError) as error:
            for row in rows:
                if not row.job.done:
                    row.job.emit(Failed(APIError(400, str(error))))
            return
        streamer.end()
        logger.debug("batch of %d: %d prompt tokens, %.2f s", len(rows), length, time.perf_counter() - start)


class _Row:
    """One request's answer as it grows; streams the settled text and reports the end."""

    def __init__(self, job, ids, pixels, max_new, engine):
        self.job, self.ids, self.pixels, self.max_new = job, ids, pixels, max_new
        self.engine = engine
        self.tokens, self.sent, self.finished = [], "", False

    @property
    def over(self):
        return self.finished or self.job.cancelled

    def add(self, token):
        self.tokens.append(token)
        if token == self.engine.eos_id:
            return self.finish("stop")
        stops = self.job.sampling.stop
        if stops or self.job.stream:
            decoded = self._decode()
            if stops and final_text(decoded, self.engine.sep, stops)[1]:
                return self.finish("stop")
            if self.job.stream:
                self._send(settled_text(decoded, self.engine.sep, stops))
        if len(self.tokens) >= self.max_new:
            self.finish("length")

    def finish(self, reason):
        self.finished = True
        text = final_text(self._decode(), self.engine.sep, self.job.sampling.stop)[0]
        if self.job.stream:
            self._send(text)
        self.job.emit(Finished(text, reason, len(self.ids), len(self.tokens)))

    def _decode(self):
        return self.engine.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _send(self, text):
        if text.startswith(self.sent):
            if len(text) > len(self.sent):
                self.job.emit(Delta(text[len(self.sent):]))
                self.sent = text
        else:  # should not happen: decoding more tokens rewrote text already sent
            logger.warning("streamed text diverged from the answer: %r is not a prefix of %r", self.sent, text)


class _BatchStreamer:
    """generate()'s streamer for a whole batch: each step's tokens go to their rows."""

    follows_batches = True

    def __init__(self, rows):
        self.rows = rows

    def put(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.ndim == 2:  # the prompt ids, which are empty: the prompt is embeddings
            return
        for row, token in zip(self.rows, tokens.tolist()):
            if not row.over:
                row.add(token)
        if all(row.over for row in self.rows):
            raise _BatchDone()

    def end(self):
        for row in self.rows:
            if not row.over:
                row.finish("length")
