#!/usr/bin/env bash
# InternVL2-1B (InternViT-300M + Qwen2-0.5B): 2nd fine-tuning of a rank-16 LoRA on the LLM (ViT, mlp1, LLM frozen).
# Usage: [GPUS=..] [PER_DEVICE_BATCH_SIZE=..] [MODEL=..] [META_PATH=..] [OUTPUT_DIR=..] [DEVICE=npu] [DRY_RUN=1] \
#        bash internvl2_1b_qwen2_0_5b_dynamic_res_2nd_finetune_lora.sh [extra internvl_chat_finetune.py arguments]
MODEL_NAME=InternVL2-1B
CONV_STYLE=Hermes-2
MODE=lora
LEARNING_RATE=4e-5
WEIGHT_DECAY=0.01
DROP_PATH_RATE=0.0
SHARDING=stage1
DEFAULT_GPUS=2
DEFAULT_PER_DEVICE_BATCH_SIZE=4
SCRIPT_PATH="${BASH_SOURCE[0]}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
