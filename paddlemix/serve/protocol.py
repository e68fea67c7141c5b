"""The OpenAI chat-completions request (validated strictly: a wrong type is a 400, never a guess)
and the response, chunk and model-list bodies.

Fields this server does not use (e.g. `frequency_penalty`, `user`) are ignored, as many OpenAI-compatible
servers do, so ordinary clients work; `n` other than 1 is refused because it would be silently wrong.
"""
import time
import uuid
from typing import Annotated, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import invalid

MAX_STOP_SEQUENCES = 4  # OpenAI's limit


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Optional[str] = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoPart(_Strict):
    """A video as its ordered frames (each a URL like image_url's), the form DashScope's API uses."""

    type: Literal["video"]
    video: List[str] = Field(min_length=1)


Part = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[Part]]


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: List[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = Field(default=None, ge=0, lt=2 ** 63)  # what paddle.seed takes
    n: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None

    @property
    def stop_sequences(self):
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(stop for stop in stops if stop)

    @property
    def max_new_tokens(self):
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(data):
    """A validated ChatCompletionRequest, or the 400 that names the first offending field."""
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        # Of a union's alternatives, the error that got furthest into the input says what is wrong.
        best = max(error.errors(), key=lambda item: len(_input_path(data, item["loc"])))
        path = _input_path(data, best["loc"]) + ([best["loc"][-1]] if best["type"] == "missing" else [])
        param = ".".join(str(part) for part in path) or None
        raise invalid(f"{param}: {best['msg']}" if param else best["msg"], param=param) from None
    if request.n not in (None, 1):
        raise invalid("only n=1 is supported", param="n")
    if len(request.stop_sequences) > MAX_STOP_SEQUENCES:
        raise invalid(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop")
    return request


def _input_path(data, loc):
    """The part of a pydantic error location that names real keys and indexes of the input
    (dropping pydantic's union-branch labels such as 'str' or 'list[...]')."""
    path = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            continue
        path.append(part)
    return path


def completion_id():
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(request_id, model, text, finish_reason, prompt_tokens, completion_tokens):
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(request_id, model, delta=None, finish_reason=None, usage_counts=None):
    """One SSE chunk; with `usage_counts` it is the final usage chunk, whose choices are empty."""
    body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    if usage_counts is not None:
        body.update(choices=[], usage=usage_counts)
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    return body


def model_list(model, created):
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "paddlemix"}]}
