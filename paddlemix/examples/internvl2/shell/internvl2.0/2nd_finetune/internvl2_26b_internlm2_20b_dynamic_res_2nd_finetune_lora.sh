#!/usr/bin/env bash
# InternVL2-26B (InternViT-6B + internlm2-chat-20B): 2nd fine-tuning of a rank-16 LoRA on the LLM (ViT, mlp1, LLM frozen).
# Needs 2 GPUs with 80 GB: each language-model layer split over 2 (tensor parallel), the optimizer over 1 (sharding stage1); about 45 GiB per card (python -m paddlemix.models.internvl2.memory).
# Usage: [GPUS=..] [TENSOR_PARALLEL=..] [PER_DEVICE_BATCH_SIZE=..] [MODEL=..] [META_PATH=..] [OUTPUT_DIR=..] [DEVICE=npu] [DRY_RUN=1] \
#        bash internvl2_26b_internlm2_20b_dynamic_res_2nd_finetune_lora.sh [extra internvl_chat_finetune.py arguments]
MODEL_NAME=InternVL2-26B
CONV_STYLE=internlm2-chat
MODE=lora
LEARNING_RATE=2e-5
WEIGHT_DECAY=0.05
DROP_PATH_RATE=0.0
SHARDING=stage1
DEFAULT_GPUS=2
DEFAULT_TENSOR_PARALLEL=2
DEFAULT_PER_DEVICE_BATCH_SIZE=2
SCRIPT_PATH="${BASH_SOURCE[0]}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
