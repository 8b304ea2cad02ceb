#!/usr/bin/env bash
# Search-R1 (Jin et al., 2025) on OpenRLHF 0.11.2: Qwen2.5-7B (base), GRPO (group_norm) on NQ + HotpotQA,
# lr 1e-6, 512 questions x 5 samples per step, KL loss 0.001 (k3), 4096 response tokens, top-3 retrieval; reward =
# exact match of the answer (scheme search_r1_em; search_r1_format is the v0.3 format-shaped reward).
# Sized for 8 x 80 GB GPUs (one node): actor, reference and 4 vLLM engines (TP 2) colocated, with sleep mode.
#
# Data (the same rows the verl recipe reads):
#   research-plugin prepare nq_hotpotqa --input nq=nq/train.jsonl --input hotpotqa=hotpotqa/train.jsonl \
#       --dialect search_r1 --template base --out data/search_r1/train.parquet
# Run:
#   RETRIEVER=http://10.0.0.5:8000/retrieve bash "$(research-plugin recipes dir)"/search_r1_like.sh
set -euo pipefail
source "$(dirname "$0")/launch.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-7B}
DATA=${DATA:-$PWD/data/search_r1/train.parquet}
RETRIEVER=${RETRIEVER:-http://127.0.0.1:8000/retrieve}
SAVE=${SAVE:-$PWD/checkpoints/openrlhf/search_r1_like}

AGENT_JSON=$(cat <<JSON
{"search_agent": {"dialect": "search_r1", "retriever": "${RETRIEVER}", "top_k": 3, "max_searches": 4},
 "reward": {"scheme": "search_r1_em"}}
JSON
)

ARGS=(
  --actor.model_name_or_path "${MODEL}"
  "${ONE_NODE_8_GPUS[@]}"
  --data.prompt_dataset "${DATA}" --data.input_key input --data.label_key label
  --data.max_len 5120 --rollout.max_new_tokens 4096
  --algo.advantage.estimator group_norm --rollout.n_samples_per_prompt 5
  --rollout.batch_size 512 --train.batch_size 2560 --rollout.micro_batch_size 4 --train.micro_batch_size 1
  --rollout.temperature 1.0 --actor.adam.lr 1e-6
  "${KL_LOSS_0_001[@]}"
  "${DEEPSPEED_ZERO3[@]}"
  --train.num_episodes 1 --ckpt.save_steps 50 --ckpt.save_hf --ckpt.output_dir "${SAVE}" --ckpt.path "${SAVE}/ckpt"
)
launch "$@"
