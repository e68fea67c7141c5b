"""Peak RAM of CPU inference at a real model shape, on random bf16 weights.

    python tools/measure_memory.py TOKENIZER_DIR [--config CONFIG.json] [--workdir DIR] [--float32-weights]

TOKENIZER_DIR holds the real config.json and tokenizer of the model (e.g. ../shared/assets/
tokenizers/internvl2-2b). A random checkpoint of the real shape is built once in the workdir (bf16,
as released), then a fresh process loads it with `from_pretrained`, chats about one 448px tile for
8 new tokens and reports its peak resident memory (VmHWM), after loading and after the chat.
`--config` takes the model's shape from another config.json (e.g. tests/data/configs/internvl2-8b.json).
When its vocabulary does not match the tokenizer's (InternVL2-4B's Phi-3 tokenizer is not here), the
process generates from the same prompt as token ids instead of chatting: the same work and memory.
"""
import argparse
import json
import os
import subprocess
import sys

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS_DIR)

from benchmark import real_sizes  # noqa: E402
from make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402

CHILD = """
import json, sys
import numpy as np
import paddlemix  # noqa: F401
import paddle
from paddlemix.models.internvl2 import InternVLChatModel, load_tokenizer
from paddlemix.models.internvl2.memory import peak_host_rss_bytes
path, keep_bf16, with_tokenizer = sys.argv[1], sys.argv[2] == "bf16", sys.argv[3] == "chat"
model = InternVLChatModel.from_pretrained(path, cpu_bf16_weights=None if keep_bf16 else False)
loaded = peak_host_rss_bytes()
pixels = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 3, 448, 448), dtype=np.float32))
if with_tokenizer:
    model.chat(load_tokenizer(path), pixels, "<image>\\nDescribe the image.", dict(max_new_tokens=8, do_sample=False))
else:  # a chat prompt's length: one tile of image tokens (id 5) between text tokens
    model.img_context_token_id = 5
    ids = np.array([[1] * 20 + [5] * model.num_image_token + [1] * 20])
    model.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=8, do_sample=False)
chatted = peak_host_rss_bytes()
weights = sum(int(np.prod(p.shape)) * p.element_size() for p in model.parameters())
print(json.dumps({"peak_rss_after_load": loaded, "peak_rss_after_chat": chatted, "weight_bytes": weights}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--workdir", default=os.path.join("/tmp", "paddlemix-memory"))
    parser.add_argument("--float32-weights", action="store_true", help="load with cpu_bf16_weights=False")
    parser.add_argument("--config", help="the model's config.json, if not TOKENIZER_DIR's")
    args = parser.parse_args()
    config_path = args.config or os.path.join(args.tokenizer_dir, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(args.tokenizer_dir, "config.json"), encoding="utf-8") as f:
        tokenizer_vocab = json.load(f)["llm_config"]["vocab_size"]
    name = os.path.splitext(os.path.basename(args.config))[0] if args.config else \
        os.path.basename(os.path.normpath(args.tokenizer_dir))
    checkpoint = os.path.join(args.workdir, name)
    prompt = "chat" if config["llm_config"]["vocab_size"] == tokenizer_vocab else "ids"
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        make_tiny_checkpoint(config_path, args.tokenizer_dir, checkpoint, dtype="bfloat16", shard_bytes=2 << 30,
                             vocab_to_cover=config["llm_config"]["vocab_size"] if prompt == "ids" else None,
                             **real_sizes(config))
    mode = "float32" if args.float32_weights else "bf16"
    done = subprocess.run([sys.executable, "-c", CHILD, checkpoint, mode, prompt], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: the measuring process failed: {done.stderr.strip().splitlines()[-1]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    files = sum(os.path.getsize(os.path.join(checkpoint, n)) for n in os.listdir(checkpoint)
                if n.endswith(".safetensors"))
    print(f"{name} ({mode} language model weights, {prompt}): checkpoint {files / 1e9:.2f} GB, weights held "
          f"{figures['weight_bytes'] / 1e9:.2f} GB, peak RSS {figures['peak_rss_after_load'] / 1e9:.2f} GB after "
          f"loading, {figures['peak_rss_after_chat'] / 1e9:.2f} GB after a one-tile chat")


if __name__ == "__main__":
    main()
