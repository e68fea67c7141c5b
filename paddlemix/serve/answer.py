"""An answer's text as chat() returns it, and the pieces of it that are safe to stream.

A streamed answer must add up to exactly the non-streamed one, so a piece is released only when
no later token can change it: trailing whitespace (chat() strips it), a half-decoded character
and a possible start of a stop sequence are held back until the next token settles them.
"""

_INCOMPLETE = "\ufffd"  # what a byte-level BPE decode shows for an unfinished UTF-8 character


def final_text(decoded, sep, stops=()):
    """(chat()'s answer cut before the first stop sequence, whether a stop sequence was found)."""
    text = decoded.split(sep)[0] if sep else decoded
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    if found:
        return text[:min(found)].strip(), True
    return text.strip(), False


def settled_text(decoded, sep, stops=()):
    """The prefix of the final answer that later tokens cannot change (see the module docstring)."""
    text, stopped = final_text(decoded, sep, stops)
    if stopped:
        return text
    while True:
        held = _without_stop_prefix(text.rstrip(_INCOMPLETE), stops).rstrip()
        if held == text:
            return text
        text = held


def _without_stop_prefix(text, stops):
    """`text` less its longest ending that begins some stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return text[:len(text) - longest]
