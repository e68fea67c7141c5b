"""InternVL2 in PaddlePaddle: `from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer, load_image`."""
from .config import ConfigError, InternVLChatConfig
from .modeling import InternVLChatModel, PromptError
from .processing import load_image
from .tokenizer import load_tokenizer

__all__ = ["ConfigError", "InternVLChatConfig", "InternVLChatModel", "PromptError", "load_image", "load_tokenizer"]
