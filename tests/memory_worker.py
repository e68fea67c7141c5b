"""One fp32 training step on CPU, for test_memory.py: prints the peak resident memory it added.

    python tests/memory_worker.py CHECKPOINT TOKENS TILES

Full fine-tuning as the scripts do it (language model and mlp1 trained, the ViT frozen, layers
recomputed), one sample of TOKENS tokens with TILES image tiles, one AdamW step. Prints JSON:
{"baseline": bytes resident before loading, "peak": the process's peak resident bytes}.
"""
import json
import sys

import paddlemix  # noqa: F401  (thread count before paddle)
import numpy as np
import paddle

from paddlemix.models.internvl2 import InternVLChatModel
from paddlemix.models.internvl2 import train_model as tm


def status_bytes(field):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(checkpoint, tokens, tiles):
    tokens, tiles = int(tokens), int(tiles)
    baseline = status_bytes("VmRSS")
    model = InternVLChatModel.from_pretrained(checkpoint, dtype="float32", cpu_bf16_weights=False)
    tm.set_trainable(model, freeze_backbone=True)
    tm.keep_frozen_in_eval(model)
    tm.set_gradient_checkpointing(model, True)
    model.train()
    rng = np.random.default_rng(0)
    vocab, image_tokens = model.config.llm.vocab_size, tiles * model.num_image_token
    ids = rng.integers(0, vocab - 1, (1, tokens))
    ids[0, 1:1 + image_tokens] = model.img_context_token_id = vocab - 1
    size = model.config.force_image_size
    pixels = paddle.to_tensor(rng.standard_normal((tiles, 3, size, size)).astype(np.float32))
    out = model(pixels, paddle.to_tensor(ids), labels=paddle.to_tensor(ids))
    out["loss"].backward()
    trainable = [param for param in model.parameters() if not param.stop_gradient]
    paddle.optimizer.AdamW(learning_rate=1e-5, parameters=trainable).step()
    print(json.dumps({"baseline": baseline, "peak": status_bytes("VmHWM")}))


if __name__ == "__main__":
    main(*sys.argv[1:])
