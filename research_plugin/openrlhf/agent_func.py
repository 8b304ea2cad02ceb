"""The file to pass to OpenRLHF as ``--train.agent_func_path`` (``research-plugin openrlhf-agent-path`` prints its
path). OpenRLHF loads it by path and builds ``AgentExecutor()`` in every rollout actor; the executor lives in
:mod:`research_plugin.openrlhf.agent`, configured from the environment (see there)."""

from research_plugin.openrlhf.agent import AgentExecutor

__all__ = ["AgentExecutor"]
