"""The original `config.json` of an InternVL checkpoint, parsed into plain dataclasses.

The raw dict is kept so that `save_pretrained` writes back exactly what was read,
and any field we do not model survives a round trip.
"""
import copy
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from .conversation import TEMPLATE_NAMES


class ConfigError(ValueError):
    """A config.json that this port cannot build a model from."""


# LLM architecture -> decoder family. The families differ only in weight layout
# and RoPE (see llm.py); this table is the single place that names them.
LLM_FAMILIES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "InternLM2ForCausalLM": "internlm2",
    "Phi3ForCausalLM": "phi3",
}
# `rope_scaling` types llm.py implements ("su" is the first Phi-3 releases' name for longrope).
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "su", "longrope")


def rope_type(rope_scaling):
    """The scaling type of a `rope_scaling` dict (old configs say `type`, newer ones `rope_type`)."""
    scaling = rope_scaling or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


@dataclass
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    drop_path_rate: float = 0.0
    initializer_factor: float = 1.0

    @classmethod
    def from_dict(cls, raw):
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        config = cls(**known)
        if config.norm_type not in ("layer_norm", "rms_norm"):
            raise ConfigError(f"vision_config.norm_type {config.norm_type!r} is not supported "
                              "(expected 'layer_norm' or 'rms_norm')")
        if config.hidden_act != "gelu":
            raise ConfigError(f"vision_config.hidden_act {config.hidden_act!r} is not supported (expected 'gelu')")
        return config


@dataclass
class LLMConfig:
    architecture: str
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    max_position_embeddings: int = 32768
    original_max_position_embeddings: Optional[int] = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # How many keys (the query's own included) each query may attend to; None = all.
    attention_window: Optional[int] = None
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[object] = None
    pad_token_id: Optional[int] = None
    explicit_head_dim: Optional[int] = None

    @property
    def head_dim(self):
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw):
        architectures = raw.get("architectures") or [None]
        arch = architectures[0]
        if arch not in LLM_FAMILIES:
            raise ConfigError(f"llm_config architecture {arch!r} is not supported; "
                              f"known: {', '.join(sorted(LLM_FAMILIES))}")
        family = LLM_FAMILIES[arch]
        if raw.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"llm_config.hidden_act {raw.get('hidden_act')!r} is not supported (expected 'silu')")
        # Which projections carry a bias is the one structural difference the
        # families express through different config keys.
        if family == "qwen2":
            qkv_bias, o_bias, mlp_bias = True, False, False
        elif family == "internlm2":
            qkv_bias = o_bias = bool(raw.get("bias", False))
            mlp_bias = False
        elif family == "llama":
            qkv_bias = o_bias = bool(raw.get("attention_bias", False))
            mlp_bias = bool(raw.get("mlp_bias", False))
        else:
            qkv_bias = o_bias = mlp_bias = False
        if family == "qwen2" and raw.get("use_sliding_window", False):
            raise ConfigError("llm_config.use_sliding_window is not supported (no InternVL checkpoint uses it)")
        attention_window = None
        if family == "phi3" and raw.get("sliding_window"):
            # The official Phi-3 code windows attention with flash-attn's window_size=(w, w):
            # a query sees itself and the w keys before it.
            attention_window = raw["sliding_window"] + 1
        _check_rope_scaling(raw)
        heads = raw["num_attention_heads"]
        return cls(
            architecture=arch,
            family=family,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rope_scaling=copy.deepcopy(raw.get("rope_scaling")),
            max_position_embeddings=raw.get("max_position_embeddings", 32768),
            original_max_position_embeddings=raw.get("original_max_position_embeddings"),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            attention_window=attention_window,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            explicit_head_dim=raw.get("head_dim"),
        )


def _check_rope_scaling(raw):
    kind = rope_type(raw.get("rope_scaling"))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"llm_config.rope_scaling type {kind!r} is not supported; known: {', '.join(ROPE_TYPES)}")
    if kind in ("su", "longrope"):
        original = raw.get("original_max_position_embeddings") or raw["rope_scaling"].get(
            "original_max_position_embeddings")
        if not original:
            raise ConfigError(f"llm_config.rope_scaling type {kind!r} needs original_max_position_embeddings")


@dataclass
class InternVLChatConfig:
    vision: VisionConfig
    llm: LLMConfig
    force_image_size: int = 448
    downsample_ratio: float = 0.5
    ps_version: str = "v1"
    select_layer: int = -1
    template: str = "Hermes-2"
    dynamic_image_size: bool = False
    use_thumbnail: bool = False
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def image_size(self):
        return self.force_image_size or self.vision.image_size

    @property
    def num_image_token(self):
        """Tokens one 448px tile becomes after pixel shuffle (256 for InternVL2)."""
        patches = self.image_size // self.vision.patch_size
        return int(patches * patches * self.downsample_ratio ** 2)

    @classmethod
    def from_dict(cls, raw):
        if "vision_config" not in raw or "llm_config" not in raw:
            raise ConfigError("config.json has no vision_config/llm_config: not an InternVLChatModel checkpoint")
        architectures = raw.get("architectures") or []
        if architectures and architectures[0] != "InternVLChatModel":
            raise ConfigError(f"architecture {architectures[0]!r} is not supported (expected 'InternVLChatModel')")
        ps_version = raw.get("ps_version", "v1")
        if ps_version not in ("v1", "v2"):
            raise ConfigError(f"ps_version {ps_version!r} is not supported (expected 'v1' or 'v2')")
        template = raw.get("template", "Hermes-2")
        if template not in TEMPLATE_NAMES:
            raise ConfigError(f"template {template!r} is not supported; known: {', '.join(TEMPLATE_NAMES)}")
        vision = VisionConfig.from_dict(raw["vision_config"])
        return cls(
            vision=vision,
            llm=LLMConfig.from_dict(raw["llm_config"]),
            force_image_size=raw.get("force_image_size") or vision.image_size,
            downsample_ratio=raw.get("downsample_ratio", 0.5),
            ps_version=ps_version,
            select_layer=raw.get("select_layer", -1),
            template=template,
            dynamic_image_size=raw.get("dynamic_image_size", False),
            use_thumbnail=raw.get("use_thumbnail", False),
            min_dynamic_patch=raw.get("min_dynamic_patch", 1),
            max_dynamic_patch=raw.get("max_dynamic_patch", 6),
            raw=copy.deepcopy(raw),
        )

    @classmethod
    def from_pretrained(cls, model_dir):
        path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"no config.json in '{model_dir}'")
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as err:
            raise ConfigError(f"'{path}' is not valid JSON: {err}") from err
        return cls.from_dict(raw)

    def to_dict(self):
        """The original config.json, with the fields a user may have changed written back."""
        raw = copy.deepcopy(self.raw)
        for key in ("force_image_size", "downsample_ratio", "ps_version", "select_layer", "template",
                    "dynamic_image_size", "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch"):
            raw[key] = getattr(self, key)
        return raw

    def save(self, model_dir):
        path = os.path.join(model_dir, "config.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
        os.replace(tmp, path)
