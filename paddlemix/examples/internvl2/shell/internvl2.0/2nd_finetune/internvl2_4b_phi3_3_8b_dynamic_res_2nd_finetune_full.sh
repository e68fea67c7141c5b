#!/usr/bin/env bash
# InternVL2-4B (InternViT-300M + Phi-3-mini 3.8B): 2nd fine-tuning of the full LLM and mlp1 (ViT frozen).
# Usage: [GPUS=..] [PER_DEVICE_BATCH_SIZE=..] [MODEL=..] [META_PATH=..] [OUTPUT_DIR=..] [DEVICE=npu] [DRY_RUN=1] \
#        bash internvl2_4b_phi3_3_8b_dynamic_res_2nd_finetune_full.sh [extra internvl_chat_finetune.py arguments]
MODEL_NAME=InternVL2-4B
CONV_STYLE=phi3-chat
MODE=full
LEARNING_RATE=4e-5
WEIGHT_DECAY=0.01
DROP_PATH_RATE=0.1
SHARDING=stage1
DEFAULT_GPUS=8
DEFAULT_PER_DEVICE_BATCH_SIZE=4
SCRIPT_PATH="${BASH_SOURCE[0]}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
