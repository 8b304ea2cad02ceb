"""Dataset rows for the search agent, for verl and OpenRLHF alike, and the parquet file that holds them (written
atomically).

The prompt is built by :mod:`research_plugin.core.prompts`, the same functions the rest of the package uses:
``instruct`` rows carry chat messages (system rules + the question), ``base`` rows carry the raw base-model
template as the content of one user message (verl's dataset wants a message list) with
``extra_info.template = "base"``, which makes the agent loop feed that text to the model as it is.

OpenRLHF reads the same file through three more columns: ``input`` (``--data.input_key input``: the chat messages,
with ``--data.apply_chat_template``, or the raw text of a ``base`` row), ``label`` (``--data.label_key label``:
JSON with the gold answers and the row's settings, which the OpenRLHF agent reads) and ``datasource`` (its name for
``data_source``, used to split evaluation metrics).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.prompts import base_prompt, chat_messages
from .formats import QAExample

TEMPLATES = ("instruct", "base")
ABILITY = "fact-reasoning"
AGENT_NAME = "search_agent"

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def schema(template: str) -> pa.Schema:
    """The columns of a file of ``template`` rows (OpenRLHF's ``input`` is messages or text)."""
    return (
        SCHEMA.append(pa.field("input", MESSAGES if template == "instruct" else pa.string()))
        .append(pa.field("label", pa.string()))
        .append(pa.field("datasource", pa.string()))
    )


SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", MESSAGES),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.list_(pa.string()))])),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    ("index", pa.int64()),
                    ("id", pa.string()),
                    ("question", pa.string()),
                    ("dialect", pa.string()),
                    ("scheme", pa.string()),
                    ("template", pa.string()),
                    ("opens_think", pa.bool_()),
                ]
            ),
        ),
        ("agent_name", pa.string()),
    ]
)


def prompt_messages(question: str, dialect: str, template: str, opens_think: bool = False) -> list[dict[str, str]]:
    """The ``prompt`` column of one row (an ``instruct`` row opens the think block in the agent loop)."""
    if template == "instruct":
        return chat_messages(question, dialect)
    if template == "base":
        return [{"role": "user", "content": base_prompt(question, dialect, opens_think)}]
    raise ValueError(f"template must be one of {TEMPLATES}, not {template!r}")


def build_row(
    ex: QAExample,
    *,
    data_source: str,
    index: int,
    split: str,
    dialect: str,
    scheme: str,
    template: str,
    opens_think: bool = False,
) -> dict[str, Any]:
    """One row; ``ex.id`` must be set."""
    prompt = prompt_messages(ex.question, dialect, template, opens_think)
    label = {"answers": list(ex.answers), "data_source": data_source, "id": ex.id, "dialect": dialect}
    label |= {"scheme": scheme, "opens_think": opens_think}
    return {
        "data_source": data_source,
        "prompt": prompt,
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": list(ex.answers)},
        "extra_info": {
            "split": split,
            "index": index,
            "id": ex.id,
            "question": ex.question,
            "dialect": dialect,
            "scheme": scheme,
            "template": template,
            "opens_think": opens_think,
        },
        "agent_name": AGENT_NAME,
        "input": prompt if template == "instruct" else prompt[0]["content"],
        "label": json.dumps(label, ensure_ascii=False),
        "datasource": data_source,
    }


def write_parquet(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """Write ``rows`` to ``out`` through a temporary file in the same folder, renamed into place when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    template = rows[0]["extra_info"]["template"] if rows else "instruct"
    table = pa.Table.from_pylist(rows, schema=schema(template))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
