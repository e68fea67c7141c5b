"""The official InternVL checkpoints this port supports, in one table.

Loading never reads this table: `from_pretrained` and `load_tokenizer` dispatch on the
checkpoint's own config.json, so a fine-tuned copy in a directory of any name loads as
well. The table records what each checkpoint is built from and how far it is verified;
README.md's "Supported models" section is generated from it:

    python -m paddlemix.models.internvl2.registry
"""
import sys
from dataclasses import dataclass

# "verified": every part (ViT, LLM family with the checkpoint's RoPE scaling, projector) is
# parity-tested against transformers on random weights at the real layer structure, and a
# tiny checkpoint built from the checkpoint's config.json chats through from_pretrained.
VERIFIED = "verified"


@dataclass(frozen=True)
class SupportedModel:
    model_id: str
    vision: str
    llm: str
    architecture: str  # llm_config.architectures[0]
    template: str
    status: str
    # The config.json the tests build this model from: a real one in ../shared/assets, or
    # one under tests/data/configs reconstructed from the published file.
    test_config: str
    # How the tokenizer is checked: against HF on the real files, or only a test tokenizer.
    tokenizer: str


_REAL_IDS = "real tokenizer files: prompt ids equal HF's"
_INTERNLM2_IDS = "InternLM2 tokenizer checked on InternVL2-2B's files (this checkpoint's own are not here)"
_QWEN2_IDS = "Qwen2 tokenizer checked on InternVL2-1B's files (Qwen2.5's own are not here)"
_TEST_TOKENIZER = "no tokenizer files here: chat checked on a test tokenizer"

MODELS = (
    SupportedModel("OpenGVLab/InternVL2-1B", "InternViT-300M-448px", "Qwen2-0.5B-Instruct", "Qwen2ForCausalLM",
                   "Hermes-2", VERIFIED, "assets/tokenizers/internvl2-1b/config.json", _REAL_IDS),
    SupportedModel("OpenGVLab/InternVL2-2B", "InternViT-300M-448px", "internlm2-chat-1_8b", "InternLM2ForCausalLM",
                   "internlm2-chat", VERIFIED, "assets/tokenizers/internvl2-2b/config.json", _REAL_IDS),
    SupportedModel("OpenGVLab/InternVL2-4B", "InternViT-300M-448px", "Phi-3-mini-128k-instruct", "Phi3ForCausalLM",
                   "phi3-chat", VERIFIED, "tests/data/configs/internvl2-4b.json", _TEST_TOKENIZER),
    SupportedModel("OpenGVLab/InternVL2-8B", "InternViT-300M-448px", "internlm2_5-7b-chat", "InternLM2ForCausalLM",
                   "internlm2-chat", VERIFIED, "tests/data/configs/internvl2-8b.json", _INTERNLM2_IDS),
    SupportedModel("OpenGVLab/InternVL2-8B-MPO", "InternViT-300M-448px", "internlm2_5-7b-chat",
                   "InternLM2ForCausalLM", "internlm2-chat", VERIFIED, "tests/data/configs/internvl2-8b.json",
                   _INTERNLM2_IDS),
    SupportedModel("OpenGVLab/InternVL2-26B", "InternViT-6B-448px-V1-5", "internlm2-chat-20b", "InternLM2ForCausalLM",
                   "internlm2-chat", VERIFIED, "tests/data/configs/internvl2-26b.json", _INTERNLM2_IDS),
    SupportedModel("OpenGVLab/InternVL2-40B", "InternViT-6B-448px-V1-5", "Nous-Hermes-2-Yi-34B", "LlamaForCausalLM",
                   "Hermes-2", VERIFIED, "tests/data/configs/internvl2-40b.json", _TEST_TOKENIZER),
    SupportedModel("OpenGVLab/InternVL2-Llama3-76B", "InternViT-6B-448px-V1-5", "Hermes-2-Theta-Llama-3-70B",
                   "LlamaForCausalLM", "internlm2-chat", VERIFIED, "tests/data/configs/internvl2-llama3-76b.json",
                   _TEST_TOKENIZER),
    SupportedModel("OpenGVLab/InternVL2_5-1B", "InternViT-300M-448px-V2_5", "Qwen2.5-0.5B-Instruct",
                   "Qwen2ForCausalLM", "internvl2_5", VERIFIED, "tests/data/configs/internvl2_5-1b.json",
                   _QWEN2_IDS),
    SupportedModel("OpenGVLab/InternVL2_5-2B", "InternViT-300M-448px-V2_5", "internlm2_5-1_8b-chat",
                   "InternLM2ForCausalLM", "internvl2_5", VERIFIED, "tests/data/configs/internvl2_5-2b.json",
                   _INTERNLM2_IDS),
    SupportedModel("OpenGVLab/InternVL2_5-4B", "InternViT-300M-448px-V2_5", "Qwen2.5-3B-Instruct",
                   "Qwen2ForCausalLM", "internvl2_5", VERIFIED, "tests/data/configs/internvl2_5-4b.json",
                   _QWEN2_IDS),
    SupportedModel("OpenGVLab/InternVL2_5-8B", "InternViT-300M-448px-V2_5", "internlm2_5-7b-chat",
                   "InternLM2ForCausalLM", "internvl2_5", VERIFIED, "tests/data/configs/internvl2_5-8b.json",
                   _INTERNLM2_IDS),
    SupportedModel("OpenGVLab/InternVL-Chat-V1-2", "InternViT-6B-448px-V1-2", "Nous-Hermes-2-Yi-34B",
                   "LlamaForCausalLM", "Hermes-2", VERIFIED, "tests/data/configs/internvl-chat-v1-2.json",
                   _TEST_TOKENIZER),
    SupportedModel("OpenGVLab/InternVL-Chat-V1-2-Plus", "InternViT-6B-448px-V1-2", "Nous-Hermes-2-Yi-34B",
                   "LlamaForCausalLM", "Hermes-2", VERIFIED, "tests/data/configs/internvl-chat-v1-2.json",
                   _TEST_TOKENIZER),
)


def markdown_table():
    """The README's "Supported models" table."""
    rows = ["| model | vision | LLM | template | status |", "|---|---|---|---|---|"]
    for model in MODELS:
        status = f"**{model.status}**; {model.tokenizer}"
        rows.append(f"| {model.model_id.split('/')[-1]} | {model.vision} | {model.llm} | {model.template} | {status} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
