"""Text streamers with the API and chunking of transformers' `TextStreamer` / `TextIteratorStreamer`.

`generate` calls `put(token_ids)` once with the prompt ids (empty here: InternVL
prompts are embeddings) and once per new token, then `end()`. Text is released
in whole words: up to the last space, at a newline, or after a CJK character,
so a word is never printed half-decoded. The model card's streaming code runs
unchanged:

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=10)
    thread = Thread(target=model.chat, kwargs=dict(..., generation_config=dict(..., streamer=streamer)))
    thread.start()
    for new_text in streamer:
        ...
"""
from queue import Queue

import numpy as np

# Unicode blocks of CJK ideographs: each one is a word of its own.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def _is_cjk(char):
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


class TextStreamer:
    """Prints the answer to stdout word by word as it is generated (a newline at the end)."""

    def __init__(self, tokenizer, skip_prompt=False, **decode_kwargs):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value):
        """Take the next token ids ([n] or [1, n]) and release the text they complete."""
        value = np.asarray(value)
        if value.ndim > 1:
            if value.shape[0] > 1:
                raise ValueError("a text streamer follows a single answer; batch size must be 1")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            # A finished line: release it and decode the next one on its own, so the cache stays short.
            printable = text[self.print_len:]
            self.token_cache, self.print_len = [], 0
        elif text and _is_cjk(text[-1]):
            printable = text[self.print_len:]
            self.print_len += len(printable)
        else:
            printable = text[self.print_len:text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self):
        """Release whatever is left; the next `put` is a new prompt again."""
        printable = ""
        if self.token_cache:
            printable = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)[self.print_len:]
            self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text, stream_end=False):
        print(text, flush=True, end=None if stream_end else "")


class TextIteratorStreamer(TextStreamer):
    """Queues the text pieces for another thread to iterate over; iteration ends with the answer.

    `timeout` (seconds) bounds each wait for the next piece (`queue.Empty` is raised
    after it), so a consumer does not hang forever when generation fails in its thread.
    """

    def __init__(self, tokenizer, skip_prompt=False, timeout=None, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text, stream_end=False):
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self):
        return self

    def __next__(self):
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration()
        return value
