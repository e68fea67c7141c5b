"""Chat prompt templates of the InternVL checkpoints, kept in one place.

Every string below is the one in OpenGVLab/InternVL
`internvl_chat/internvl/conversation.py`: the prompt a checkpoint was trained
with must be rebuilt byte for byte, or the model answers worse. A checkpoint's
`config.json` names its template (`"template": "Hermes-2"`).

Only the MPT separator style is kept: it is the one all InternVL2 templates use.
Stop token ids are deliberately absent: they differ between tokenizers, so the
chat code reads them from the tokenizer (see `Conversation.stop_token`).
"""
import dataclasses
import enum
from typing import List, Optional, Tuple


class SeparatorStyle(enum.Enum):
    """How turns are laid out in the prompt."""

    # system + sep, then role + message + sep per turn; an open turn is the bare role.
    MPT = "mpt"


@dataclasses.dataclass
class Conversation:
    """A template plus the turns appended so far; `get_prompt` renders it."""

    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: Tuple[str, str] = ("USER", "ASSISTANT")
    messages: List[List[Optional[str]]] = dataclasses.field(default_factory=list)
    sep_style: SeparatorStyle = SeparatorStyle.MPT
    sep: str = "\n"
    # Text that also ends a reply when it shows up in the decoded output.
    stop_str: Optional[str] = None

    def append_message(self, role: str, message: Optional[str]):
        """Add a turn; `None` (or "") leaves the turn open for the model to complete."""
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        """The prompt text exactly as the official template renders it."""
        return _RENDERERS[self.sep_style](self)

    def copy(self) -> "Conversation":
        """An independent copy: appending to it leaves the registered template untouched."""
        return dataclasses.replace(self, messages=[list(turn) for turn in self.messages])

    @property
    def stop_token(self) -> str:
        """The token whose id ends generation: official chat() uses `sep.strip()`."""
        return self.sep.strip()


def _render_mpt(conv: Conversation) -> str:
    prompt = conv.system_template.format(system_message=conv.system_message) + conv.sep
    for role, message in conv.messages:
        # A falsy message (None or "") is an open turn, as in the official code.
        prompt += role + message + conv.sep if message else role
    return prompt


_RENDERERS = {SeparatorStyle.MPT: _render_mpt}

# The system message InternVL2 ships for Hermes-2, internlm2-chat and phi3-chat
# (the official file notes it was kept to avoid changing benchmark results).
_INTERNVL2_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
_INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
_CHATML_SYSTEM = "<|im_start|>system\n{system_message}"
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

_TEMPLATES = {
    conv.name: conv
    for conv in (
        # Both Hermes-2 and internlm2-chat render ChatML; they differ only in training
        # preprocessing (internlm2-chat adds <s>), so they are equal at inference.
        # Hermes-2 is also the template of InternVL-Chat-V1-2.
        Conversation(
            name="Hermes-2",
            system_template=_CHATML_SYSTEM,
            system_message=_INTERNVL2_SYSTEM_MESSAGE,
            roles=_CHATML_ROLES,
            sep="<|im_end|>",
            stop_str="<|endoftext|>",
        ),
        Conversation(
            name="internlm2-chat",
            system_template=_CHATML_SYSTEM,
            system_message=_INTERNVL2_SYSTEM_MESSAGE,
            roles=_CHATML_ROLES,
            sep="<|im_end|>",
        ),
        Conversation(
            name="phi3-chat",
            system_template="<|system|>\n{system_message}",
            system_message=_INTERNVL2_SYSTEM_MESSAGE,
            roles=("<|user|>\n", "<|assistant|>\n"),
            sep="<|end|>",
        ),
        Conversation(
            name="internvl2_5",
            system_template=_CHATML_SYSTEM,
            system_message=_INTERNVL2_5_SYSTEM_MESSAGE,
            roles=_CHATML_ROLES,
            sep="<|im_end|>\n",
        ),
    )
}

TEMPLATE_NAMES = tuple(_TEMPLATES)


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template `name` (the `template` field of config.json)."""
    try:
        return _TEMPLATES[name].copy()
    except KeyError:
        raise ValueError(
            f"unknown conversation template {name!r}; known templates: {', '.join(TEMPLATE_NAMES)}"
        ) from None
