"""The model side of an evaluation: load the checkpoint once, answer one question at a time.

Decoding is deterministic with the task's max_new_tokens, one question at a time, as in the
official scripts: greedy by default (their ``--num-beams 1``), beam search with ``--num-beams``.
"""
import logging

from .tasks import Item
from .visuals import PixelSettings

logger = logging.getLogger(__name__)


class Predictor:
    def __init__(self, checkpoint: str, dynamic: bool, max_num: int, num_segments: int, max_new_tokens: int,
                 num_beams: int = 1, dtype=None, device=None, download_source=None):
        import paddle

        from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer
        from paddlemix.models.internvl2.modeling import resolve_dtype

        if device:
            paddle.set_device(device)
        self.model = InternVLChatModel.from_pretrained(checkpoint, dtype=resolve_dtype(dtype),
                                                       download_source=download_source)
        self.tokenizer = load_tokenizer(self.model.model_dir)
        config = self.model.config
        self.settings = PixelSettings(dynamic, max_num, config.image_size, config.use_thumbnail, num_segments)
        self.generation_config = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": num_beams}
        logger.info("evaluating %s: %s, template %s", checkpoint, self.settings, config.template)

    def __call__(self, item: Item) -> str:
        import paddle

        pixels, num_patches_list = item.visual.pixels(self.settings)
        return self.model.chat(self.tokenizer, paddle.to_tensor(pixels), item.prompt, self.generation_config,
                               num_patches_list=num_patches_list)
