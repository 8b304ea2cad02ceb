#!/usr/bin/env bash
# R1-Searcher (Song et al., 2025) stage 1 on OpenRLHF 0.11.2, its host framework: Qwen2.5-7B (base) learns to call
# the retriever in the right format. REINFORCE++ with a baseline (reinforce_baseline), 16 samples per question,
# reward = 0.5 for searching + 0.5 for a well-formed answer (scheme r1_stage1; R1-Searcher's normalisation).
# Sized for 8 x 80 GB GPUs (one node): actor, reference and 4 vLLM engines (TP 2) colocated, with sleep mode.
#
# Data (the same rows the verl recipes read; prompts end with "Assistant: <think>" as R1-Searcher's):
#   research-plugin prepare r1_searcher --input hotpotqa=hotpot_train_v1.1.json \
#       --input 2wikimultihopqa=2wikimultihopqa/train.json --weight hotpotqa=1 --weight 2wikimultihopqa=1 \
#       --sample 8192 --seed 1 --dialect r1_searcher --template base --scheme r1_stage1 \
#       --out data/r1_searcher/stage1_train.parquet
# Retriever: `research-plugin serve --index indexes/wiki-dense --port 8000` on a reachable host.
# Run (after `ray start --head`; override any variable below from the environment, any flag after the script):
#   RETRIEVER=http://10.0.0.5:8000/retrieve bash "$(research-plugin recipes dir)"/r1_searcher_stage1.sh
set -euo pipefail
source "$(dirname "$0")/launch.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-7B}
DATA=${DATA:-$PWD/data/r1_searcher/stage1_train.parquet}
RETRIEVER=${RETRIEVER:-http://127.0.0.1:8000/retrieve}
SAVE=${SAVE:-$PWD/checkpoints/openrlhf/r1_searcher_stage1}

AGENT_JSON=$(cat <<JSON
{"search_agent": {"dialect": "r1_searcher", "retriever": "${RETRIEVER}", "top_k": 5, "max_searches": 8},
 "reward": {"scheme": "r1_stage1", "normalization": "r1_searcher", "answer_reward": false}}
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
