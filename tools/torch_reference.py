"""Reference outputs from the transformers (PyTorch) models for an original-layout InternVL2 checkpoint.

Run it only with the reference interpreter (torch + transformers), as a subprocess of the parity
tests; the project code never imports it:

    python tools/torch_reference.py {llm,vision,full,count} --ckpt DIR --inputs IN.npz --out OUT.npz
    python tools/torch_reference.py batch --jobs JOBS.json

``batch`` runs several jobs in one process (torch and transformers load once); JOBS.json is a
list of ``{"mode", "ckpt", "inputs", "out"}`` objects.

The checkpoint keeps the original OpenGVLab InternVL names; they are mapped here onto the
transformers classes (fp32, eval, eager attention). Inputs and outputs are numpy ``.npz`` files:

- ``llm``:    in ``input_ids`` [B,T], optional ``attention_mask``, ``position_ids``; out ``logits``.
              With ``max_new_tokens`` also ``greedy_tokens`` (new ids only), and with ``num_beams``
              also ``beam_tokens``. Generation ignores the config's EOS: only an input
              ``eos_token_id`` (one id or a list) stops it (rows finished early are padded with
              ``pad_token_id``, default the first EOS, and it ends when all rows have finished).
              With ``generate_settings`` (a JSON list of ``GenerationConfig`` keyword dicts, the
              rest left at transformers' defaults) also ``generated_<i>`` for each dict; with
              ``from_embeds`` set those run from ``inputs_embeds`` as InternVL's ``generate`` does
              (so the repetition penalty sees only new tokens).
- ``vision``: in ``pixel_values`` [N,3,H,W]; out ``last_hidden_state`` and ``hidden_states``
              stacked as [L+1, N, S, C] (embeddings first).
- ``count``:  no inputs and no weights needed; out parameter counts ``vision``, ``projector``, ``llm``,
              ``lm_head`` and ``total`` of the model built from ``config.json`` alone.
- ``full``:   in ``input_ids``, ``pixel_values``, ``image_token_id``, optional ``attention_mask``;
              out ``logits`` and, with ``max_new_tokens``, ``greedy_tokens`` (as for ``llm``).

``PADDLEMIX_REF_THREADS`` sets the torch thread count (default 2).
"""

import argparse
import json
import logging
import os

import numpy as np
import torch
import transformers
from safetensors.torch import load_file

logger = logging.getLogger("torch_reference")

# Defaults of the original InternVisionConfig / InternVLChatConfig, for keys a config.json omits.
VISION_DEFAULTS = {
    "qkv_bias": False,
    "qk_normalization": True,
    "norm_type": "rms_norm",
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "num_channels": 3,
    "initializer_factor": 0.1,
}
CHAT_DEFAULTS = {"select_layer": -1, "downsample_ratio": 0.5, "ps_version": "v1"}


def load_original_weights(ckpt_dir):
    """All tensors of ``model.safetensors`` or of the shards named by its index, as float32."""
    single = os.path.join(ckpt_dir, "model.safetensors")
    if os.path.isfile(single):
        files = [single]
    else:
        with open(os.path.join(ckpt_dir, "model.safetensors.index.json"), encoding="utf-8") as f:
            files = [os.path.join(ckpt_dir, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
    weights = {}
    for path in files:
        weights.update(load_file(path))
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


# ---------------------------------------------------------------- configs


def _rope_parameters(llm):
    """transformers ``rope_parameters`` from the original ``rope_theta`` / ``rope_scaling``."""
    scaling = dict(llm.get("rope_scaling") or {})
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    if rope_type == "su":  # the first Phi-3 releases' name for longrope
        rope_type = "longrope"
    return {**scaling, "rope_type": rope_type, "rope_theta": float(llm.get("rope_theta", 10000.0))}


def text_config(llm):
    """(transformers config, causal LM class) for an original ``llm_config`` dict."""
    arch = llm["architectures"][0]
    common = {
        "vocab_size": llm["vocab_size"],
        "hidden_size": llm["hidden_size"],
        "intermediate_size": llm["intermediate_size"],
        "num_hidden_layers": llm["num_hidden_layers"],
        "num_attention_heads": llm["num_attention_heads"],
        "num_key_value_heads": llm.get("num_key_value_heads") or llm["num_attention_heads"],
        "hidden_act": llm.get("hidden_act", "silu"),
        "max_position_embeddings": llm["max_position_embeddings"],
        "rms_norm_eps": llm["rms_norm_eps"],
        "tie_word_embeddings": llm.get("tie_word_embeddings", False),
        "rope_parameters": _rope_parameters(llm),
        "bos_token_id": llm.get("bos_token_id"),
        "eos_token_id": llm.get("eos_token_id"),
        "pad_token_id": llm.get("pad_token_id"),
        "attn_implementation": "eager",
    }
    if arch == "Qwen2ForCausalLM":
        extra = {k: llm[k] for k in ("use_sliding_window", "sliding_window", "max_window_layers") if k in llm}
        return transformers.Qwen2Config(**common, **extra), transformers.Qwen2ForCausalLM
    if arch == "LlamaForCausalLM":
        extra = {k: llm[k] for k in ("attention_bias", "mlp_bias", "head_dim") if k in llm}
        return transformers.LlamaConfig(**common, **extra), transformers.LlamaForCausalLM
    if arch == "InternLM2ForCausalLM":
        # InternLM2 is Llama with fused/renamed weights; its `bias` covers wqkv and wo only.
        extra = {"attention_bias": llm.get("bias", False), "mlp_bias": False}
        return transformers.LlamaConfig(**common, **extra), transformers.LlamaForCausalLM
    if arch == "Phi3ForCausalLM":
        extra = {k: llm[k] for k in ("original_max_position_embeddings",) if k in llm}
        if llm.get("sliding_window"):
            # The official Phi-3 code windows with flash-attn's window_size=(w, w): the query and
            # the w keys before it. transformers' sliding_window counts all the keys a query sees.
            extra["sliding_window"] = llm["sliding_window"] + 1
        if "partial_rotary_factor" in llm:
            common["rope_parameters"]["partial_rotary_factor"] = llm["partial_rotary_factor"]
        return transformers.Phi3Config(**common, **extra), transformers.Phi3ForCausalLM
    raise ValueError(f"unsupported llm architecture {arch!r}")


def vision_config(vision):
    """transformers ``InternVLVisionConfig`` for an original InternViT ``vision_config`` dict."""
    vc = {**VISION_DEFAULTS, **vision}
    return transformers.InternVLVisionConfig(
        hidden_size=vc["hidden_size"],
        num_hidden_layers=vc["num_hidden_layers"],
        num_attention_heads=vc["num_attention_heads"],
        intermediate_size=vc["intermediate_size"],
        hidden_act=vc["hidden_act"],
        layer_norm_eps=vc["layer_norm_eps"],
        image_size=vc["image_size"],
        patch_size=vc["patch_size"],
        num_channels=vc["num_channels"],
        attention_bias=vc["qkv_bias"],
        use_qk_norm=vc["qk_normalization"],
        norm_type=vc["norm_type"],
        layer_scale_init_value=vc["initializer_factor"],
        attention_dropout=vc.get("attention_dropout", 0.0),
        hidden_dropout_prob=vc.get("dropout", 0.0),
        projection_dropout=vc.get("dropout", 0.0),
        use_mean_pooling=True,  # no final LayerNorm: InternViT has none
        use_absolute_position_embeddings=True,
        use_mask_token=False,
        attn_implementation="eager",
    )


def internvl_config(config, image_token_id):
    """transformers ``InternVLConfig`` for a whole original ``InternVLChatConfig`` dict."""
    chat = {**CHAT_DEFAULTS, **config}
    if chat["ps_version"] != "v2":
        raise ValueError(f"transformers InternVL implements pixel shuffle 'v2' only, not {chat['ps_version']!r}")
    text, _ = text_config(config["llm_config"])
    vision = config["vision_config"]
    image_size = config.get("force_image_size") or vision["image_size"]
    cfg = transformers.InternVLConfig(
        vision_config=vision_config(vision),
        text_config=text,
        image_token_id=int(image_token_id),
        image_seq_length=int((image_size // vision["patch_size"]) ** 2 * chat["downsample_ratio"] ** 2),
        downsample_ratio=chat["downsample_ratio"],
        projector_hidden_act="gelu",
        vision_feature_layer=chat["select_layer"],
        vision_feature_select_strategy="default",
        tie_word_embeddings=text.tie_word_embeddings,
    )
    cfg._attn_implementation = "eager"
    return cfg


# ---------------------------------------------------------------- weight names


def map_vision(weights, prefix="vision_model."):
    """Original InternViT tensors (under ``prefix``) -> transformers InternVLVisionModel names."""
    renames = {
        "embeddings.class_embedding": "embeddings.cls_token",
        "embeddings.position_embedding": "embeddings.position_embeddings",
        "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
    }
    layer_renames = {
        "attn.proj.": "attention.projection_layer.",
        "attn.q_norm.": "attention.q_norm.",
        "attn.k_norm.": "attention.k_norm.",
        "mlp.fc1.": "mlp.fc1.",
        "mlp.fc2.": "mlp.fc2.",
        "norm1.": "layernorm_before.",
        "norm2.": "layernorm_after.",
    }
    out = {}
    for name, value in weights.items():
        if not name.startswith(prefix):
            continue
        name = name[len(prefix) :]
        if name in renames:
            out[renames[name]] = value
            continue
        _, _, index, rest = name.split(".", 3)  # encoder.layers.{i}.rest
        new = f"encoder.layer.{index}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]  # weight | bias; rows are [q | k | v]
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{new}attention.{part}.{kind}"] = chunk
        elif rest in ("ls1", "ls2"):
            out[new + ("lambda_1" if rest == "ls1" else "lambda_2")] = value
        else:
            old = next((k for k in layer_renames if rest.startswith(k)), None)
            if old is None:
                raise KeyError(f"unknown vision weight '{prefix}{name}'")
            out[new + layer_renames[old] + rest[len(old) :]] = value
    return out


def _split_internlm2_wqkv(value, llm):
    """Grouped wqkv rows [kv, g+2, head_dim] (g query heads, key, value per KV head) -> q, k, v."""
    heads, kv = llm["num_attention_heads"], llm["num_key_value_heads"]
    groups, head_dim = heads // kv, llm["hidden_size"] // heads
    grouped = value.reshape(kv, groups + 2, head_dim, *value.shape[1:])
    q = grouped[:, :groups].reshape(heads * head_dim, *value.shape[1:])
    k = grouped[:, groups].reshape(kv * head_dim, *value.shape[1:])
    v = grouped[:, groups + 1].reshape(kv * head_dim, *value.shape[1:])
    return q, k, v


def map_llm(weights, llm):
    """Original ``language_model.*`` tensors -> transformers causal LM names (``model.*``, ``lm_head``)."""
    arch = llm["architectures"][0]
    prefix = "language_model."
    out = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if arch == "InternLM2ForCausalLM":
        out = _rename_internlm2(out, llm)
    if "lm_head.weight" not in out and llm.get("tie_word_embeddings", False):
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def _rename_internlm2(weights, llm):
    renames = {
        "attention.wo.": "self_attn.o_proj.",
        "feed_forward.w1.": "mlp.gate_proj.",
        "feed_forward.w3.": "mlp.up_proj.",
        "feed_forward.w2.": "mlp.down_proj.",
        "attention_norm.": "input_layernorm.",
        "ffn_norm.": "post_attention_layernorm.",
    }
    out = {}
    for name, value in weights.items():
        if name == "model.tok_embeddings.weight":
            out["model.embed_tokens.weight"] = value
        elif name == "output.weight":
            out["lm_head.weight"] = value
        elif ".attention.wqkv." in name:
            pre, kind = name.split(".attention.wqkv.")
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), _split_internlm2_wqkv(value, llm)):
                out[f"{pre}.self_attn.{part}.{kind}"] = chunk
        else:
            old = next((k for k in renames if f".{k}" in name), None)
            out[name.replace(old, renames[old]) if old else name] = value
    return out


def map_full(weights, config):
    """Whole original checkpoint -> transformers InternVLForConditionalGeneration names."""
    out = {f"model.vision_tower.{k}": v for k, v in map_vision(weights).items()}
    for index, name in (("0", "layer_norm"), ("1", "linear_1"), ("3", "linear_2")):
        for kind in ("weight", "bias"):
            out[f"model.multi_modal_projector.{name}.{kind}"] = weights[f"mlp1.{index}.{kind}"]
    for name, value in map_llm(weights, config["llm_config"]).items():
        out[name if name == "lm_head.weight" else "model.language_model." + name[len("model.") :]] = value
    return out


def _load(model, state):
    """Load a complete state dict; a missing or extra tensor is an error, not a silent default."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"weight mapping mismatch: missing {sorted(result.missing_keys)}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )
    return model.eval()


# ---------------------------------------------------------------- modes


def _generate(model, inputs, model_inputs, num_beams):
    """New token ids of a greedy (num_beams=1) or beam search; stops at EOS only if one is given."""
    settings = {"max_new_tokens": int(inputs["max_new_tokens"]), "do_sample": False, "num_beams": num_beams}
    if "eos_token_id" in inputs:
        settings["eos_token_id"] = inputs["eos_token_id"].tolist()
    if "pad_token_id" in inputs:
        settings["pad_token_id"] = int(inputs["pad_token_id"])
    return _generate_with(model, model_inputs, settings)


def _generate_with(model, model_inputs, settings, from_embeds=False):
    """New token ids for GenerationConfig ``settings``; unset fields keep transformers' defaults, no config EOS."""
    settings = dict(settings)
    eos = settings.get("eos_token_id")
    if eos is not None and "pad_token_id" not in settings:
        settings["pad_token_id"] = eos if isinstance(eos, int) else eos[0]
    # Replace, not override: generate() fills unset fields (eos!) from the model's own defaults.
    model.generation_config = transformers.GenerationConfig(**settings)
    if from_embeds:
        embeds = model.get_input_embeddings()(model_inputs["input_ids"])
        # From embeddings only, generate() returns the new tokens alone.
        return model.generate(inputs_embeds=embeds, attention_mask=model_inputs.get("attention_mask")).numpy()
    sequences = model.generate(**model_inputs)
    return sequences[:, model_inputs["input_ids"].shape[1] :].numpy()


def _text_inputs(inputs):
    model_inputs = {"input_ids": torch.from_numpy(inputs["input_ids"].astype(np.int64))}
    if "attention_mask" in inputs:
        model_inputs["attention_mask"] = torch.from_numpy(inputs["attention_mask"].astype(np.int64))
    return model_inputs


def run_llm(config, weights, inputs):
    llm = config["llm_config"]
    cfg, model_class = text_config(llm)
    model = _load(model_class(cfg), map_llm(weights, llm))
    model_inputs = _text_inputs(inputs)
    forward_inputs = dict(model_inputs)
    if "position_ids" in inputs:
        forward_inputs["position_ids"] = torch.from_numpy(inputs["position_ids"].astype(np.int64))
    outputs = {"logits": model(**forward_inputs).logits.numpy()}
    if "max_new_tokens" in inputs:
        outputs["greedy_tokens"] = _generate(model, inputs, model_inputs, 1)
        if "num_beams" in inputs:
            outputs["beam_tokens"] = _generate(model, inputs, model_inputs, int(inputs["num_beams"]))
    if "generate_settings" in inputs:
        from_embeds = bool(inputs.get("from_embeds", False))
        for index, settings in enumerate(json.loads(str(inputs["generate_settings"]))):
            outputs[f"generated_{index}"] = _generate_with(model, model_inputs, settings, from_embeds)
    return outputs


def _match_qk_norm_eps(vision_model, vision):
    """The original q/k RMSNorms use layer_norm_eps; transformers hard-codes 1e-6."""
    eps = {**VISION_DEFAULTS, **vision}["layer_norm_eps"]
    for layer in vision_model.encoder.layer:
        for norm in (layer.attention.q_norm, layer.attention.k_norm):
            if hasattr(norm, "variance_epsilon"):
                norm.variance_epsilon = eps


def run_vision(config, weights, inputs):
    vision = config["vision_config"]
    model = _load(transformers.InternVLVisionModel(vision_config(vision)), map_vision(weights))
    _match_qk_norm_eps(model, vision)
    out = model(torch.from_numpy(inputs["pixel_values"].astype(np.float32)), output_hidden_states=True)
    return {
        "last_hidden_state": out.last_hidden_state.numpy(),
        "hidden_states": torch.stack(out.hidden_states).numpy(),
    }


def run_full(config, weights, inputs):
    cfg = internvl_config(config, inputs["image_token_id"])
    model = _load(transformers.InternVLForConditionalGeneration(cfg), map_full(weights, config))
    _match_qk_norm_eps(model.model.vision_tower, config["vision_config"])
    model_inputs = _text_inputs(inputs)
    model_inputs["pixel_values"] = torch.from_numpy(inputs["pixel_values"].astype(np.float32))
    outputs = {"logits": model(**model_inputs).logits.numpy()}
    if "max_new_tokens" in inputs:
        outputs["greedy_tokens"] = _generate(model, inputs, model_inputs, 1)
    return outputs


def run_count(config, weights, inputs):
    """Parameter counts of the transformers model built from the config alone (meta device, no weights)."""
    with torch.device("meta"):
        model = transformers.InternVLForConditionalGeneration(internvl_config(config, 0))
    parts = {
        "vision": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "llm": model.model.language_model,
        "lm_head": model.lm_head,
    }
    counts = {name: np.array(sum(p.numel() for p in part.parameters())) for name, part in parts.items()}
    counts["total"] = np.array(sum(p.numel() for p in model.parameters()))
    return counts


MODES = {"llm": run_llm, "vision": run_vision, "full": run_full, "count": run_count}


def run_job(mode, ckpt, inputs_path, out_path):
    """One reference run: checkpoint folder and input .npz in, output .npz written."""
    torch.manual_seed(0)
    with open(os.path.join(ckpt, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with np.load(inputs_path) as data:
        inputs = {k: data[k] for k in data.files}
    weights = {} if mode == "count" else load_original_weights(ckpt)
    logger.info("%s: %d tensors from %s", mode, len(weights), ckpt)
    with torch.no_grad():
        outputs = MODES[mode](config, weights, inputs)
    np.savez(out_path, **outputs)
    logger.info("wrote %s (%s)", out_path, ", ".join(f"{k}{list(v.shape)}" for k, v in outputs.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES) + ["batch"])
    parser.add_argument("--ckpt", help="checkpoint folder in the original InternVL layout")
    parser.add_argument("--inputs", help="input .npz")
    parser.add_argument("--out", help="output .npz")
    parser.add_argument("--jobs", help="batch mode: JSON list of {mode, ckpt, inputs, out}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("PADDLEMIX_REF_THREADS", "2")))
    if args.mode == "batch":
        if not args.jobs:
            parser.error("batch needs --jobs")
        with open(args.jobs, encoding="utf-8") as f:
            jobs = json.load(f)
        for job in jobs:
            run_job(job["mode"], job["ckpt"], job["inputs"], job["out"])
        return
    if not (args.ckpt and args.inputs and args.out):
        parser.error(f"{args.mode} needs --ckpt, --inputs and --out")
    run_job(args.mode, args.ckpt, args.inputs, args.out)


if __name__ == "__main__":
    main()
