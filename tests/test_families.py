"""Every LLM family and ViT of the supported checkpoints against transformers, and every
supported checkpoint's config.json through from_pretrained -> chat.

Random fp32 weights at the real layer structure (tiny widths). All reference outputs come
from one subprocess (the `reference` fixture): importing torch and transformers costs
seconds, so the jobs are gathered there and each test compares its part. Run with
`-o log_cli=true --log-cli-level=INFO` to see every max |delta logits|.
"""
import json
import logging
import os
import shutil

import numpy as np
import paddle
import pytest

from paddlemix.models.internvl2 import InternVLChatConfig, InternVLChatModel, load_tokenizer
from paddlemix.models.internvl2.checkpoint import open_checkpoint, save_checkpoint
from paddlemix.models.internvl2.config import LLM_FAMILIES, ConfigError
from paddlemix.models.internvl2.conversation import TEMPLATE_NAMES, get_conv_template
from paddlemix.models.internvl2.device_map import split_model_layers
from paddlemix.models.internvl2.llm import KVCache
from paddlemix.models.internvl2.registry import MODELS, markdown_table
from paddlemix.models.internvl2.tokenizer import InternLM2Tokenizer
from reference import ASSETS_DIR, REPO_ROOT, load_tool, require_asset, run_reference_batch
from test_conversation import ONE_IMAGE_PROMPTS
from test_tokenizer import hf_reference

logger = logging.getLogger(__name__)
tiny_tool = load_tool("make_tiny_checkpoint")
make_tiny, tokenizer_size = tiny_tool.make_tiny_checkpoint, tiny_tool.tokenizer_size
CONFIGS = REPO_ROOT / "tests" / "data" / "configs"
TOL = 1e-4
# InternLM2 parity runs with a small context so that going past it stays cheap.
INTERNLM2_MAX = 64
PHI3_ORIGINAL = 32
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")


def _config_path(test_config):
    """A registry `test_config` ("assets/..." or "tests/...") as a path; skips if the asset is absent."""
    if test_config.startswith("assets/"):
        return require_asset(*test_config.split("/")[1:])
    return REPO_ROOT / test_config


def _load_config(name):
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _max_diff(ours, theirs, where=None):
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
    return float(diff[where].max() if where is not None else diff.max())


def _check_logits(label, ours, theirs, where=None):
    delta = _max_diff(ours, theirs, where)
    logger.info("max |delta logits| %-32s %.2e", label, delta)
    assert delta <= TOL, f"{label}: max |delta logits| {delta:.2e}"


# ---------------------------------------------------------------- test tokenizers

def _sentencepiece_dir(path, config):
    """The Llama-2 sentencepiece model with `config` as tokenizer_config.json (Phi-3 / Yi style)."""
    path.mkdir()
    shutil.copyfile(require_asset("tokenizers", "llama2-spm", "tokenizer.model"), path / "tokenizer.model")
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def _added(first_id, *tokens, **flags):
    return {str(first_id + i): dict(content=token, special=True, **flags) for i, token in enumerate(tokens)}


def _phi3_tokenizer(path):
    # Phi-3's chat tokens with their real ids; InternVL's image tokens after them.
    added = {"0": {"content": "<unk>", "special": True}, "1": {"content": "<s>", "special": True},
             "2": {"content": "</s>", "special": False, "rstrip": True},
             "32000": {"content": "<|endoftext|>", "special": True}}
    for index, token in ((32001, "<|assistant|>"), (32006, "<|system|>"), (32007, "<|end|>"), (32010, "<|user|>")):
        added[str(index)] = {"content": token, "special": True, "rstrip": True}
    added.update(_added(32011, *INTERNVL_TOKENS))
    return _sentencepiece_dir(path, {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                                     "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>",
                                     "added_tokens_decoder": added})


def _yi_tokenizer(path):
    # Nous-Hermes-2-Yi has ChatML tokens in its vocabulary; here they are added tokens.
    added = {"0": {"content": "<unk>", "special": True}, "1": {"content": "<s>", "special": True},
             "2": {"content": "</s>", "special": True}}
    added.update(_added(32000, "<|im_start|>", "<|im_end|>", *INTERNVL_TOKENS))
    return _sentencepiece_dir(path, {"add_bos_token": True, "bos_token": "<s>", "eos_token": "<|im_end|>",
                                     "unk_token": "<unk>", "pad_token": "<unk>", "legacy": True,
                                     "added_tokens_decoder": added})


def _llama3_tokenizer(path):
    """A word-level tokenizer.json with Llama-3's BOS and the ChatML and image tokens."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    path.mkdir()
    words = ["[UNK]", "system", "user", "assistant", "What", "is", "in", "the", "image", "?"]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(token, normalized=False) for token in
                                ("<|begin_of_text|>", "<|im_start|>", "<|im_end|>", *INTERNVL_TOKENS)])
    backend.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """Tokenizer folder per LLM family: the real files where they exist, else a test tokenizer."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "Qwen2ForCausalLM": require_asset("tokenizers", "internvl2-1b"),
        "InternLM2ForCausalLM": require_asset("tokenizers", "internvl2-2b"),
        "Phi3ForCausalLM": _phi3_tokenizer(root / "phi3"),
        "yi": _yi_tokenizer(root / "yi"),
        "llama3": _llama3_tokenizer(root / "llama3"),
    }


def _tokenizer_for(config, tokenizer_dirs):
    arch = config["llm_config"]["architectures"][0]
    if arch == "LlamaForCausalLM":
        return tokenizer_dirs["llama3" if config["llm_config"]["vocab_size"] > 100000 else "yi"]
    return tokenizer_dirs[arch]


def _build(tmp_path_factory, name, config, tokenizer_dir, seed=0):
    """A tiny HF-layout checkpoint from a config dict, in bf16 like the released ones.

    So on CPU the language model keeps bf16 weights and runs this project's kernels (quant.Bf16Linear);
    the reference reads the same bf16 values widened to float32.
    """
    config_dir = tmp_path_factory.mktemp(f"{name}-config")
    (config_dir / "config.json").write_text(json.dumps(config))
    out = tmp_path_factory.mktemp(name)
    make_tiny(str(config_dir / "config.json"), str(tokenizer_dir), str(out), seed=seed, dtype="bfloat16")
    return out


def _with_config(tmp_path_factory, name, ckpt, edit):
    """The same weights as `ckpt` under an edited config.json."""
    out = tmp_path_factory.mktemp(name)
    for item in os.listdir(ckpt):
        if item != "config.json":
            (out / item).symlink_to(ckpt / item)
    config = json.loads((ckpt / "config.json").read_text())
    edit(config["llm_config"])
    (out / "config.json").write_text(json.dumps(config))
    return out


# ---------------------------------------------------------------- parity checkpoints and inputs

def _dynamic_base(llm, length):
    """The official InternLM2 dynamic-NTK base once a call of `length` tokens has been seen."""
    factor, dim = llm["rope_scaling"]["factor"], llm["hidden_size"] // llm["num_attention_heads"]
    ratio = factor * length / llm["max_position_embeddings"] - (factor - 1)
    return llm["rope_theta"] * ratio ** (dim / (dim - 2))


def _ids(seed, shape, vocab):
    return np.random.RandomState(seed).randint(3, vocab, size=shape).astype(np.int64)


INPUTS = {
    "internlm2_long": _ids(1, (2, 128), 90000),  # twice max_position_embeddings (64)
    "internlm2_prompt": _ids(2, (2, 50), 90000),  # decoding crosses 64
    "internlm2_short": _ids(3, (2, 30), 90000),
    "phi3_short": _ids(4, (2, 20), 32000),  # below original_max_position_embeddings (32)
    "phi3_long": _ids(5, (2, 48), 32000),
    "phi3_prompt": _ids(6, (1, 24), 32000),  # decoding crosses 32
    "phi3_padded": _ids(7, (2, 36), 32000),
    "yi": _ids(8, (2, 24), 64000),
    "llama3": _ids(9, (2, 24), 128000),
    "llama3_rope": _ids(10, (2, 40), 128000),
    "qwen2_tied": _ids(11, (2, 24), 151000),
}
# Both rows left-padded: 36 tokens in all, but the largest position is 30 (short factors).
PHI3_PAD = (5, 8)


def _padding(length, pads):
    mask = np.ones((len(pads), length), np.int64)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    return mask, positions


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer_dirs):
    """Tiny checkpoints of each family, from the real (assets) or reconstructed configs."""

    def edited(config, edit):
        edit(config)
        return config

    def internlm2_small(config):
        config["llm_config"]["max_position_embeddings"] = INTERNLM2_MAX

    def phi3_small(config):
        # original 32, max 1024: the real 4096 / 131072 ratio of 32, and cheap to exceed.
        config["llm_config"].update(original_max_position_embeddings=PHI3_ORIGINAL,
                                    max_position_embeddings=PHI3_ORIGINAL * 32)

    def llama3_rope(config):
        config["llm_config"]["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

    def tied(config):
        config["llm_config"]["tie_word_embeddings"] = True

    real_2b = json.loads(require_asset("tokenizers", "internvl2-2b", "config.json").read_text())
    built = {
        "internlm2": _build(tmp_path_factory, "internlm2", edited(real_2b, internlm2_small),
                            tokenizer_dirs["InternLM2ForCausalLM"]),
        "phi3": _build(tmp_path_factory, "phi3", edited(_load_config("internvl2-4b"), phi3_small),
                       tokenizer_dirs["Phi3ForCausalLM"]),
        "yi": _build(tmp_path_factory, "yi", _load_config("internvl2-40b"), tokenizer_dirs["yi"]),
        "llama3": _build(tmp_path_factory, "llama3", _load_config("internvl2-llama3-76b"), tokenizer_dirs["llama3"]),
        "llama3_rope": _build(tmp_path_factory, "llama3_rope", edited(_load_config("internvl2-llama3-76b"),
                                                                      llama3_rope), tokenizer_dirs["llama3"]),
        "26b": _build(tmp_path_factory, "26b", _load_config("internvl2-26b"), tokenizer_dirs["InternLM2ForCausalLM"]),
        "qwen2_tied": _build(tmp_path_factory, "qwen2_tied", edited(_load_config("internvl2_5-4b"), tied),
                             tokenizer_dirs["Qwen2ForCausalLM"]),
    }
    internlm2_llm = json.loads((built["internlm2"] / "config.json").read_text())["llm_config"]
    longest = INPUTS["internlm2_long"].shape[1]
    built["internlm2_rebased"] = _with_config(
        tmp_path_factory, "internlm2_rebased", built["internlm2"],
        lambda llm: llm.update(rope_scaling=None, rope_theta=_dynamic_base(internlm2_llm, longest)))
    built["internlm2_linear"] = _with_config(tmp_path_factory, "internlm2_linear", built["internlm2"],
                                             lambda llm: llm.update(rope_scaling={"type": "linear", "factor": 2.0}))
    built["phi3_window"] = _with_config(tmp_path_factory, "phi3_window", built["phi3"],
                                        lambda llm: llm.update(sliding_window=8))
    return built


def _image_prompt(ckpt, seed):
    """Token ids with one tile's <IMG_CONTEXT> run between random text, and the context token id."""
    tokenizer = load_tokenizer(ckpt)
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    start, end = tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
    rng = np.random.RandomState(seed)
    tile = np.full(InternVLChatConfig.from_pretrained(ckpt).num_image_token, context)
    ids = np.concatenate([rng.randint(3, 90000, 6), [start], tile, [end], rng.randint(3, 90000, 5)])
    return ids[None].astype(np.int64), context


@pytest.fixture(scope="module")
def reference(ckpts):
    """Every transformers output the parity tests need, from one subprocess."""
    phi3_mask, phi3_positions = _padding(INPUTS["phi3_padded"].shape[1], PHI3_PAD)
    ids_26b, context_26b = _image_prompt(ckpts["26b"], 12)
    jobs = {
        "internlm2_long": ("llm", ckpts["internlm2"], {"input_ids": INPUTS["internlm2_long"]}),
        "internlm2_generate": ("llm", ckpts["internlm2"], {"input_ids": INPUTS["internlm2_prompt"],
                                                           "max_new_tokens": 24}),
        "internlm2_rebased": ("llm", ckpts["internlm2_rebased"], {"input_ids": INPUTS["internlm2_short"]}),
        "internlm2_linear": ("llm", ckpts["internlm2_linear"], {"input_ids": INPUTS["internlm2_long"]}),
        "phi3_short": ("llm", ckpts["phi3"], {"input_ids": INPUTS["phi3_short"]}),
        "phi3_long": ("llm", ckpts["phi3"], {"input_ids": INPUTS["phi3_long"]}),
        "phi3_padded": ("llm", ckpts["phi3"], {"input_ids": INPUTS["phi3_padded"], "attention_mask": phi3_mask,
                                               "position_ids": phi3_positions}),
        "phi3_generate": ("llm", ckpts["phi3"], {"input_ids": INPUTS["phi3_prompt"], "max_new_tokens": 16}),
        "phi3_window": ("llm", ckpts["phi3_window"], {"input_ids": INPUTS["phi3_short"]}),
        "yi": ("llm", ckpts["yi"], {"input_ids": INPUTS["yi"], "max_new_tokens": 8}),
        "llama3": ("llm", ckpts["llama3"], {"input_ids": INPUTS["llama3"], "max_new_tokens": 8}),
        "llama3_rope": ("llm", ckpts["llama3_rope"], {"input_ids": INPUTS["llama3_rope"], "max_new_tokens": 8}),
        "qwen2_tied": ("llm", ckpts["qwen2_tied"], {"input_ids": INPUTS["qwen2_tied"]}),
        "26b": ("full", ckpts["26b"], {"input_ids": ids_26b, "pixel_values": _pixels(1, 13),
                                       "image_token_id": context_26b, "max_new_tokens": 8}),
    }
    outputs = run_reference_batch(list(jobs.values()))
    results = dict(zip(jobs, outputs))
    results["26b_inputs"] = (ids_26b, context_26b)
    return results


def _pixels(tiles, seed):
    return np.random.RandomState(seed).standard_normal((tiles, 3, 448, 448)).astype(np.float32)


def _logits(model, ids, attention_mask=None, position_ids=None):
    lm = model.language_model
    with paddle.no_grad():
        embeds = lm.embed_tokens(paddle.to_tensor(ids))
        mask = None if attention_mask is None else paddle.to_tensor(attention_mask)
        positions = None if position_ids is None else paddle.to_tensor(position_ids)
        return lm(embeds, mask, positions).numpy()


def _greedy(model, ids, steps, **inputs):
    # eos_token_id=None: like the reference, run all steps whatever the tokens.
    return model.generate(input_ids=ids, max_new_tokens=steps, do_sample=False, eos_token_id=None, **inputs).numpy()


# ---------------------------------------------------------------- InternLM2

def test_internlm2_dynamic_ntk_matches_the_official_growth(ckpts, reference):
    """Greedy decoding across max_position_embeddings re-bases at every step, as the official
    code (and transformers' Llama) does; a call past the limit matches transformers; a later,
    shorter call keeps the grown base, as only the official InternLM2 code does."""
    model = InternVLChatModel.from_pretrained(ckpts["internlm2"])
    short_before = _logits(model, INPUTS["internlm2_short"])
    np.testing.assert_array_equal(_greedy(model, INPUTS["internlm2_prompt"], 24),
                                  reference["internlm2_generate"]["greedy_tokens"])
    model = InternVLChatModel.from_pretrained(ckpts["internlm2"])
    _check_logits("internlm2 dynamic, 128 > 64 tokens", _logits(model, INPUTS["internlm2_long"]),
                  reference["internlm2_long"]["logits"])
    short_after = _logits(model, INPUTS["internlm2_short"])
    _check_logits("internlm2 later 30-token call", short_after, reference["internlm2_rebased"]["logits"])
    # Otherwise the comparison above could not tell the grown base from the original one.
    change = _max_diff(short_after, short_before)
    assert change > 10 * TOL, f"the grown base changed the shorter call by only {change:.2e}"


def test_internlm2_kv_cache_decoding_equals_a_full_forward(ckpts):
    model = InternVLChatModel.from_pretrained(ckpts["internlm2"])
    lm = model.language_model
    ids = paddle.to_tensor(INPUTS["internlm2_long"][:, :INTERNLM2_MAX])
    with paddle.no_grad():
        embeds = lm.embed_tokens(ids)
        full = lm(embeds).numpy()
        cache = KVCache(lm.config, 2, INTERNLM2_MAX, "float32")
        steps = [lm(embeds[:, :40], paddle.ones([2, 40], "int64"), cache=cache).numpy()]
        for t in range(40, INTERNLM2_MAX):
            steps.append(lm(embeds[:, t:t + 1], paddle.ones([2, t + 1], "int64"), cache=cache).numpy())
    assert _max_diff(np.concatenate(steps, axis=1), full) <= 1e-5


def test_internlm2_linear_rope_matches_transformers(ckpts, reference):
    model = InternVLChatModel.from_pretrained(ckpts["internlm2_linear"])
    _check_logits("internlm2 linear x2", _logits(model, INPUTS["internlm2_long"]),
                  reference["internlm2_linear"]["logits"])


# ---------------------------------------------------------------- Phi-3

def test_phi3_longrope_short_and_long_factors_match_transformers(ckpts, reference):
    model = InternVLChatModel.from_pretrained(ckpts["phi3"])
    _check_logits("phi3 su, short (20 <= 32)", _logits(model, INPUTS["phi3_short"]), reference["phi3_short"]["logits"])
    _check_logits("phi3 su, long (48 > 32)", _logits(model, INPUTS["phi3_long"]), reference["phi3_long"]["logits"])
    mask, positions = _padding(INPUTS["phi3_padded"].shape[1], PHI3_PAD)
    _check_logits("phi3 su, left-padded (max pos 30)", _logits(model, INPUTS["phi3_padded"], mask, positions),
                  reference["phi3_padded"]["logits"], where=mask == 1)


def test_phi3_decoding_switches_to_long_factors_per_call(ckpts, reference):
    model = InternVLChatModel.from_pretrained(ckpts["phi3"])
    tokens = _greedy(model, INPUTS["phi3_prompt"], 16)
    np.testing.assert_array_equal(tokens, reference["phi3_generate"]["greedy_tokens"])


def test_phi3_sliding_window_covers_the_query_and_the_window_before_it(ckpts, reference):
    model = InternVLChatModel.from_pretrained(ckpts["phi3_window"])
    assert model.config.llm.attention_window == 9
    _check_logits("phi3 sliding_window 8", _logits(model, INPUTS["phi3_short"]), reference["phi3_window"]["logits"])


# ---------------------------------------------------------------- Llama (Yi, Llama-3), Qwen2.5 tied

@pytest.mark.parametrize("name", ["yi", "llama3", "llama3_rope"])
def test_llama_family_matches_transformers(name, ckpts, reference):
    model = InternVLChatModel.from_pretrained(ckpts[name])
    _check_logits(f"{name} ({model.config.llm.rope_theta:g})", _logits(model, INPUTS[name]), reference[name]["logits"])
    np.testing.assert_array_equal(_greedy(model, INPUTS[name], 8), reference[name]["greedy_tokens"])


def test_tied_word_embeddings_use_the_embedding_table(ckpts, reference):
    with open_checkpoint(str(ckpts["qwen2_tied"])) as checkpoint:
        assert "language_model.lm_head.weight" not in checkpoint.keys()
    model = InternVLChatModel.from_pretrained(ckpts["qwen2_tied"])
    _check_logits("qwen2.5 tied embeddings", _logits(model, INPUTS["qwen2_tied"]), reference["qwen2_tied"]["logits"])


# ---------------------------------------------------------------- InternViT-6B + InternLM2, whole model

def test_internvl2_26b_structure_matches_internvl_for_conditional_generation(ckpts, reference):
    """InternViT-6B (rms_norm, qk-norm, no qkv bias), mlp1 at 4 x 3200 inputs, InternLM2-20B."""
    model = InternVLChatModel.from_pretrained(ckpts["26b"])
    vision = model.config.vision
    assert (vision.norm_type, vision.qk_normalization, vision.qkv_bias) == ("rms_norm", True, False)
    assert model.mlp1[1].weight.shape[0] == 4 * vision.hidden_size
    ids, context = reference["26b_inputs"]
    model.img_context_token_id = context
    pixels = _pixels(1, 13)
    with paddle.no_grad():
        logits = model(paddle.to_tensor(pixels), paddle.to_tensor(ids))["logits"].numpy()
    _check_logits("26b whole model (ViT-6B, InternLM2)", logits, reference["26b"]["logits"])
    np.testing.assert_array_equal(_greedy(model, ids, 8, pixel_values=pixels), reference["26b"]["greedy_tokens"])


# ---------------------------------------------------------------- real configs through chat

def _record_prompts(model, monkeypatch):
    """Make model.generate record the prompt ids and eos id chat() passes (and answer eos at once)."""
    recorded = {}

    def record(pixel_values=None, input_ids=None, attention_mask=None, **settings):
        recorded.update(ids=np.asarray(input_ids).tolist()[0], eos=settings["eos_token_id"])
        return paddle.to_tensor([[settings["eos_token_id"]]])

    monkeypatch.setattr(model, "generate", record)
    return recorded


def _registry_configs():
    """One registry entry per distinct test config."""
    seen = {}
    for model in MODELS:
        seen.setdefault(model.test_config, model)
    return list(seen.values())


@pytest.mark.parametrize("entry", _registry_configs(), ids=lambda entry: entry.model_id.split("/")[-1])
def test_every_supported_config_chats_with_its_template(entry, tmp_path_factory, tokenizer_dirs, monkeypatch):
    config = json.loads(_config_path(entry.test_config).read_text())
    assert (config["template"], config["llm_config"]["architectures"][0]) == (entry.template, entry.architecture)
    tokenizer_dir = _tokenizer_for(config, tokenizer_dirs)
    if not str(tokenizer_dir).startswith(str(ASSETS_DIR)):
        # A test tokenizer cannot decode the real vocabulary's ids; the vocabulary is its own.
        config["llm_config"]["vocab_size"] = tokenizer_size(str(tokenizer_dir))
    ckpt = _build(tmp_path_factory, entry.model_id.split("/")[-1], config, tokenizer_dir)
    model = InternVLChatModel.from_pretrained(ckpt)
    tokenizer = load_tokenizer(ckpt)
    pixels = paddle.to_tensor(_pixels(1, 0))
    answer = model.chat(tokenizer, pixels, "What is in the image?", dict(max_new_tokens=3, do_sample=False))
    assert isinstance(answer, str)

    recorded = _record_prompts(model, monkeypatch)
    model.chat(tokenizer, pixels, "What is in the image?", dict(max_new_tokens=3, do_sample=False))
    image = "<img>" + "<IMG_CONTEXT>" * model.num_image_token + "</img>"
    expected = ONE_IMAGE_PROMPTS[entry.template].replace("<image>", image)
    assert recorded["ids"] == tokenizer(expected)["input_ids"]
    assert recorded["eos"] == tokenizer.convert_tokens_to_ids(get_conv_template(entry.template).sep.strip())


def test_internlm2_chat_prompt_ids_match_hf_on_the_real_tokenizer(tokenizer_dirs, tmp_path_factory, monkeypatch):
    """System message, one image, two turns: the ids chat() builds equal HF's on the real 2B files."""
    folder = tokenizer_dirs["InternLM2ForCausalLM"]
    ckpt = _build(tmp_path_factory, "internvl2-2b", json.loads((folder / "config.json").read_text()), folder)
    model = InternVLChatModel.from_pretrained(ckpt)
    tokenizer = load_tokenizer(ckpt)
    model.system_message = "You are a careful assistant."
    recorded = _record_prompts(model, monkeypatch)
    history = [("<image>\nWhat animal is this?", "It is a red panda.")]
    model.chat(tokenizer, paddle.to_tensor(_pixels(1, 0)), "Where does it  live?", dict(max_new_tokens=3),
               history=history)
    image = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    prompt = ("<|im_start|>system\nYou are a careful assistant.<|im_end|>"
              f"<|im_start|>user\n{image}\nWhat animal is this?<|im_end|>"
              "<|im_start|>assistant\nIt is a red panda.<|im_end|>"
              "<|im_start|>user\nWhere does it  live?<|im_end|><|im_start|>assistant\n")
    hf = hf_reference("sentencepiece", folder, texts=[prompt], tokens=["<|im_end|>"], special_tokens_pattern="bos")
    assert recorded["ids"] == hf["ids"][0]
    assert recorded["eos"] == hf["token_ids"][0] == 92542


def test_a_finetuned_checkpoint_loads_from_a_directory_of_any_name(tokenizer_dirs, tmp_path_factory):
    folder = tokenizer_dirs["InternLM2ForCausalLM"]
    source = _build(tmp_path_factory, "source", json.loads((folder / "config.json").read_text()), folder)
    finetune = tmp_path_factory.mktemp("runs") / "my-finetune-v3"
    shutil.copytree(source, finetune)
    model = InternVLChatModel.from_pretrained(str(finetune))
    tokenizer = load_tokenizer(finetune)
    assert model.config.llm.family == "internlm2" and isinstance(tokenizer, InternLM2Tokenizer)
    assert isinstance(model.chat(tokenizer, None, "Hello", dict(max_new_tokens=2, do_sample=False)), str)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["llm_config"].update(architectures=["MistralForCausalLM"]), "'MistralForCausalLM' is not supported"),
    (lambda c: c.update(architectures=["LlavaForConditionalGeneration"]), "'LlavaForConditionalGeneration'"),
    (lambda c: c.update(template="vicuna_v1.1"), "template 'vicuna_v1.1' is not supported; known: Hermes-2"),
    (lambda c: c["llm_config"].update(rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling type 'yarn'"),
    (lambda c: c["llm_config"].update(use_sliding_window=True), "use_sliding_window is not supported"),
])
def test_wrong_architecture_template_or_rope_is_a_clear_error(edit, message, tmp_path):
    config = json.loads(require_asset("tokenizers", "internvl2-1b", "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        InternVLChatModel.from_pretrained(str(tmp_path))


# ---------------------------------------------------------------- registry and README

def test_registry_matches_the_configs_and_the_readme():
    for model in MODELS:
        assert model.template in TEMPLATE_NAMES and model.architecture in LLM_FAMILIES, model.model_id
        if model.test_config.startswith("tests/"):
            config = json.loads((REPO_ROOT / model.test_config).read_text())
            assert config["template"] == model.template, model.model_id
            assert config["llm_config"]["architectures"][0] == model.architecture, model.model_id
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README's Supported models table is stale: regenerate it from registry.py"


# ---------------------------------------------------------------- multi-GPU device map

def _official_layers(ranges, num_layers):
    layers = {f"language_model.model.layers.{i}": gpu for gpu, (start, end) in enumerate(ranges)
              for i in range(start, end)}
    layers[f"language_model.model.layers.{num_layers - 1}"] = 0
    return layers


FIRST_GPU = {name: 0 for name in ("vision_model", "mlp1", "language_model.model.tok_embeddings",
                                  "language_model.model.embed_tokens", "language_model.output",
                                  "language_model.model.norm", "language_model.lm_head")}


@pytest.mark.parametrize("num_layers, num_gpus, ranges", [
    (80, 4, [(0, 12), (12, 35), (35, 58), (58, 80)]),  # 76B: ceil(80 / 3.5) = 23 per GPU, 12 on GPU 0
    (60, 2, [(0, 20), (20, 60)]),  # 40B: ceil(60 / 1.5) = 40 per GPU, 20 on GPU 0
    (48, 3, [(0, 10), (10, 30), (30, 48)]),  # 26B: ceil(48 / 2.5) = 20 per GPU, 10 on GPU 0
    (24, 1, [(0, 24)]),
])
def test_split_model_layers_matches_the_official_device_map(num_layers, num_gpus, ranges):
    expected = dict(_official_layers(ranges, num_layers), **FIRST_GPU)
    assert split_model_layers(num_layers, num_gpus) == expected


def test_a_device_map_runs_the_layers_where_it_places_them(ckpts):
    """On CPU every index is the one CPU, which still runs the multi-device code path."""
    plain = InternVLChatModel.from_pretrained(ckpts["yi"])
    placed = InternVLChatModel.from_pretrained(ckpts["yi"], device_map=split_model_layers(2, 2))
    assert placed.language_model.layer_devices == ["cpu", "cpu"]
    np.testing.assert_array_equal(_logits(placed, INPUTS["yi"]), _logits(plain, INPUTS["yi"]))
    np.testing.assert_array_equal(_greedy(placed, INPUTS["yi"], 6), _greedy(plain, INPUTS["yi"], 6))
    with pytest.raises(ValueError, match="must share a device"):
        InternVLChatModel.from_pretrained(ckpts["yi"], device_map=dict(split_model_layers(2, 2), mlp1="gpu:1"))
    if paddle.device.device_count() == 0:
        with pytest.raises(ValueError, match="needs GPUs"):
            InternVLChatModel.from_pretrained(ckpts["yi"], device_map="auto")


# ---------------------------------------------------------------- PaddleMIX-format checkpoints

def _to_paddlemix_layout(source, target):
    """Rewrite an HF-layout checkpoint as PaddleMIX saves it: paddlenlp names, Linear weights [in, out]."""
    arch = json.loads((source / "config.json").read_text())["llm_config"]["architectures"][0]
    prefix = {"Qwen2ForCausalLM": "language_model.qwen2.", "LlamaForCausalLM": "language_model.llama."}.get(arch)
    tensors = {}
    with open_checkpoint(str(source)) as checkpoint:
        for key in checkpoint.keys():
            array = checkpoint.get(key)
            if array.ndim == 2 and not key.endswith(("embed_tokens.weight", "tok_embeddings.weight")):
                array = np.ascontiguousarray(array.T)
            if prefix and key.startswith("language_model.model."):
                key = prefix + key[len("language_model.model."):]
            tensors[key] = array
    target.mkdir()
    save_checkpoint(str(target), tensors, dtype="bfloat16")  # the source is bf16: nothing is rounded
    shutil.copyfile(source / "config.json", target / "config.json")
    return target


@pytest.mark.parametrize("config_name, tokenizer_arch", [("internvl2_5-1b", "Qwen2ForCausalLM"),
                                                         ("internvl2-8b", "InternLM2ForCausalLM")])
def test_paddlemix_format_checkpoints_load_to_the_same_model(config_name, tokenizer_arch, tmp_path_factory,
                                                             tokenizer_dirs):
    original = _build(tmp_path_factory, config_name, _load_config(config_name), tokenizer_dirs[tokenizer_arch])
    paddlemix = _to_paddlemix_layout(original, tmp_path_factory.mktemp("paddlemix") / config_name)
    ours, theirs = InternVLChatModel.from_pretrained(original), InternVLChatModel.from_pretrained(paddlemix)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert a.dtype == b.dtype and a.shape == b.shape, name  # bf16 [out, in] from both layouts
        np.testing.assert_array_equal(a.astype("float32").numpy(), b.astype("float32").numpy(), err_msg=name)
