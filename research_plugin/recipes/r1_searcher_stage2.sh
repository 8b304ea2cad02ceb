#!/usr/bin/env bash
# R1-Searcher (Song et al., 2025) stage 2 on OpenRLHF 0.11.2: from stage 1's Hugging Face checkpoint, the policy
# learns to answer. REINFORCE++ with a baseline (reinforce_baseline), 16 samples per question, reward = answer F1
# minus 2 for a malformed response (scheme r1_stage2, R1-Searcher's normalisation, as its code).
# Sized for 8 x 80 GB GPUs (one node): actor, reference and 4 vLLM engines (TP 2) colocated, with sleep mode.
#
# Data: as stage 1, with --scheme r1_stage2 --out data/r1_searcher/stage2_train.parquet (R1-Searcher's stage 2
# used harder questions: its stage_2.jsonl, or --answerable-only MuSiQue-style filtering of your own).
# Run (MODEL = stage 1's Hugging Face copy):
#   MODEL=$PWD/checkpoints/openrlhf/r1_searcher_stage1 RETRIEVER=http://10.0.0.5:8000/retrieve \
#       bash "$(research-plugin recipes dir)"/r1_searcher_stage2.sh
set -euo pipefail
source "$(dirname "$0")/launch.sh"

MODEL=${MODEL:?"set MODEL to stage 1's Hugging Face checkpoint folder"}
DATA=${DATA:-$PWD/data/r1_searcher/stage2_train.parquet}
RETRIEVER=${RETRIEVER:-http://127.0.0.1:8000/retrieve}
SAVE=${SAVE:-$PWD/checkpoints/openrlhf/r1_searcher_stage2}

AGENT_JSON=$(cat <<JSON
{"search_agent": {"dialect": "r1_searcher", "retriever": "${RETRIEVER}", "top_k": 5, "max_searches": 8},
 "reward": {"scheme": "r1_stage2", "normalization": "r1_searcher", "metric": "f1", "format_penalty": 2.0}}
JSON
)

ARGS=(
  --actor.model_name_or_path "${MODEL}"
  "${ONE_NODE_8_GPUS[@]}"
  --data.prompt_dataset "${DATA}" --data.input_key input --data.label_key label
  --data.max_len 9216 --rollout.max_new_tokens 8192
  --algo.advantage.estimator reinforce_baseline --rollout.n_samples_per_prompt 16
  --rollout.batch_size 64 --train.batch_size 1024 --rollout.micro_batch_size 4 --train.micro_batch_size 1
  --rollout.temperature 1.0 --actor.adam.lr 2e-6
  "${KL_LOSS_0_001[@]}"
  "${DEEPSPEED_ZERO3[@]}"
  --train.num_episodes 1 --ckpt.save_steps 20 --ckpt.save_hf --ckpt.output_dir "${SAVE}" --ckpt.path "${SAVE}/ckpt"
)
launch "$@"
