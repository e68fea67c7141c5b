"""Tokenizers on the real upstream tokenizer files, checked against Hugging Face.

The reference ids come from `hf_tokenizer_ref.py` run with the reference venv's
python (env PADDLEMIX_REF_PYTHON, default <repo>/.venv-ref/bin/python). Those
tests skip when it is missing, unless PADDLEMIX_REQUIRE_REF=1 makes them fail.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from paddlemix.models.internvl2.conversation import get_conv_template
from paddlemix.models.internvl2.tokenizer import (
    InternLM2Tokenizer,
    SentencePieceTokenizer,
    TokenizerFilesError,
    load_tokenizer,
)
from reference import require_reference_python

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO.parent / "shared" / "assets" / "tokenizers"
QWEN2_DIR = TOKENIZERS / "internvl2-1b"
INTERNLM2_DIR = TOKENIZERS / "internvl2-2b"
LLAMA2_MODEL = TOKENIZERS / "llama2-spm" / "tokenizer.model"
REF_SCRIPT = Path(__file__).resolve().parent / "hf_tokenizer_ref.py"
IMAGE_TOKENS_PER_TILE = 256  # (448 / 14)**2 * 0.5**2, as in every InternVL2 checkpoint

# Mixed Chinese / English / code with runs of spaces, tabs and newlines, and
# none of the " ." style sequences that HF's decode cleanup rewrites.
CORPUS = (
    "你好，世界！InternVL2 是一个多模态大模型。\n\n"
    "def add(a,  b):\n\treturn a + b   # two  spaces\n"
    "\t\tindented\ttabs\n"
    "   leading spaces and trailing   \n"
    "混合 English 和中文, numbers 12345 and symbols: {}[]<>/\\|~`@#$%^&*()_+=-\n"
    "emoji 🙂 and accents: café naïve\r\nend"
)


def require_dir(path):
    if not path.exists():
        pytest.skip(f"real tokenizer files not found at {path} (../shared/assets is absent)")
    return path


def hf_reference(kind, path, texts=(), tokens=(), **options):
    """Token ids from HF transformers in the reference venv (see hf_tokenizer_ref.py)."""
    request = {"kind": kind, "path": str(path), "texts": list(texts), "tokens": list(tokens), "options": options}
    run = subprocess.run(
        [require_reference_python(), str(REF_SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"reference tokenizer failed:\n{run.stderr[-3000:]}"
    return json.loads(run.stdout)


def internvl_prompt(template, turns, tiles):
    """The prompt official chat() builds: template turns, then each <image> expanded in order."""
    conv = get_conv_template(template)
    for question, answer in turns:
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], answer)
    prompt = conv.get_prompt()
    for count in tiles:
        image = "<img>" + "<IMG_CONTEXT>" * IMAGE_TOKENS_PER_TILE * count + "</img>"
        prompt = prompt.replace("<image>", image, 1)
    return prompt


def write_config(directory, architecture):
    config = {"template": "Hermes-2", "llm_config": {"architectures": [architecture]}}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")


# ---- Qwen2 (InternVL2-1B) ---------------------------------------------------------

QWEN2_CHATS = {
    "one image": ("Hermes-2", [("<image>\nPlease describe the image shortly.", None)], [3]),
    "two images": (
        "Hermes-2",
        [("Image-1: <image>\nImage-2: <image>\nWhat are the similarities and differences?", None)],
        [2, 1],
    ),
    "second turn": (
        "Hermes-2",
        [("<image>\nWhat animal is this?", "It is a red panda."), ("Where does it live?  Answer in\tone line.", None)],
        [1],
    ),
}


@pytest.fixture(scope="module")
def qwen2():
    return load_tokenizer(require_dir(QWEN2_DIR))


def test_qwen2_special_tokens_come_from_the_tokenizer(qwen2):
    assert qwen2.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>"]) == [151646, 151647, 151648]
    assert qwen2.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [151644, 151645]
    stop_token = get_conv_template("Hermes-2").stop_token
    assert qwen2.convert_tokens_to_ids(stop_token) == qwen2.eos_token_id == 151645
    assert qwen2.pad_token_id == 151643


def test_qwen2_prompt_ids_match_hf(qwen2):
    prompts = {name: internvl_prompt(*chat) for name, chat in QWEN2_CHATS.items()}
    special = ["<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    reference = hf_reference("auto", QWEN2_DIR, texts=prompts.values(), tokens=special)
    assert qwen2.convert_tokens_to_ids(special) == reference["token_ids"]
    for (name, prompt), expected in zip(prompts.items(), reference["ids"]):
        ids = qwen2(prompt)["input_ids"]
        assert ids == expected, name
        assert ids[0] == 151644  # Qwen2 adds no BOS
        tiles = sum(QWEN2_CHATS[name][2])
        assert ids.count(151648) == IMAGE_TOKENS_PER_TILE * tiles


def test_qwen2_left_padded_batch(qwen2):
    prompts = [internvl_prompt(*QWEN2_CHATS["one image"]), "<|im_start|>user\nHi<|im_end|>"]
    qwen2.padding_side = "left"
    batch = qwen2(prompts, return_tensors="np", padding=True)
    short = qwen2(prompts[1])["input_ids"]
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"].dtype == np.int64
    assert batch["input_ids"][1].tolist() == [qwen2.pad_token_id] * (width - len(short)) + short
    assert batch["attention_mask"][1].tolist() == [0] * (width - len(short)) + [1] * len(short)
    assert batch["attention_mask"][0].all()


def test_qwen2_decode_skips_special_tokens(qwen2):
    ids = qwen2("<|im_start|>assistant\nA red panda.<|im_end|>")["input_ids"]
    assert qwen2.batch_decode([ids], skip_special_tokens=True) == ["assistant\nA red panda."]


# ---- InternLM2 (InternVL2-2B) -----------------------------------------------------

INTERNLM2_CHAT = (
    "internlm2-chat",
    [
        ("<image>\nWhat is shown here?", "A red panda sitting on a wooden platform."),
        ("你能用中文再说一遍吗？  请简短。", None),
    ],
    [2],
)


@pytest.fixture(scope="module")
def internlm2():
    return load_tokenizer(require_dir(INTERNLM2_DIR))


def test_internlm2_is_loaded_from_the_config_architecture(internlm2):
    assert type(internlm2) is InternLM2Tokenizer


def test_internlm2_special_tokens_come_from_the_tokenizer(internlm2):
    assert internlm2.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>"]) == [92544, 92545, 92546]
    assert internlm2.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"]) == [92542, 92543]
    assert internlm2.convert_tokens_to_ids(get_conv_template("internlm2-chat").stop_token) == 92542
    assert (internlm2.bos_token_id, internlm2.eos_token_id, internlm2.pad_token_id) == (1, 2, 2)
    assert internlm2.convert_ids_to_tokens(92543) == "<|im_start|>"


def test_internlm2_prompt_ids_match_hf(internlm2):
    prompt = internvl_prompt(*INTERNLM2_CHAT)
    all_added = "<|plugin|><|interpreter|><|action_end|><|action_start|><quad></quad><ref></ref><box></box>"
    texts = [prompt, CORPUS, all_added]
    tokens = ["<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]
    reference = hf_reference("sentencepiece", INTERNLM2_DIR, texts=texts, tokens=tokens, special_tokens_pattern="bos")
    assert internlm2.convert_tokens_to_ids(tokens) == reference["token_ids"]
    for text, expected in zip(texts, reference["ids"]):
        assert internlm2(text)["input_ids"] == expected
    ids = internlm2(prompt)["input_ids"]
    assert ids[:3] == [1, 92543, 9081]  # <s> <|im_start|> "system": no prefix space after a special token
    assert ids.count(92546) == IMAGE_TOKENS_PER_TILE * 2
    assert ids[-4:] == [92543, 525, 11353, 364]  # <|im_start|> "ass" "istant" "\n"


def test_internlm2_round_trips_text(internlm2):
    ids = internlm2.encode(CORPUS)
    assert ids[0] == internlm2.bos_token_id
    assert internlm2.decode(ids, skip_special_tokens=True) == CORPUS
    assert internlm2.decode(internlm2.encode(" leading space"), skip_special_tokens=True) == " leading space"


def test_internlm2_decode_matches_the_official_spacing(internlm2):
    # The official decode puts a space before text that precedes a special token,
    # spaces out tokens beyond the sentencepiece vocabulary, and always runs HF's cleanup.
    ids = internlm2("<|im_start|>user\n<img><IMG_CONTEXT></img>\nHi<|im_end|>")["input_ids"]
    assert internlm2.decode(ids) == " <s><|im_start|>user\n <img> <IMG_CONTEXT> </img>  \nHi<|im_end|>"
    assert internlm2.decode(ids, skip_special_tokens=True) == "user\n\nHi"
    assert internlm2.decode(internlm2.encode("Yes , it is .")[1:]) == "Yes, it is."


def test_internlm2_batch_padding_and_tensors(internlm2):
    texts = [internvl_prompt(*INTERNLM2_CHAT), "short"]
    internlm2.padding_side = "left"
    batch = internlm2(texts, return_tensors="np", padding=True)
    short = internlm2.encode("short")
    pad = batch["input_ids"].shape[1] - len(short)
    assert batch["input_ids"][1].tolist() == [2] * pad + short
    assert batch["attention_mask"][1].tolist() == [0] * pad + [1] * len(short)
    internlm2.padding_side = "right"
    right = internlm2(texts, return_tensors="np", padding=True)
    assert right["input_ids"][1].tolist() == short + [2] * pad
    assert internlm2.batch_decode(batch["input_ids"], skip_special_tokens=True)[1] == "short"
    paddle_batch = internlm2(texts, return_tensors="pd", padding=True)
    assert paddle_batch["input_ids"].shape == list(batch["input_ids"].shape)
    with pytest.raises(ValueError, match="padding=True"):
        internlm2(texts, return_tensors="np")


# ---- sentencepiece Llama path (Phi-3, Yi) -------------------------------------------

# Phi-3's chat tokens sit on top of the Llama-2 model; some strip the whitespace after them.
PHI3_STYLE_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<unk>",
    "pad_token": "<|endoftext|>",
    "added_tokens_decoder": {
        "0": {"content": "<unk>", "special": True},
        "1": {"content": "<s>", "special": True},
        "2": {"content": "</s>", "special": False, "rstrip": True},
        "32000": {"content": "<|endoftext|>", "special": True},
        "32001": {"content": "<|assistant|>", "special": True, "rstrip": True},
        "32006": {"content": "<|system|>", "special": True, "rstrip": True},
        "32007": {"content": "<|end|>", "special": True, "rstrip": True},
        "32010": {"content": "<|user|>", "special": True, "rstrip": True},
    },
}
LLAMA_TEXTS = [
    "Hello world",
    " leading space, then  two  spaces\nand a newline",
    "\nstarts with a newline",
    "你好，世界 café 🙂\t tab",
    "end of text</s>next<s> again",
]


@pytest.fixture
def phi3_style_dir(tmp_path):
    model = require_dir(LLAMA2_MODEL)
    (tmp_path / "tokenizer.model").symlink_to(model)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(PHI3_STYLE_CONFIG), encoding="utf-8")
    write_config(tmp_path, "Phi3ForCausalLM")
    return tmp_path


def test_llama_sentencepiece_ids_match_hf(tmp_path):
    (tmp_path / "tokenizer.model").symlink_to(require_dir(LLAMA2_MODEL))
    write_config(tmp_path, "LlamaForCausalLM")
    tokenizer = load_tokenizer(tmp_path)
    assert type(tokenizer) is SentencePieceTokenizer
    reference = hf_reference(
        "sentencepiece", tmp_path, texts=LLAMA_TEXTS, legacy=True, special_tokens_pattern="bos",
        bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    )
    assert [tokenizer(text)["input_ids"] for text in LLAMA_TEXTS] == reference["ids"]
    # sentencepiece's "▁" "▁foo" after the newline, where HF's converted BPE gives "▁▁" "foo"
    assert tokenizer.encode("Hello world\n  foo") == [1, 15043, 3186, 13, 29871, 7953]


def test_phi3_style_tokens_match_hf(phi3_style_dir):
    tokenizer = load_tokenizer(phi3_style_dir)
    texts = LLAMA_TEXTS + [internvl_prompt("phi3-chat", [("What is this?", "A panda."), ("Sure?", None)], [])]
    reference = hf_reference(
        "sentencepiece", phi3_style_dir, texts=texts, tokens=["<|end|>", "<|user|>"], legacy=True,
        special_tokens_pattern="bos",
    )
    assert [tokenizer(text)["input_ids"] for text in texts] == reference["ids"]
    assert tokenizer.convert_tokens_to_ids(get_conv_template("phi3-chat").stop_token) == 32007
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 32000


def test_phi3_style_decode(phi3_style_dir):
    tokenizer = load_tokenizer(phi3_style_dir)
    ids = tokenizer.encode("Hello world\n  indented")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello world\n  indented"
    # HF 4.37 adds no space after a leading special token; sentencepiece drops the prefix space.
    assert tokenizer.decode(ids) == "<s>Hello world\n  indented"
    # Added tokens that are not special tokens of the config (no additional_special_tokens
    # here) are decoded on their own and joined with spaces, and skip_special_tokens keeps them.
    ids = tokenizer.encode("a<|end|>b</s>c")
    assert tokenizer.decode(ids) == "<s>a <|end|> b </s> c"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a <|end|> b </s> c"


def test_older_json_files_match_hf(tmp_path):
    # Without added_tokens_decoder, added tokens come from added_tokens.json and
    # special_tokens_map.json overrides tokenizer_config.json.
    (tmp_path / "tokenizer.model").symlink_to(require_dir(LLAMA2_MODEL))
    files = {
        "tokenizer_config.json": {"eos_token": "</s>", "add_bos_token": True},
        "special_tokens_map.json": {
            "bos_token": "<s>",
            "eos_token": {"content": "<|endoftext|>", "lstrip": False, "rstrip": False},
            "unk_token": "<unk>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": ["<|end|>"],
        },
        "added_tokens.json": {"<|endoftext|>": 32000, "<|end|>": 32007, "<|user|>": 32010},
    }
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")
    write_config(tmp_path, "Phi3ForCausalLM")
    tokenizer = load_tokenizer(tmp_path)
    texts = ["<|user|>\nHi<|end|>\n", "a<|endoftext|> b"]
    reference = hf_reference("sentencepiece", tmp_path, texts=texts, legacy=True, special_tokens_pattern="bos")
    assert [tokenizer(text)["input_ids"] for text in texts] == reference["ids"]
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 32000
    ids = tokenizer.encode("<|user|>\nHi<|end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<|user|> \nHi"


def test_llama_non_legacy_adds_one_prefix_space_for_the_whole_text():
    model = str(require_dir(LLAMA2_MODEL))
    legacy = SentencePieceTokenizer(model, legacy=True)
    non_legacy = SentencePieceTokenizer(model, legacy=False)
    assert legacy.tokenize("Hello\n<s>\nx") == ["▁Hello", "<0x0A>", "<s>", "▁", "<0x0A>", "x"]
    assert non_legacy.tokenize("Hello\n<s>\nx") == ["▁Hello", "<0x0A>", "<s>", "<0x0A>", "x"]
    assert non_legacy.tokenize("<s> x") == ["<s>", "▁x"]


# ---- errors and routing -------------------------------------------------------------


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerFilesError, match="config.json"):
        load_tokenizer(tmp_path)


def test_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(NotADirectoryError, match="local checkpoint directory"):
        load_tokenizer(tmp_path / "OpenGVLab" / "InternVL2-1B")


@pytest.mark.parametrize(
    "architecture, expected",
    [
        ("Qwen2ForCausalLM", "tokenizer.json or vocab.json \\+ merges.txt"),
        ("InternLM2ForCausalLM", "tokenizer.model"),
        ("Phi3ForCausalLM", "tokenizer.model"),
        ("LlamaForCausalLM", "tokenizer.json or vocab.json \\+ merges.txt"),
    ],
)
def test_missing_tokenizer_files_are_a_clear_error(tmp_path, architecture, expected):
    write_config(tmp_path, architecture)
    with pytest.raises(TokenizerFilesError, match=expected):
        load_tokenizer(tmp_path)


def test_unknown_architecture_is_a_clear_error(tmp_path):
    write_config(tmp_path, "MistralForCausalLM")
    with pytest.raises(ValueError, match="'MistralForCausalLM'.*Qwen2ForCausalLM"):
        load_tokenizer(tmp_path)


def test_config_without_llm_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="llm_config.architectures"):
        load_tokenizer(tmp_path)


def test_the_directory_name_does_not_choose_the_tokenizer(tmp_path):
    source = require_dir(INTERNLM2_DIR)
    misleading = tmp_path / "InternVL2-1B-qwen2"
    misleading.mkdir()
    for name in os.listdir(source):
        (misleading / name).symlink_to(source / name)
    assert type(load_tokenizer(misleading)) is InternLM2Tokenizer


def test_llama3_tokenizer_json_loads_through_paddleformers(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|begin_of_text|>": 0, "<|eot_id|>": 1, "hello": 2, "world": 3, "[UNK]": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|eot_id|>", "pad_token": "<|eot_id|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    write_config(tmp_path, "LlamaForCausalLM")
    tokenizer = load_tokenizer(tmp_path)
    assert not isinstance(tokenizer, SentencePieceTokenizer)
    assert tokenizer("hello world")["input_ids"] == [2, 3]
    assert tokenizer.eos_token_id == 1
