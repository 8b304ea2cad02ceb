"""``research-plugin openrlhf-agent-path``: print the path of the agent file for OpenRLHF's
``--train.agent_func_path``."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "openrlhf-agent-path",
        help="print the agent file for OpenRLHF's --train.agent_func_path",
        description="Prints the path of the search agent's file for OpenRLHF 0.11 (--train.agent_func_path). It is "
        "configured from RESEARCH_PLUGIN_AGENT_CONFIG (a YAML/JSON file) or RESEARCH_PLUGIN_AGENT_JSON.",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the path of the agent file for OpenRLHF's ``--train.agent_func_path``."""
    from pathlib import Path

    print(Path(__file__).resolve().parents[1] / "openrlhf" / "agent_func.py")
    return 0
