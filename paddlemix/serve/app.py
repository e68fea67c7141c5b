"""The FastAPI app: OpenAI's chat-completions API, the model list, a health check and the chat page.

A request is refused with 429 at once when the queue is full, validated (JSON, types, model,
images) before it is queued, and cancelled when its client disconnects, whether it is still
waiting or already decoding.
"""
import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from . import protocol
from .engine import Delta, Failed, Finished, Job, QueueFull, Sampling
from .errors import APIError, install_handlers, invalid
from .prompt import build_prompt

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "index.html"


def create_app(engine, model_name, limits, max_body_bytes):
    """The app around a (not yet started) Engine; the engine runs for the app's lifetime."""

    # Images are decoded on as many threads as there are cores: more would not be faster, and
    # every extra thread that decodes grows its own malloc arena (measured: RSS kept creeping).
    decoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="paddlemix-serve-media")

    @asynccontextmanager
    async def lifespan(_):
        engine.start()
        try:
            yield
        finally:
            engine.stop()
            decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="PaddleMIX InternVL2", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    install_handlers(app)
    created = int(time.time())
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "error", "detail": "the model worker has stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return protocol.model_list(model_name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        # The slot is claimed before the body is read: a full server answers 429 at once, and the
        # memory held by requests in flight is bounded by max_queue bodies.
        try:
            engine.reserve()
        except QueueFull:
            raise APIError(429, "the server is busy (its request queue is full); retry later",
                           type="rate_limit_error", code="rate_limit_exceeded") from None
        queued = False
        try:
            job, stream, include_usage = await _new_job(request, engine, model_name, limits, max_body_bytes, decoders)
            engine.submit(job)
            queued = True
        finally:
            if not queued:
                engine.release()
        return await _respond(request, engine, job, stream, include_usage, model_name)

    return app


async def _new_job(request, engine, model_name, limits, max_body_bytes, decoders):
    """(Job, stream, include_usage) for a request; its body and images are freed once this returns."""
    chat = protocol.parse_request(await _read_json(request, max_body_bytes))
    if chat.model != model_name:
        raise APIError(404, f"the model '{chat.model}' does not exist; this server serves '{model_name}'",
                       param="model", code="model_not_found")
    loop = asyncio.get_running_loop()
    prompt = await loop.run_in_executor(decoders, build_prompt, engine.model, chat.messages, limits)
    sampling = Sampling(chat.max_new_tokens, 0.0 if chat.temperature is None else chat.temperature,
                        1.0 if chat.top_p is None else chat.top_p, chat.seed, chat.stop_sequences)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    return Job(prompt, sampling, chat.stream, loop), chat.stream, include_usage


async def _respond(request, engine, job, stream, include_usage, model_name):
    request_id = protocol.completion_id()
    started = await _next_event(request, engine, job)
    if started is None:
        return Response(status_code=204)  # the client is gone; nobody reads this
    if isinstance(started, Failed):
        raise started.error
    if stream:
        events = _sse(job, request_id, model_name, include_usage)
        return EventStreamResponse(events, on_close=lambda: engine.cancel(job))
    while True:
        event = await _next_event(request, engine, job)
        if event is None:
            return Response(status_code=204)
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, Finished):
            return protocol.completion(request_id, model_name, event.text, event.finish_reason, event.prompt_tokens,
                                       event.completion_tokens)


async def _read_json(request, max_bytes):
    """The body parsed as JSON, read no further than max_bytes (413 beyond)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body is larger than the {max_bytes} bytes allowed", code="body_too_large")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            raise APIError(413, f"the request body is larger than the {max_bytes} bytes allowed",
                           code="body_too_large")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise invalid(f"the request body is not valid JSON ({type(error).__name__}: {error})") from None


async def _next_event(request, engine, job):
    """The job's next event, or None when the client disconnects first (the job is then cancelled)."""
    getter = asyncio.ensure_future(job.events.get())
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        getter.cancel()  # a no-op once it holds its event
    if getter in done:
        return getter.result()
    engine.cancel(job)
    return None


async def _disconnected(receive):
    while (await receive())["type"] != "http.disconnect":
        pass


async def _sse(job, request_id, model_name, include_usage):
    """OpenAI's chunk stream: the role, the text pieces, the finish reason, [usage], [DONE]."""
    yield _event(protocol.chunk(request_id, model_name, {"role": "assistant", "content": ""}))
    while True:
        event = await job.events.get()
        if isinstance(event, Delta):
            yield _event(protocol.chunk(request_id, model_name, {"content": event.text}))
        elif isinstance(event, Finished):
            yield _event(protocol.chunk(request_id, model_name, finish_reason=event.finish_reason))
            if include_usage:
                counts = protocol.usage(event.prompt_tokens, event.completion_tokens)
                yield _event(protocol.chunk(request_id, model_name, usage_counts=counts))
            break
        elif isinstance(event, Failed):
            yield _event(event.error.body())
            break
    yield "data: [DONE]\n\n"


def _event(body):
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class EventStreamResponse(StreamingResponse):
    """Server-sent events that watch for the client leaving while they stream.

    Under ASGI 2.4 Starlette notices a disconnect only at the next write, which may be long in
    coming; here the disconnect ends the stream at once and `on_close` frees the job's row.
    """

    media_type = "text/event-stream"

    def __init__(self, content, on_close):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            async with anyio.create_task_group() as group:

                async def stream():
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away mid-write
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.on_close()
