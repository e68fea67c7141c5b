# Shared body of the InternVL2 2nd fine-tuning scripts; sourced, never run directly.
#
# The sourcing script sets: MODEL_NAME, CONV_STYLE, MODE (full|lora), LEARNING_RATE,
# WEIGHT_DECAY, DROP_PATH_RATE, SHARDING (stage1|stage3), DEFAULT_GPUS,
# DEFAULT_PER_DEVICE_BATCH_SIZE, and optionally DEFAULT_TENSOR_PARALLEL (default 1).
# Hyperparameters are the official ones (OpenGVLab/InternVL shell/internvl2.0/2nd_finetune).
#
# Environment overrides:
#   GPUS                   devices (processes on CPU) in total (default per script)
#   TENSOR_PARALLEL        ranks each language-model layer is split over (default per script; GPUs/NPUs
#                          only); sharding stage1 splits the optimizer over GPUS / TENSOR_PARALLEL
#   DEVICE_GIB             memory per card for the estimate printed before launch (default 80)
#   PER_DEVICE_BATCH_SIZE  samples per device and step (default per script)
#   BATCH_SIZE             global batch (128 full, 16 LoRA);
#                          accumulation = BATCH_SIZE / (PER_DEVICE * GPUS / TENSOR_PARALLEL)
#   MODEL                  checkpoint dir or hub id (default ./pretrained/<MODEL_NAME>)
#   META_PATH              meta JSON of the datasets (default ./shell/data/internvl_1_2_finetune_custom.json)
#   OUTPUT_DIR             default work_dirs/internvl_chat_v2_0/<script name>
#   DEVICE                 gpu (default), npu, or cpu (fp32, for trying small checkpoints and data)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node launch (GPUS counts all nodes)
#   PYTHON                 interpreter (default python)
#   DRY_RUN=1              print the launch command, check the arguments and data files, launch nothing
# Extra arguments to the script are passed on to internvl_chat_finetune.py (they win over the defaults).

set -euo pipefail

fail() {
  echo "error: $*" >&2
  exit 1
}

is_positive_int() {
  [[ "$1" =~ ^[1-9][0-9]*$ ]]
}

# The command as one line that bash reads back unchanged, quoting only what needs it.
print_command() {
  local arg line=""
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
      line+="${arg} "
    else
      line+="$(printf '%q' "${arg}") "
    fi
  done
  echo "${line% }"
}

for name in MODEL_NAME CONV_STYLE MODE LEARNING_RATE WEIGHT_DECAY DROP_PATH_RATE SHARDING DEFAULT_GPUS \
            DEFAULT_PER_DEVICE_BATCH_SIZE; do
  [[ -n "${!name:-}" ]] || fail "the sourcing script must set ${name}"
done

SCRIPT_NAME="$(basename "${SCRIPT_PATH:-$0}" .sh)"
FINETUNE_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/internvl_chat_finetune.py"

case "${MODE}" in
  full) DEFAULT_BATCH_SIZE=128 ;;
  lora) DEFAULT_BATCH_SIZE=16 ;;
  *) fail "MODE must be full or lora, not '${MODE}'" ;;
esac

GPUS="${GPUS:-${DEFAULT_GPUS}}"
if [[ -z "${TENSOR_PARALLEL:-}" ]]; then
  # The script's default is for GPUs; on CPU processes tensor parallelism does not run (a value the
  # user sets is kept there, and the Python checks refuse it in one sentence).
  TENSOR_PARALLEL="${DEFAULT_TENSOR_PARALLEL:-1}"
  [[ "${DEVICE:-gpu}" != cpu ]] || TENSOR_PARALLEL=1
fi
DEVICE_GIB="${DEVICE_GIB:-80}"
PER_DEVICE_BATCH_SIZE="${PER_DEVICE_BATCH_SIZE:-${DEFAULT_PER_DEVICE_BATCH_SIZE}}"
BATCH_SIZE="${BATCH_SIZE:-${DEFAULT_BATCH_SIZE}}"
MODEL="${MODEL:-./pretrained/${MODEL_NAME}}"
META_PATH="${META_PATH:-./shell/data/internvl_1_2_finetune_custom.json}"
OUTPUT_DIR="${OUTPUT_DIR:-work_dirs/internvl_chat_v2_0/${SCRIPT_NAME}}"
DEVICE="${DEVICE:-gpu}"
NNODES="${NNODES:-1}"
PYTHON="${PYTHON:-python}"

for name in GPUS PER_DEVICE_BATCH_SIZE BATCH_SIZE NNODES TENSOR_PARALLEL; do
  is_positive_int "${!name}" || fail "${name} must be a positive integer, not '${!name}'"
done
(( GPUS % NNODES == 0 )) || fail "GPUS=${GPUS} is not divisible by NNODES=${NNODES}"
(( GPUS % TENSOR_PARALLEL == 0 )) || fail "GPUS=${GPUS} is not divisible by TENSOR_PARALLEL=${TENSOR_PARALLEL}"
(( TENSOR_PARALLEL == 1 )) || [[ "${SHARDING}" == stage1 ]] ||
  fail "tensor parallelism combines with sharding stage1 only, not ${SHARDING}"
SHARDING_DEGREE=$((GPUS / TENSOR_PARALLEL))
# The ranks of a tensor-parallel group work on the same samples: the data is split over the rest.
(( BATCH_SIZE % (PER_DEVICE_BATCH_SIZE * SHARDING_DEGREE) == 0 )) ||
  fail "BATCH_SIZE=${BATCH_SIZE} is not a multiple of PER_DEVICE_BATCH_SIZE * GPUS / TENSOR_PARALLEL =" \
       "$((PER_DEVICE_BATCH_SIZE * SHARDING_DEGREE))"
GRADIENT_ACC=$((BATCH_SIZE / PER_DEVICE_BATCH_SIZE / SHARDING_DEGREE))
DEVICES_PER_NODE=$((GPUS / NNODES))

# The official bf16 recipe; fp32 master weights and gradients, parameters split by stage1.
PRECISION_ARGS=(--bf16 True --fp16_opt_level O2 --amp_master_grad True --split_param True)
case "${DEVICE}" in
  gpu) ;;
  npu)
    # Ascend: no stride kernels or private formats, no JIT compile, aclnn acceleration,
    # and set_value on the host (as PaddleMIX's NPU guide).
    export FLAGS_use_stride_kernel=0
    export FLAGS_npu_storage_format=0
    export FLAGS_npu_jit_compile=0
    export FLAGS_npu_scale_aclnn=True
    export FLAGS_npu_split_aclnn=True
    export CUSTOM_DEVICE_BLACK_LIST=set_value,set_value_with_tensor
    ;;
  cpu)
    # A functional run (small checkpoints, checking data): Paddle has no bf16 kernels on CPU,
    # and paddleformers cannot clip fp32 gradients on several ranks.
    PRECISION_ARGS=(--bf16 False --fp16_opt_level O1 --amp_master_grad False --split_param False)
    if (( GPUS > 1 )); then
      PRECISION_ARGS+=(--max_grad_norm 0)
    fi
    ;;
  *) fail "DEVICE must be gpu, npu or cpu, not '${DEVICE}'" ;;
esac

if [[ "${MODE}" == full ]]; then
  TRAINABLE_ARGS=(--freeze_llm False --freeze_mlp False --freeze_backbone True)
else
  TRAINABLE_ARGS=(--freeze_llm True --freeze_mlp True --freeze_backbone True --use_llm_lora 16)
fi

TRAIN_ARGS=(
  --model_name_or_path "${MODEL}"
  --conv_style "${CONV_STYLE}"
  --output_dir "${OUTPUT_DIR}"
  --meta_path "${META_PATH}"
  --device "${DEVICE}"
  --force_image_size 448
  --max_dynamic_patch 6
  --down_sample_ratio 0.5
  --drop_path_rate "${DROP_PATH_RATE}"
  "${TRAINABLE_ARGS[@]}"
  --vision_select_layer -1
  --dataloader_num_workers 4
  "${PRECISION_ARGS[@]}"
  --num_train_epochs 1
  --per_device_train_batch_size "${PER_DEVICE_BATCH_SIZE}"
  --gradient_accumulation_steps "${GRADIENT_ACC}"
  --evaluation_strategy no
  --save_strategy steps
  --save_steps 200
  --save_total_limit 1
  --learning_rate "${LEARNING_RATE}"
  --weight_decay "${WEIGHT_DECAY}"
  --warmup_ratio 0.03
  --lr_scheduler_type cosine
  --logging_steps 1
  --max_seq_length 4096
  --do_train True
  --grad_checkpoint True
  --group_by_length True
  --dynamic_image_size True
  --use_thumbnail True
  --ps_version v2
  --sharding "${SHARDING}"
  --tensor_parallel_degree "${TENSOR_PARALLEL}"
  --report_to visualdl
  "$@"
)

if [[ "${DEVICE}" == cpu ]]; then
  LAUNCH=("${PYTHON}" -m paddle.distributed.launch --nproc_per_node "${DEVICES_PER_NODE}")
else
  LAUNCH=("${PYTHON}" -m paddle.distributed.launch --devices "$(seq -s, 0 $((DEVICES_PER_NODE - 1)))")
fi
LAUNCH+=(--log_dir "${OUTPUT_DIR}/launch_logs")
if (( NNODES > 1 )); then
  LAUNCH+=(--nnodes "${NNODES}" --rank "${NODE_RANK:-0}" --master "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-34229}")
fi
COMMAND=("${LAUNCH[@]}" "${FINETUNE_PY}" "${TRAIN_ARGS[@]}")

echo "# ${SCRIPT_NAME}: ${GPUS} ${DEVICE}(s) x ${PER_DEVICE_BATCH_SIZE} per device x ${GRADIENT_ACC} accumulation" \
     "/ ${TENSOR_PARALLEL} tensor-parallel = global batch ${BATCH_SIZE}"
print_command "${COMMAND[@]}"

# The per-device memory estimate from the checkpoint's config.json (paddlemix/models/internvl2/memory.py);
# it stops the launch when the cards are too small.
if [[ "${DEVICE}" != cpu && -f "${MODEL}/config.json" ]]; then
  "${PYTHON}" -m paddlemix.models.internvl2.memory "${MODEL}" --mode "${MODE}" --tensor-parallel "${TENSOR_PARALLEL}" \
    --sharding "${SHARDING_DEGREE}" --per-device-batch "${PER_DEVICE_BATCH_SIZE}" --device-gib "${DEVICE_GIB}" ||
    exit 1
fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exec "${PYTHON}" "${FINETUNE_PY}" "${TRAIN_ARGS[@]}" --dry_run True
fi

mkdir -p "${OUTPUT_DIR}"
"${COMMAND[@]}" 2>&1 | tee -a "${OUTPUT_DIR}/training_log.txt"
