#!/usr/bin/env bash
# InternVL2-2B (InternViT-300M + internlm2-chat-1.8B): 2nd fine-tuning of a rank-16 LoRA on the LLM (ViT, mlp1, LLM frozen).
# Usage: [GPUS=..] [PER_DEVICE_BATCH_SIZE=..] [MODEL=..] [META_PATH=..] [OUTPUT_DIR=..] [DEVICE=npu] [DRY_RUN=1] \
#        bash internvl2_2b_internlm2_1_8b_dynamic_res_2nd_finetune_lora.sh [extra internvl_chat_finetune.py arguments]
MODEL_NAME=InternVL2-2B
CONV_STYLE=internlm2-chat
MODE=lora
LEARNING_RATE=4e-5
WEIGHT_DECAY=0.01
DROP_PATH_RATE=0.0
SHARDING=stage1
DEFAULT_GPUS=2
DEFAULT_PER_DEVICE_BATCH_SIZE=4
SCRIPT_PATH="${BASH_SOURCE[0]}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
