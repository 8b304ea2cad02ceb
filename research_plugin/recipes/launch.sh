# Shared by the OpenRLHF recipes in this folder (sourced, not run): submits `python3 -m openrlhf.cli.train_ppo_ray`
# to a running Ray cluster with the search agent's settings in the job's environment.
#
# A recipe sets AGENT_JSON (the agent's settings: search_agent / reward / opens_think, see
# research_plugin/openrlhf/agent.py) and the array ARGS (OpenRLHF's flags), then calls `launch`.
# RAY_ADDRESS (default http://127.0.0.1:8265) names the cluster (`ray start --head` on the first node).
# Pinned to OpenRLHF 0.11.2: its flags are dotted since 0.10.2 and still change between patch releases.

# One node of 8 x 80 GB GPUs: actor, reference and 4 vLLM engines (tensor parallel 2) colocated, with sleep mode.
ONE_NODE_8_GPUS=(
  --actor.num_nodes 1 --actor.num_gpus_per_node 8 --ref.num_nodes 1 --ref.num_gpus_per_node 8
  --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --vllm.gpu_memory_utilization 0.6
  --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
)
DEEPSPEED_ZERO3=(--ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable)
# The papers' low-variance KL loss (k3) with coefficient 0.001
KL_LOSS_0_001=(--algo.kl.use_loss --algo.kl.estimator k3 --algo.kl.init_coef 0.001)

launch() {
  local agent runtime_env
  agent=$(research-plugin openrlhf-agent-path)
  runtime_env=$(AGENT_JSON="${AGENT_JSON}" python3 -c \
    'import json, os; print(json.dumps({"env_vars": {"RESEARCH_PLUGIN_AGENT_JSON": os.environ["AGENT_JSON"]}}))')
  ray job submit --address="${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env-json="${runtime_env}" \
    -- python3 -m openrlhf.cli.train_ppo_ray --train.agent_func_path "${agent}" "${ARGS[@]}" "$@"
}
