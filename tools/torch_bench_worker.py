"""The transformers (PyTorch) side of ``tools/benchmark.py``; run only with the reference interpreter.

    python tools/torch_bench_worker.py convert ORIGINAL_DIR OUT_DIR SHARD_BYTES
    python tools/torch_bench_worker.py measure SPEC.json OUT.json

``convert`` maps an original-layout InternVL checkpoint onto ``InternVLForConditionalGeneration``
(with the mappings of ``torch_reference.py``) and saves it in bf16 with ``save_pretrained``, once,
so that ``measure`` can time transformers' own ``from_pretrained`` on the same weights.
``measure`` runs the shared measuring code of ``benchmark.py`` through transformers' public API
(fp32, SDPA attention, ``generate`` with its default dynamic KV cache).
"""

import argparse
import json
import logging
import os

import torch
import transformers

from benchmark import checkpoint_files, run_worker, setup_logging
from torch_reference import _load, _match_qk_norm_eps, internvl_config, load_original_weights, map_full

logger = logging.getLogger("torch_bench_worker")


def convert(original, out, shard_bytes):
    with open(os.path.join(original, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(original, "added_tokens.json"), encoding="utf-8") as f:
        image_token_id = json.load(f)["<IMG_CONTEXT>"]
    weights = load_original_weights(original)
    model = _load(transformers.InternVLForConditionalGeneration(internvl_config(config, image_token_id)),
                  map_full(weights, config))
    del weights
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size=shard_bytes)
    with open(os.path.join(out, "done"), "w", encoding="utf-8") as f:
        f.write("converted from " + original + "\n")  # written last: a complete conversion
    logger.info("saved %s", out)


class TorchSide:
    """transformers' InternVLForConditionalGeneration: from_pretrained, get_image_features, generate."""

    name = "torch"

    def __init__(self, spec):
        torch.set_num_threads(spec["threads"])
        # Resolve the lazily imported class now, so that importing it is not timed as loading.
        self.model_class = transformers.InternVLForConditionalGeneration
        self.spec = spec
        self.files = checkpoint_files(spec["checkpoint"])
        self.model = None
        self._hook = None

    def load(self):
        model = self.model_class.from_pretrained(self.spec["checkpoint"], dtype=torch.float32,
                                                 attn_implementation="sdpa")
        _match_qk_norm_eps(model.model.vision_tower, model.config.vision_config.to_dict())
        # No eos, as on the Paddle side: every run emits exactly max_new_tokens tokens.
        model.generation_config.eos_token_id = None
        self.model = model.eval()

    def weight_bytes(self):
        """(fp32 bytes of every weight, bytes as held, bytes of the LLM weights one decoded token reads)."""
        def size(module, fp32=False):
            return sum(p.numel() * (4 if fp32 else p.element_size()) for p in module.parameters())

        llm = self.model.model.language_model
        return (size(self.model, fp32=True), size(self.model),
                size(llm.layers) + size(llm.norm) + size(self.model.lm_head))

    def vit(self, pixels):
        with torch.inference_mode():
            self.model.get_image_features(pixel_values=torch.from_numpy(pixels))

    def on_logits(self, callback):
        if self._hook is not None:
            self._hook.remove()
        self._hook = self.model.register_forward_hook(lambda *_: callback())

    def generate(self, input_ids, attention_mask, pixels, max_new_tokens):
        inputs = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
        if pixels is not None:
            inputs["pixel_values"] = torch.from_numpy(pixels)
        config = transformers.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                               eos_token_id=None, pad_token_id=0)
        out = self.model.generate(**inputs, generation_config=config)
        return out.shape[1] - input_ids.shape[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert")
    conv.add_argument("original")
    conv.add_argument("out")
    conv.add_argument("shard_bytes", type=int)
    measure = commands.add_parser("measure")
    measure.add_argument("spec")
    measure.add_argument("out")
    args = parser.parse_args(argv)
    setup_logging("torch")
    if args.command == "convert":
        convert(args.original, args.out, args.shard_bytes)
        return
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    run_worker(TorchSide(spec), spec, args.out)


if __name__ == "__main__":
    main()
