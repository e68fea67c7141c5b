"""Reference token ids from Hugging Face transformers, run inside the reference venv.

Usage: `python hf_tokenizer_ref.py < request.json`, where the request is
{"kind": "auto" | "sentencepiece", "path": dir, "texts": [...], "tokens": [...], "options": {...}}.
Prints {"ids": [ids per text], "token_ids": [id per token]} as JSON.

"auto" is HF's AutoTokenizer (BPE checkpoints such as Qwen2). "sentencepiece" is
HF's slow sentencepiece tokenizer, the behaviour the official InternLM2 and Llama
tokenizers build on; `options` go to its from_pretrained.
"""
import json
import sys


def load(kind, path, options):
    if kind == "auto":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **options)
    if kind == "sentencepiece":
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

        return SentencePieceBackend.from_pretrained(path, **options)
    raise ValueError(f"unknown kind {kind!r}")


def main():
    request = json.load(sys.stdin)
    tokenizer = load(request["kind"], request["path"], request.get("options", {}))
    result = {
        "ids": [tokenizer(text)["input_ids"] for text in request.get("texts", [])],
        "token_ids": [tokenizer.convert_tokens_to_ids(token) for token in request.get("tokens", [])],
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
