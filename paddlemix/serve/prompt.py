"""OpenAI messages -> the official InternVL chat prompt, built exactly as `model.chat()` builds it.

Earlier user/assistant turns become chat()'s history, and each image is attached to the turn it
came with, placed the way the model card does it: one image is "<image>\\n" before the text,
several are "Image-1: <image>\\nImage-2: <image>\\n...", video frames "Frame1: <image>\\n...".
Consecutive messages of one role are merged into one turn.
"""
from dataclasses import dataclass, field
from typing import List

from ..models.internvl2.conversation import get_conv_template
from ..models.internvl2.modeling import PromptError
from .errors import invalid
from .media import VIDEO_FRAME_MAX_NUM, image_tiles


@dataclass
class Prompt:
    """The filled prompt text and the tiles of each image, in prompt order."""

    query: str
    images: List[list] = field(default_factory=list)

    @property
    def num_patches_list(self):
        return [len(tiles) for tiles in self.images]


@dataclass
class _Turn:
    role: str
    texts: List[str] = field(default_factory=list)
    visuals: List[tuple] = field(default_factory=list)  # ("image", url, param) or ("video", [urls], param)


def count_images(messages):
    """Images plus video frames in the request, counted before any of them is decoded."""
    total = 0
    for message in messages:
        if not isinstance(message.content, str):
            total += sum(1 if part.type == "image_url" else len(part.video) for part in message.content
                         if part.type != "text")
    return total


def build_prompt(model, messages, limits):
    """The Prompt for a validated message list; a 400 for conversations chat() cannot express."""
    count = count_images(messages)
    if count > limits.max_images:
        raise invalid(f"the request has {count} images (video frames included); at most {limits.max_images} "
                      "are allowed", param="messages", code="too_many_images")
    system, turns = _turns(messages)
    template = get_conv_template(model.template)
    template.system_message = model.system_message if system is None else system
    images = []
    for turn in turns:
        text = "\n".join(turn.texts)
        if not text and not turn.visuals:
            # The template would render an empty message as an open turn: a different prompt.
            raise invalid(f"a {turn.role} message is empty", param="messages")
        if turn.role == "user":
            prefix, turn_images = _visual_prefix(turn.visuals, limits)
            text, images = prefix + text, images + turn_images
        template.append_message(template.roles[0 if turn.role == "user" else 1], text)
    template.append_message(template.roles[1], None)
    try:
        query = model._fill_images(template.get_prompt(), [len(tiles) for tiles in images])
    except PromptError as error:  # "<image>" typed in the text breaks the count
        raise invalid(f"{error}; do not write <image> in the text, send images as image_url parts",
                      param="messages") from None
    return Prompt(query, images)


def _turns(messages):
    """(system message or None, merged user/assistant turns), checking the order chat() needs."""
    system, turns = None, []
    for index, message in enumerate(messages):
        param = f"messages.{index}.content"
        role = "system" if message.role == "developer" else message.role
        if role == "system":
            if turns:
                raise invalid("a system message must come first", param=f"messages.{index}.role")
            system = "\n".join(filter(None, [system, _text_only(message.content, param)]))
            continue
        if not turns or turns[-1].role != role:
            if not turns and role == "assistant":
                raise invalid("the conversation must start with a user message", param=f"messages.{index}.role")
            turns.append(_Turn(role))
        _add_content(turns[-1], message.content, param)
    if not turns or turns[-1].role != "user":
        raise invalid("the last message must be a user message", param="messages")
    return system, turns


def _text_only(content, param):
    if isinstance(content, str):
        return content
    if any(part.type != "text" for part in content):
        raise invalid("only user messages may contain images", param=param)
    return "\n".join(part.text for part in content)


def _add_content(turn, content, param):
    if turn.role == "assistant":
        turn.texts.append(_text_only(content, param))
        return
    if isinstance(content, str):
        turn.texts.append(content)
        return
    for position, part in enumerate(content):
        if part.type == "text":
            turn.texts.append(part.text)
        elif part.type == "image_url":
            turn.visuals.append(("image", part.image_url.url, f"{param}.{position}.image_url.url"))
        else:
            turn.visuals.append(("video", part.video, f"{param}.{position}.video"))


def _visual_prefix(visuals, limits):
    """The "<image>" lines that go before a user turn's text, and that turn's image tiles."""
    if len(visuals) == 1 and visuals[0][0] == "image":
        return "<image>\n", [image_tiles(visuals[0][1], limits, visuals[0][2])]
    lines, images, image_number = [], [], 0
    for kind, source, param in visuals:
        if kind == "image":
            image_number += 1
            lines.append(f"Image-{image_number}: <image>\n")
            images.append(image_tiles(source, limits, param))
        else:
            for frame, url in enumerate(source):
                lines.append(f"Frame{frame + 1}: <image>\n")
                images.append(image_tiles(url, limits, f"{param}.{frame}", max_num=VIDEO_FRAME_MAX_NUM))
    return "".join(lines), images
