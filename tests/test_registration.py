"""verl swallows plugin import errors: check in a fresh interpreter that ``import verl`` alone registers us."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

PROBE = """
import json, verl
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
import hydra.utils
entry = _agent_loop_registry.get("search_agent")
cls = hydra.utils.get_class(entry["_target_"]) if entry else None
print(json.dumps({"entry": entry, "cls": cls.__name__ if cls else None,
                  "base": [b.__name__ for b in cls.__mro__] if cls else []}))
"""


def probe(**env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_point_is_declared():
    eps = [ep for ep in entry_points(group="verl.plugins") if ep.name == "research_plugin"]
    assert [ep.value for ep in eps] == ["research_plugin.verl_plugin"]


def test_import_verl_registers_search_agent():
    got = probe(VERL_USE_EXTERNAL_PLUGINS="auto")
    assert got["entry"] == {"_target_": "research_plugin.agent_loop.SearchAgentLoop"}
    assert "AgentLoopBase" in got["base"]


def test_registration_comes_from_the_entry_point():
    assert probe(VERL_USE_EXTERNAL_PLUGINS="none")["entry"] is None
