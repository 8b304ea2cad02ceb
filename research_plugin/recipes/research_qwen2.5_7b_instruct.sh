#!/usr/bin/env bash
# ReSearch (Chen et al., 2025) on OpenRLHF 0.11.2: Qwen2.5-7B-Instruct, GRPO (group_norm) on MuSiQue, lr 1e-6,
# 256 questions x 5 samples per step, low-variance KL loss 0.001 (k3), 8192 response tokens, top-5 retrieval,
# 2 epochs; reward = F1 of the \boxed{} answer, 0.1 for a right format with F1 0, 0 otherwise (scheme research,
# with its code's EOS, think-block and last-box rules).
# Sized for 8 x 80 GB GPUs (one node): actor, reference and 4 vLLM engines (TP 2) colocated, with sleep mode.
#
# Data (the same rows the verl recipe reads):
#   research-plugin prepare musique --input musique_ans_v1.0_train.jsonl --split train --dialect research \
#       --template instruct --out data/research/musique_train.parquet
# Run:
#   RETRIEVER=http://10.0.0.5:8000/retrieve bash "$(research-plugin recipes dir)"/research_qwen2.5_7b_instruct.sh
set -euo pipefail
source "$(dirname "$0")/launch.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
DATA=${DATA:-$PWD/data/research/musique_train.parquet}
RETRIEVER=${RETRIEVER:-http://127.0.0.1:8000/retrieve}
SAVE=${SAVE:-$PWD/checkpoints/openrlhf/research_qwen2.5_7b_instruct}

AGENT_JSON=$(cat <<JSON
{"search_agent": {"dialect": "research", "retriever": "${RETRIEVER}", "top_k": 5, "max_searches": 8},
 "reward": {"scheme": "research"}}
JSON
)

ARGS=(
  --actor.model_name_or_path "${MODEL}"
  "${ONE_NODE_8_GPUS[@]}"
  --data.prompt_dataset "${DATA}" --data.input_key input --data.label_key label --data.apply_chat_template
  --data.max_len 10240 --rollout.max_new_tokens 8192
  --algo.advantage.estimator group_norm --rollout.n_samples_per_prompt 5
  --rollout.batch_size 256 --train.batch_size 1280 --rollout.micro_batch_size 4 --train.micro_batch_size 1
  --rollout.temperature 1.0 --actor.adam.lr 1e-6
  "${KL_LOSS_0_001[@]}"
  "${DEEPSPEED_ZERO3[@]}"
  --train.num_episodes 2 --ckpt.save_steps 50 --ckpt.save_hf --ckpt.output_dir "${SAVE}" --ckpt.path "${SAVE}/ckpt"
)
launch "$@"
