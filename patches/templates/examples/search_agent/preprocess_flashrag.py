"""FlashRAG-format jsonl questions -> verl parquet rows for the ``search_agent`` agent loop.

FlashRAG ships NQ, TriviaQA, PopQA, HotpotQA, 2WikiMultiHopQA, MuSiQue and Bamboogle in one jsonl format:
``{"id", "question", "golden_answers": [...]}`` per line. Each row gets the prompt of its dialect (chat messages
for instruct models; for base models the raw template as one user message, which the loop feeds as it is),
``reward_model.ground_truth`` (every golden answer), ``extra_info`` (``dialect``, ``template``, ...) and
``agent_name: search_agent``. Bad lines are skipped and reported with their line numbers.

    python examples/search_agent/preprocess_flashrag.py --input musique/train.jsonl --split train \
        --dialect research --template instruct --out ~/data/search_agent/musique_train.parquet
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from verl.experimental.agent_loop.search.prompts import base_prompt, chat_messages
from verl.utils.reward_score.search_agent.dialects import DIALECTS
from verl.utils.reward_score.search_agent.rewards import SCHEMES

TEMPLATES = ("instruct", "base")


def row(rec: dict, *, index: int, args: argparse.Namespace) -> dict:
    """One verl row for a FlashRAG record; ``ValueError`` when the record has no question or answer."""
    question, answers = rec.get("question"), rec.get("golden_answers")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("no 'question' string")
    if isinstance(answers, str):
        answers = [answers]
    golds = [a.strip() for a in answers if isinstance(a, str) and a.strip()] if isinstance(answers, list) else []
    if not golds:
        raise ValueError("no 'golden_answers' string or list of strings")
    if args.template == "instruct":
        prompt = chat_messages(question, args.dialect)
    else:
        prompt = [{"role": "user", "content": base_prompt(question, args.dialect)}]
    return {
        "data_source": args.data_source,
        "prompt": prompt,
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": golds},
        "extra_info": {
            "split": args.split,
            "index": index,
            "id": str(rec.get("id", index)),
            "question": question.strip(),
            "dialect": args.dialect,
            "scheme": args.scheme,
            "template": args.template,
        },
        "agent_name": "search_agent",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="FlashRAG jsonl file")
    parser.add_argument("--out", type=Path, required=True, help="parquet file to write")
    parser.add_argument("--data-source", help="the rows' data_source (default: the input's parent folder name)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--dialect", default="research", choices=sorted(DIALECTS))
    parser.add_argument("--scheme", default="research", choices=sorted(SCHEMES), help="recorded in extra_info")
    parser.add_argument("--template", default="instruct", choices=TEMPLATES)
    args = parser.parse_args()
    args.data_source = args.data_source or args.input.resolve().parent.name

    rows, bad = [], []
    with open(args.input, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                rows.append(row(rec, index=len(rows), args=args))
            except ValueError as e:
                bad.append(f"{args.input}:{line_no}: {e}")
    for message in bad[:20]:
        print(f"skipped {message}")
    if not rows:
        raise SystemExit(f"{args.input}: no usable rows ({len(bad)} bad)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, args.out)
    print(f"wrote {len(rows)} rows to {args.out} ({len(bad)} bad lines skipped)")


if __name__ == "__main__":
    main()
