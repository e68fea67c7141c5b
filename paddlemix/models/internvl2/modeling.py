"""InternVLChatModel: InternViT -> pixel shuffle -> mlp1 -> LLM, with the official chat API.

`chat`, `batch_chat` and `generate` keep the signatures and prompt rules of the
official `modeling_internvl_chat.py`, so model-card code runs unchanged.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, as_float32, empty_float32, open_checkpoint, original_layout, save_checkpoint,
                         widen_to_float32)
from .config import InternVLChatConfig, rope_type
from .conversation import get_conv_template
from .device_map import language_model_placement, module_device, resolve_device_map
from .generation import generate as generate_tokens
from .hub import resolve_model_dir
from .llm import LanguageModel, checkpoint_names, fuse_checkpoint_parts, split_checkpoint_parts
from .quant import check_method as check_quant_method, keep_bf16_weights, quantize_language_model
from .tensor_parallel import apply_tensor_parallel, checkpoint_slices, gather_parameter, local_config
from .vision import InternVisionModel, Projector, pixel_shuffle

logger = logging.getLogger(__name__)

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
DTYPES = ("float32", "bfloat16", "float16")
# Buffers some checkpoints carry that are recomputed here.
IGNORED_CHECKPOINT_SUFFIXES = ("rotary_emb.inv_freq",)


class PromptError(ValueError):
    """A prompt that does not fit the images or the context window."""


def resolve_dtype(dtype=None):
    """float32 on CPU; bfloat16 on GPUs that have it, else float16. Rejects what the device cannot run."""
    on_cpu = paddle.get_device() == "cpu"
    if dtype is None:
        if on_cpu:
            return "float32"
        return "bfloat16" if paddle.amp.is_bfloat16_supported() else "float16"
    dtype = str(dtype).replace("paddle.", "")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if on_cpu and dtype != "float32":
        raise ValueError(f"dtype {dtype} has no CPU kernels in Paddle dygraph; use float32 on CPU")
    return dtype


class InternVLChatModel(nn.Layer):
    def __init__(self, config: InternVLChatConfig):
        super().__init__()
        self.config = config
        self.template = config.template
        # The model card's streaming loop reads `model.conv_template.sep`.
        self.conv_template = get_conv_template(config.template)
        self.system_message = self.conv_template.system_message
        self.num_image_token = config.num_image_token
        self.select_layer = config.select_layer
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.img_context_token_id = None
        self.vision_model = InternVisionModel(config.vision)
        self.mlp1 = Projector(config.vision.hidden_size, config.llm.hidden_size, config.downsample_ratio)
        self.language_model = LanguageModel(config.llm)

    # --- model ------------------------------------------------------------------
    def extract_feature(self, pixel_values):
        """[tiles, 3, H, W] -> [tiles, num_image_token, llm_hidden].

        For inference on CPU the tiles go through one at a time: a 448px tile's activations stay
        in cache, and the ViT ran 20-25% faster per tile than on a batch of four (docs/performance.md).
        """
        if not self.training and pixel_values.place.is_cpu_place() and pixel_values.shape[0] > 1:
            return paddle.concat([self.extract_feature(pixel_values[i:i + 1]) for i in range(pixel_values.shape[0])])
        pixel_values = pixel_values.astype(self.mlp1[1].weight.dtype)
        if self.select_layer == -1:
            vit_embeds, _ = self.vision_model(pixel_values)
        else:
            _, hidden_states = self.vision_model(pixel_values, output_hidden_states=True)
            vit_embeds = hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]
        side = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape([vit_embeds.shape[0], side, side, -1])
        vit_embeds = pixel_shuffle(vit_embeds, self.downsample_ratio, self.ps_version)
        vit_embeds = vit_embeds.reshape([vit_embeds.shape[0], -1, vit_embeds.shape[-1]])
        return self.mlp1(vit_embeds)

    def _embed_with_images(self, input_ids, vit_embeds):
        """Token embeddings with the <IMG_CONTEXT> positions replaced by image features, in order."""
        embeds = self.language_model.embed_tokens(input_ids)
        if vit_embeds is None:
            return embeds
        if self.img_context_token_id is None:
            raise PromptError("img_context_token_id is not set; set it from the tokenizer's <IMG_CONTEXT> id")
        batch, length, channels = embeds.shape
        flat = embeds.reshape([batch * length, channels])
        positions = paddle.nonzero(input_ids.reshape([-1]) == self.img_context_token_id).reshape([-1])
        features = vit_embeds.reshape([-1, channels]).astype(flat.dtype)
        if positions.shape[0] != features.shape[0]:
            raise PromptError(
                f"the prompt has {positions.shape[0]} {IMG_CONTEXT_TOKEN} tokens but the images give "
                f"{features.shape[0]} features ({vit_embeds.shape[0]} tiles x {self.num_image_token})")
        flat = paddle.scatter(flat, positions, features, overwrite=True)
        return flat.reshape([batch, length, channels])

    def forward(self, pixel_values, input_ids, attention_mask=None, position_ids=None, image_flags=None,
                labels=None):
        """Training/scoring pass: {'loss', 'logits'}. Tiles with image_flags == 0 are padding and dropped."""
        vit_embeds = self.extract_feature(pixel_values)
        if image_flags is not None:
            keep = paddle.nonzero(image_flags.reshape([-1]) == 1).reshape([-1])
            vit_embeds = paddle.gather(vit_embeds, keep, axis=0)
        embeds = self._embed_with_images(input_ids, vit_embeds)
        logits = self.language_model(embeds, attention_mask, position_ids)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return {"loss": loss, "logits": logits}

    @paddle.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config=None, **generate_kwargs):
        """New token ids [B, n]; like the official code, the prompt is passed to the LLM as embeddings.

        Settings are those of generation.GenerationConfig plus `streamer`. Without `eos_token_id` it
        stops at the LLM config's eos, as transformers does; chat() passes the template separator instead.
        """
        settings = dict(generation_config or {}, **generate_kwargs)
        settings.setdefault("eos_token_id", self.config.llm.eos_token_id)
        input_ids = _as_tensor(input_ids).astype("int64")
        # Before the vision encoder runs: a prompt that cannot fit fails at once.
        self._check_context(input_ids.shape[1], settings.get("max_new_tokens", 20))
        vit_embeds = None
        if pixel_values is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(
                _as_tensor(pixel_values))
        embeds = self._embed_with_images(input_ids, vit_embeds)
        if attention_mask is not None:
            attention_mask = _as_tensor(attention_mask)
        return generate_tokens(self.language_model, embeds, attention_mask, **settings)

    def _check_context(self, prompt_len, max_new_tokens):
        llm = self.config.llm
        limit = llm.max_position_embeddings
        if rope_type(llm.rope_scaling) in ("dynamic", "linear"):
            limit = int(limit * llm.rope_scaling.get("factor", 1.0))
        if prompt_len + (max_new_tokens or 0) > limit:
            raise PromptError(f"the prompt has {prompt_len} tokens and {max_new_tokens} new tokens were asked for, "
                              f"more than the model's context of {limit}; use fewer tiles (max_num) or a shorter text")

    def get_hardware_flops(self):
        """paddleformers' Trainer asks any model with a `config` for this when logging; not estimated here."""
        raise NotImplementedError

    # --- chat -------------------------------------------------------------------
    def _image_tokens(self, num_patches):
        return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN

    def _fill_images(self, query, num_patches_list):
        """Replace each <image> with its tile tokens; the counts must match exactly."""
        if query.count("<image>") != len(num_patches_list):
            raise PromptError(f"the prompt has {query.count('<image>')} <image> tags but {len(num_patches_list)} "
                              f"images were given")
        for num_patches in num_patches_list:
            query = query.replace("<image>", self._image_tokens(num_patches), 1)
        return query

    def _new_template(self):
        template = get_conv_template(self.template)
        template.system_message = self.system_message
        return template

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN="<img>", IMG_END_TOKEN="</img>",
             IMG_CONTEXT_TOKEN="<IMG_CONTEXT>", verbose=False):
        """One answer (and the updated history with return_history), as the official chat().

        Several images or video frames: concatenate their tiles in pixel_values, give each one's tile
        count in num_patches_list and put one <image> per entry in the question ("Frame1: <image>\n...").
        As in the official code, generation stops at the template separator only (its id replaces any
        eos_token_id in generation_config) and the answer is cut there. A `streamer` in
        generation_config receives the answer's tokens as they are generated.
        """
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise PromptError(f"num_patches_list sums to {sum(num_patches_list)} tiles but pixel_values has "
                              f"{pixel_values.shape[0]}")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        template = self._new_template()
        eos_token_id = tokenizer.convert_tokens_to_ids(template.sep.strip())
        history = [] if history is None else history
        for old_question, old_answer in history:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = self._fill_images(template.get_prompt(), num_patches_list)
        if verbose and pixel_values is not None:
            logger.info("dynamic ViT batch size: %d", pixel_values.shape[0])
        inputs = tokenizer(query, return_tensors="np")
        output = self.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                               attention_mask=inputs["attention_mask"],
                               **dict(generation_config, eos_token_id=eos_token_id))
        response = tokenizer.batch_decode(output.numpy(), skip_special_tokens=True)[0]
        response = response.split(template.sep.strip())[0].strip()
        history.append((question, response))
        if verbose:
            logger.info("%s\n%s", query.replace(IMG_CONTEXT_TOKEN * self.num_image_token, ""), response)
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None,
                   history=None, return_history=False, IMG_START_TOKEN="<img>", IMG_END_TOKEN="</img>",
                   IMG_CONTEXT_TOKEN="<IMG_CONTEXT>", verbose=False, image_counts=None):
        """One answer per question, generated together: left padding, with a mask and positions that
        make each answer equal to its chat() answer. Each question has one image (num_patches_list
        entry) or, with pixel_values None, none."""
        if history is not None or return_history:
            raise NotImplementedError("multi-turn chat is not supported in batch_chat; use chat() with history")
        if image_counts is not None:
            logger.warning("`image_counts` is deprecated; use `num_patches_list`")
            num_patches_list = image_counts
        if num_patches_list is None:
            if pixel_values is not None:
                raise ValueError("batch_chat needs num_patches_list: the number of tiles of each question's image")
            num_patches_list = [0] * len(questions)
        if len(num_patches_list) != len(questions):
            raise PromptError(f"{len(questions)} questions but {len(num_patches_list)} num_patches_list entries")
        if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise PromptError(f"num_patches_list sums to {sum(num_patches_list)} tiles but pixel_values has "
                              f"{pixel_values.shape[0]}")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        queries = []
        for question, num_patches in zip(questions, num_patches_list):
            if pixel_values is not None and "<image>" not in question:
                question = "<image>\n" + question
            template = self._new_template()
            template.append_message(template.roles[0], question)
            template.append_message(template.roles[1], None)
            queries.append(self._fill_images(template.get_prompt(), [num_patches] if pixel_values is not None else []))
        tokenizer.padding_side = "left"
        inputs = tokenizer(queries, return_tensors="np", padding=True)
        eos_token_id = tokenizer.convert_tokens_to_ids(template.sep.strip())
        output = self.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                               attention_mask=inputs["attention_mask"],
                               **dict(generation_config, eos_token_id=eos_token_id))
        responses = tokenizer.batch_decode(output.numpy(), skip_special_tokens=True)
        return [response.split(template.sep.strip())[0].strip() for response in responses]

    # --- checkpoints -------------------------------------------------------------
    def _checkpoint_entries(self):
        """(parameter name, parameter, checkpoint names, is a Linear weight) for every parameter."""
        linear_weights = {f"{name}.weight" for name, layer in self.named_sublayers() if isinstance(layer, nn.Linear)}
        for name, param in self.named_parameters():
            if name.startswith("language_model."):
                inner = name[len("language_model."):]
                if inner == "lm_head.weight" and self.config.llm.tie_word_embeddings:
                    inner = "embed_tokens.weight"  # a tied head is the (transposed) embedding table
                keys = self._language_model_keys(inner)
            else:
                keys = [name]
            yield name, param, keys, name in linear_weights

    def _language_model_keys(self, inner_name):
        return ["language_model." + key for key in checkpoint_names(self.config.llm, inner_name)]

    def _fused_stored(self, checkpoint, name, keys, mapped=False):
        """(array, safetensors dtype) of one parameter's checkpoint tensor(s), fused into the core layout.

        `mapped`: the array may be a view of the file's memory map (see `Checkpoint.get_mapped`).
        """
        sliced = self._sliced_stored(checkpoint, name, keys)
        if sliced is not None:
            return sliced
        view = checkpoint.get_mapped(keys) if mapped and hasattr(checkpoint, "get_mapped") else None
        if view is not None:
            inner = name[len("language_model."):]
            return (fuse_checkpoint_parts(self.config.llm, inner, [view[0]]) if name.startswith("language_model.")
                    else view[0]), view[1]
        if len(keys) > 1 and name.startswith("language_model.") and hasattr(checkpoint, "get_stored_stacked") \
                and len({checkpoint.stored_dtype(key) for key in keys}) == 1:  # q/k/v, gate/up: one array
            stacked, kind = checkpoint.get_stored_stacked(keys)
            return fuse_checkpoint_parts(self.config.llm, name[len("language_model."):], [stacked]), kind
        parts = [checkpoint.get_stored(key) for key in keys]
        kinds = {kind for _, kind in parts}
        if len(kinds) > 1:  # mixed storage dtypes: widen first, then fuse
            parts, kinds = [(as_float32(*part), "F32") for part in parts], {"F32"}
        arrays = [array for array, _ in parts]
        if name.startswith("language_model."):
            return fuse_checkpoint_parts(self.config.llm, name[len("language_model."):], arrays), kinds.pop()
        return arrays[0], kinds.pop()

    def _sliced_stored(self, checkpoint, name, keys):
        """(array, dtype) of this tensor-parallel rank's slice of a language-model parameter, read
        without the rest of its tensors; None for parameters every rank holds whole."""
        tp = self.language_model.tensor_parallel
        if tp is None or not name.startswith("language_model."):
            return None
        inner = name[len("language_model."):]
        slices = checkpoint_slices(self.config.llm, inner, keys, [checkpoint.shape(key) for key in keys], tp)
        if slices is None:
            return None
        parts = [checkpoint.get_slice(*part) for part in slices]
        if len({kind for _, kind in parts}) > 1:  # mixed storage dtypes: widen first, then fuse
            parts = [(as_float32(*part), "F32") for part in parts]
        merged = fuse_checkpoint_parts(local_config(self.config.llm, tp), inner, [array for array, _ in parts])
        return merged, parts[0][1]

    def load_checkpoint(self, checkpoint, dtype="float32", device_map=None):
        """Copy every tensor from an open checkpoint, transposing Linear weights to [in, out].

        The checkpoint is in the original HF layout or in PaddleMIX's (see checkpoint.py).
        With a `device_map` ({module: device}, see device_map.py) each parameter is created
        on its module's device and the decoder layers run where they sit.
        """
        checkpoint = original_layout(checkpoint)
        placement = language_model_placement(self.config.llm, device_map) if device_map else None
        entries = list(self._checkpoint_entries())
        available = set(checkpoint.keys())
        missing = [key for _, _, keys, _ in entries for key in keys if key not in available]
        used = {key for _, _, keys, _ in entries for key in keys}
        if self.config.llm.tie_word_embeddings:
            # Tied checkpoints may store the head as well; as in transformers, the embeddings win.
            used.update(self._language_model_keys("lm_head.weight"))
        unexpected = [key for key in sorted(available - used) if not key.endswith(IGNORED_CHECKPOINT_SUFFIXES)]
        if missing or unexpected:
            raise CheckpointError(_describe_key_mismatch(missing, unexpected))
        with ThreadPoolExecutor(max_workers=_load_threads()) as pool:
            for name, param, keys, is_linear in tqdm(entries, desc="Loading weights", unit="tensor", leave=False):
                stored, kind = self._fused_stored(checkpoint, name, keys, mapped=param.dtype == paddle.bfloat16)
                shape = stored.shape[::-1] if is_linear else stored.shape
                if tuple(shape) != tuple(param.shape):
                    raise CheckpointError(f"checkpoint tensor(s) {keys} have shape {tuple(shape)} after mapping, "
                                          f"but the model built from config.json expects {tuple(param.shape)}")
                place = module_device(keys[0], device_map) if device_map else None
                if param.dtype == paddle.bfloat16 and kind == "BF16":  # kept as stored (Bf16Linear): no copy, no read
                    # numpy has no bf16: its bits go through dlpack as int16 and are viewed as bf16.
                    bits = paddle.utils.dlpack.from_dlpack(np.ascontiguousarray(stored).view(np.int16))
                    bits.view(paddle.bfloat16)._share_buffer_to(param)
                    continue
                host = widen_to_float32(stored, kind, empty_float32(param.shape), transpose=is_linear, pool=pool)
                del stored
                if place is None and dtype == "float32" and paddle.get_device() == "cpu":
                    # The parameter takes over the array's memory: no second copy of the model.
                    paddle.utils.dlpack.from_dlpack(host)._share_buffer_to(param)
                else:
                    param.set_value(paddle.to_tensor(host, place=place).astype(dtype))
                del host
        if placement:
            self.language_model.place_layers(*placement)

    def state_for_checkpoint(self):
        """(checkpoint name, numpy array in HF layout) pairs, one parameter at a time.

        With tensor parallelism every rank of the group must iterate: each split parameter is
        gathered whole (a collective), and rank 0 yields it.
        """
        tp = self.language_model.tensor_parallel
        for name, param, keys, is_linear in self._checkpoint_entries():
            if name == "language_model.lm_head.weight" and self.config.llm.tie_word_embeddings:
                continue  # saved once, as the embeddings
            if not param._is_initialized():  # numpy() would give a silently empty array
                raise CheckpointError(f"parameter {name} holds no data (a slice sharding stage3 did not gather?); "
                                      "nothing was written")
            if name.startswith("language_model."):
                param = gather_parameter(self.config.llm, name[len("language_model."):], param.detach(), tp)
            if tp is not None and tp.rank != 0:
                continue  # it took part in the gather; rank 0 converts and writes
            array = param.astype("float32").numpy()
            if is_linear:
                array = np.ascontiguousarray(array.T)
            if name.startswith("language_model."):
                parts = split_checkpoint_parts(self.config.llm, name[len("language_model."):], array)
            else:
                parts = [array]
            yield from zip(keys, parts)

    def _bf16_linear_layers(self, checkpoint, dtype, device_map, requested):
        """Names of the layers that keep the checkpoint's bf16 weights (see quant.Bf16Linear).

        The Linear layers of the language model and the ViT, and the token embeddings, whose
        checkpoint tensors are all bf16. `requested` None: whenever it can (CPU, float32 compute,
        one device); True: it must; False: never (training and LoRA need float32 parameters).
        """
        if requested is False:
            return []
        reasons = []
        if paddle.get_device() != "cpu":
            reasons.append(f"the device is {paddle.get_device()}, not the CPU")
        if dtype != "float32":
            reasons.append(f"the compute dtype is {dtype}, not float32")
        if device_map:
            reasons.append("a device_map spreads the model")
        names = [name[:-len(".weight")] for name, _, keys, is_linear in self._checkpoint_entries()
                 if (is_linear and name.startswith(("language_model.", "vision_model."))
                     or name == "language_model.embed_tokens.weight")
                 and all(checkpoint.stored_dtype(key) == "BF16" for key in keys)]
        if not names:
            reasons.append("the checkpoint holds no bf16 Linear weights")
        if reasons and requested:
            raise ValueError("cpu_bf16_weights=True cannot be met: " + "; ".join(reasons))
        return [] if reasons else names

    @classmethod
    def from_pretrained(cls, path_or_id, dtype=None, download_source=None, revision=None, device_map=None,
                        quant=None, cpu_bf16_weights=None, tensor_parallel=None):
        """Load an InternVL checkpoint (local dir or hub id) in the original HF or the PaddleMIX layout.

        `device_map` spreads a large model over several GPUs: "auto" for the official
        split over all visible GPUs, or {module name: GPU index} (see device_map.py).
        `quant="weight_only_int8"` keeps the decoder's Linear weights in int8 (see quant.py).
        `cpu_bf16_weights`: on CPU a bf16 checkpoint's Linear weights (language model and ViT) stay
        bf16 in memory and are widened inside the kernels (half the memory, faster decoding, the
        float32 numbers); None does so whenever it can, False keeps float32 parameters (to train).
        `tensor_parallel` (a tensor_parallel.TensorParallel): this rank builds and reads only its slice
        of the language model (see tensor_parallel.py); the ViT and mlp1 are loaded whole.
        """
        if quant is not None:
            check_quant_method(quant)
        model_dir = resolve_model_dir(path_or_id, download_source, revision)
        config = InternVLChatConfig.from_pretrained(model_dir)
        dtype = resolve_dtype(dtype)
        device_map = resolve_device_map(device_map, config.llm.num_hidden_layers)
        with open_checkpoint(model_dir) as stored:
            checkpoint = original_layout(stored)
            previous = paddle.get_default_dtype()
            paddle.set_default_dtype(dtype)
            try:
                # LazyGuard: parameters get memory only when their checkpoint tensor is copied in,
                # so loading never holds a randomly initialised second copy of the model.
                with paddle.LazyGuard():
                    model = cls(config)
                    if tensor_parallel is not None and tensor_parallel.degree > 1:
                        model._refuse_with_tensor_parallel(device_map, quant, cpu_bf16_weights)
                        apply_tensor_parallel(model.language_model, tensor_parallel)
                        cpu_bf16_weights = False
                    keep_bf16_weights(model, model._bf16_linear_layers(checkpoint, dtype, device_map,
                                                                       cpu_bf16_weights))
            finally:
                paddle.set_default_dtype(previous)
            model.load_checkpoint(checkpoint, dtype, device_map)
        if quant:
            quantize_language_model(model.language_model, quant)
        if tensor_parallel is not None and tensor_parallel.degree > 1:
            logger.info("tensor-parallel rank %d of %d loaded its slice: %s", tensor_parallel.rank,
                        tensor_parallel.degree, peak_memory())
        model.name_or_path, model.model_dir = str(path_or_id), model_dir
        model.eval()
        return model

    @staticmethod
    def _refuse_with_tensor_parallel(device_map, quant, cpu_bf16_weights):
        for option, value in (("device_map", device_map), ("quant", quant), ("cpu_bf16_weights", cpu_bf16_weights)):
            if value:
                raise ValueError(f"{option}={value!r} does not combine with tensor parallelism; leave it unset")

    def save_pretrained(self, save_dir, dtype="bfloat16", max_shard_bytes=5 * 2 ** 30):
        """Write config.json and HF-layout safetensors that the official code (and from_pretrained) loads.

        A tensor-parallel model is saved whole: every rank calls this, and rank 0 writes each tensor
        as soon as it is gathered (one shard in memory at a time).
        """
        tp = self.language_model.tensor_parallel
        if tp is not None and tp.rank != 0:
            for _ in self.state_for_checkpoint():  # takes part in the gathers; yields nothing here
                pass
            return
        os.makedirs(save_dir, exist_ok=True)
        save_checkpoint(save_dir, self.state_for_checkpoint(), dtype=dtype, max_shard_bytes=max_shard_bytes)
        self.config.save(save_dir)


def peak_memory():
    """This process's peak host memory so far, and its GPU's peak allocation when it has one."""
    from .memory import peak_host_rss_bytes

    said = f"peak host RSS {peak_host_rss_bytes() / 2**30:.2f} GiB"
    if paddle.is_compiled_with_cuda() and paddle.get_device().startswith("gpu"):
        said += f", peak GPU memory {paddle.device.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return said


def _load_threads():
    """Threads for widening weights while loading: as many as the compute kernels may use."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _as_tensor(value):
    return value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)


def causal_lm_loss(logits, labels, ignore_index=-100):
    """Mean next-token cross entropy over the positions whose label is not ignore_index.

    The masked mean is spelled out rather than left to `reduction="mean"`, whose
    handling of ignored positions differs between device backends. Only the rows
    that have a target go through the softmax, and the logits are not sliced: the
    backward of a strided [B, T, vocab] slice took seconds per step on CPU.
    """
    batch, _, vocab = logits.shape
    padding = paddle.full([batch, 1], ignore_index, dtype=labels.dtype)
    targets = paddle.concat([labels[:, 1:], padding], axis=1).reshape([-1])  # position t predicts token t + 1
    rows = paddle.nonzero(targets != ignore_index).reshape([-1])
    if rows.shape[0] == 0:
        return logits.sum().astype("float32") * 0.0  # nothing to learn; keeps the graph connected
    picked = paddle.gather(logits.reshape([-1, vocab]), rows).astype("float32")
    per_token = F.cross_entropy(picked, paddle.gather(targets, rows).unsqueeze(-1), reduction="none")
    return per_token.sum() / rows.shape[0]


def _describe_key_mismatch(missing, unexpected, limit=10):
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:limit])}"
                     + (" ..." if len(missing) > limit else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:limit])}"
                     + (" ..." if len(unexpected) > limit else ""))
    return "checkpoint does not match config.json: " + "; ".join(parts)
