#!/usr/bin/env bash
# Train a search agent with one of the configs in examples/search_agent/config/ (see the README next to this file):
#
#   bash examples/search_agent/run_search_agent.sh search_agent_quickstart [key=value overrides...]
#
# Hydra resolves a relative --config-path against verl's package, hence the absolute path.
set -xeuo pipefail

config_name=${1:?usage: run_search_agent.sh CONFIG_NAME [key=value overrides...]}
shift
config_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/config" && pwd)

python3 -m verl.trainer.main_ppo --config-path "$config_dir" --config-name "$config_name" "$@"
