"""InternVL2 in PaddlePaddle: `from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer, load_image`."""
from .config import ConfigError, InternVLChatConfig
from .generation import GenerationError
from .grounding import draw_boxes, parse_boxes
from .modeling import InternVLChatModel, PromptError
from .processing import ImageLoadError, VideoLoadError, load_image, load_video
from .streaming import TextIteratorStreamer, TextStreamer
from .tokenizer import load_tokenizer

__all__ = ["ConfigError", "GenerationError", "ImageLoadError", "InternVLChatConfig", "InternVLChatModel",
           "PromptError", "TextIteratorStreamer", "TextStreamer", "VideoLoadError", "draw_boxes", "load_image",
           "load_tokenizer", "load_video", "parse_boxes"]
