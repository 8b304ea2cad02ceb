"""``research-plugin eval`` end to end: load rows, roll out the ones not done yet (resumable), judge, summarise.

Outputs in ``out``: ``rows.jsonl`` (per row: question, gold answers, prediction, full trajectory, metrics),
``summary.json`` (per-benchmark means and the run's settings), ``results.md`` (the papers' table) and
``run.json`` (the settings a rerun must match to reuse ``rows.jsonl``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..core.answer_metrics import NORMALIZATIONS
from ..core.rewards import OPTION_NAMES
from ..verl.run_settings import AGENT_SETTINGS
from .data import EvalRow, load_rows
from .judge import JudgeItem, LLMJudge
from .metrics import aggregate, answer_scores, macro_average, markdown_table, read_as_reward, reward_retrieval_hit
from .metrics import retrieval_recall as recall_of
from .protocols import JUDGE_PROMPTS, PROTOCOLS, protocol_for_scheme
from .store import RowStore

RUN_IDENTITY = (
    "model",
    "retriever",
    "served_model",
    "prompt_as",
    "dialect",
    "scheme",
    "reward_options",
    "top_k",
    "max_searches",
    "max_result_tokens",
    "prompt_format",
    "prompt_length",
    "response_length",
    "temperature",
    "top_p",
    "top_k_sampling",
    "protocol",
    "normalization",
)
"""Settings that shape a row's result: a rerun into the same ``out`` must have the same ones."""

RUN_SETTINGS = ("dialect", "scheme", "reward_options", *AGENT_SETTINGS, "retriever", "prompt_length", "response_length")
"""Settings that a training run's folder supplies when the command line does not (:func:`with_run`)."""


def eval_defaults() -> dict[str, Any]:
    """The value of each of :data:`RUN_SETTINGS` that neither the command line nor a run gives: the agent loop's
    own defaults (``SearchAgentConfig``) for the search agent."""
    from research_plugin.core.search_step import SearchAgentConfig

    return {
        "dialect": "research",
        "scheme": "research",
        "reward_options": {},
        **{name: getattr(SearchAgentConfig, name) for name in AGENT_SETTINGS},
        "retriever": "two_hop",
        "prompt_length": 2048,
        "response_length": 8192,
    }


@dataclass
class EvalSettings:
    data: Sequence[str]
    model: str
    """An ``http(s)://`` OpenAI-compatible completions endpoint or a local HF model folder."""
    retriever: Any
    """A retriever spec (``research_plugin.retrieval``); ``None``: the run's (:func:`with_run`), else ``two_hop``."""
    out: str
    tokenizer: str | None = None
    served_model: str | None = None
    prompt_as: str = "ids"
    policy_key_env: str | None = None
    dialect: str | None = None
    """The dialect of rows whose ``extra_info`` names none."""
    scheme: str | None = None
    """Reward scheme of the ``reward`` column (the training reward); EM/F1/cover-EM do not depend on it."""
    reward_options: dict[str, Any] | None = None
    """The reward function's other keyword arguments (``reward_kwargs`` of a verl run)."""
    top_k: int | None = None
    max_searches: int | None = None
    max_result_tokens: int | None = None
    search_timeout: float | None = None
    prompt_format: str | None = None
    """The search agent's settings."""
    prompt_length: int | None = None
    response_length: int | None = None
    """Each of :data:`RUN_SETTINGS` left ``None`` is the run's when ``model`` is a training run's folder that
    recorded its settings (:func:`with_run`), else :func:`eval_defaults`'."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k_sampling: int = -1
    concurrency: int = 8
    protocol: str | None = None
    """The paper whose metrics, names and judge prompt to report (``research``, ``r1_searcher``, ``search_r1``);
    ``None``: the paper of ``scheme``."""
    normalization: str | None = None
    """Answer normalisation of every metric; ``None``: the protocol's."""
    judge_prompt: str | None = None
    """The LLM judge's prompt (:data:`~.protocols.JUDGE_PROMPTS`); ``None``: the protocol's."""
    limit: int | None = None
    """Evaluate the first ``limit`` rows of each file."""
    judge_endpoint: str | None = None
    judge_model: str | None = None
    judge_key_env: str = "OPENAI_API_KEY"
    judge_cache: str | None = None
    request_timeout: float = 600.0
    max_retries: int = 3
    seed: int = 0
    progress: bool = True

    def with_defaults(self) -> EvalSettings:
        """A copy whose unset settings hold their defaults: :func:`eval_defaults`, the protocol's for normalisation
        and judge prompt."""
        unset = {name: value for name, value in eval_defaults().items() if getattr(self, name) is None}
        filled = replace(self, **unset)
        if filled.protocol is not None and filled.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, not {filled.protocol!r}")
        protocol = PROTOCOLS[filled.protocol] if filled.protocol else protocol_for_scheme(filled.scheme)
        return replace(
            filled,
            protocol=protocol.name,
            normalization=filled.normalization or protocol.normalization,
            judge_prompt=filled.judge_prompt or protocol.judge_prompt,
        )

    def run_identity(self) -> dict[str, Any]:
        settings = asdict(self.with_defaults())
        return {k: settings[k] for k in RUN_IDENTITY}


def with_run(settings: EvalSettings) -> tuple[EvalSettings, str]:
    """``settings`` with each of :data:`RUN_SETTINGS` that the command line left unset taken from the training run
    ``settings.model`` comes from (:mod:`research_plugin.verl.run_settings`), else from :func:`eval_defaults`; and
    lines saying which came from where."""
    from research_plugin.verl.run_settings import resolve

    given = {name: getattr(settings, name) for name in RUN_SETTINGS}
    values, sources = resolve(settings.model, RUN_SETTINGS, given, eval_defaults())
    return replace(settings, **values), sources


def _check_resume(out: Path, identity: dict[str, Any]) -> None:
    """Record the run's settings in ``out/run.json``; refuse to mix rows made with other settings."""
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{out} holds results made with other settings ({diff}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def row_record(
    row: EvalRow, traj, normalization: str, scheme: str = "research", reward_options: dict | None = None
) -> dict[str, Any]:
    """The per-row result: what was asked, what the policy did and answered, and its metrics; the answer and the
    format as ``scheme``'s reward (with ``reward_options``) reads them."""
    prediction, report = read_as_reward(
        traj.response,
        traj.dialect,
        scheme,
        opens_think=bool(row.extra_info.get("opens_think")),
        ended_by_eos=traj.ended_by_eos,
        **(reward_options or {}),
    )
    format_ok, format_error = report.ok, report.reason
    return {
        "key": row.key,
        "data_source": row.data_source,
        "id": row.extra_info.get("id"),
        "question": row.question,
        "gold": row.golds,
        "prediction": prediction,
        "dialect": traj.dialect,
        "trajectory": traj.response,
        "format_error": format_error,
        "ended_by_eos": traj.ended_by_eos,
        "metrics": {
            **answer_scores(prediction, row.golds, normalization),
            "lj": None,
            "reward": traj.reward,
            "format": float(format_ok),
            "num_searches": traj.num_searches,
            "num_failed_searches": traj.num_failed_searches,
            "num_invalid_queries": traj.num_invalid_queries,
            "retrieval_recall": recall_of(traj.retrieved, row.golds, normalization),
            "retrieval_hit": reward_retrieval_hit(traj.response, traj.dialect, row.golds, normalization),
            "response_tokens": traj.response_tokens,
            "generated_tokens": traj.generated_tokens,
            "retrieved_tokens": traj.retrieved_tokens,
        },
    }


def _roll_out(
    settings: EvalSettings, rows: list[EvalRow], store: RowStore, done: dict, normalization: str, resumed: int
) -> list[str]:
    """Roll out ``rows``, appending each finished one to ``store`` and ``done``; return the failures."""
    from .policy import load_policy
    from .rollout import eval_config, run_rollouts

    policy = load_policy(
        settings.model,
        tokenizer=settings.tokenizer,
        served_model=settings.served_model,
        prompt_as=settings.prompt_as,
        api_key_env=settings.policy_key_env,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        seed=settings.seed,
    )
    config = eval_config(
        policy.model_dir,
        search_agent={
            "dialect": settings.dialect,
            **{name: getattr(settings, name) for name in AGENT_SETTINGS},
            "retriever": settings.retriever,
        },
        response_length=settings.response_length,
        prompt_length=settings.prompt_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k_sampling,
        scheme=settings.scheme,
        reward_options=settings.reward_options,
    )
    print(f"eval: {len(rows)} rows to roll out with {policy.description}, concurrency {settings.concurrency}")
    # how the reward reads answer and format; its other keyword arguments (dialect, eos_token) act in the reward
    answer_options = {k: v for k, v in settings.reward_options.items() if k in OPTION_NAMES}
    failures: list[str] = []
    bar = tqdm(total=resumed + len(rows), initial=resumed, desc="eval", unit="q", disable=not settings.progress)

    def on_done(row: EvalRow, traj, error: str | None) -> None:
        if traj is None:
            failures.append(f"{row.key}: {error}")
        else:
            record = row_record(row, traj, normalization, settings.scheme, answer_options)
            store.append(record)
            done[row.key] = record
        bar.update(1)

    try:
        run_rollouts(config, policy.server, rows, concurrency=settings.concurrency, on_done=on_done)
    finally:
        bar.close()
    return failures


def _judge(settings: EvalSettings, records: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Fill ``metrics.lj`` of rows that lack a verdict of this judge model; return the judge's part of the summary."""
    judge = LLMJudge(
        settings.judge_endpoint,
        settings.judge_model,
        cache_dir=settings.judge_cache or out / "judge_cache",
        api_key_env=settings.judge_key_env,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        concurrency=settings.concurrency,
        prompt=settings.judge_prompt,
    )
    judged_by = f"{judge.model} ({judge.prompt.name} prompt)"
    todo = [r for r in records if r["metrics"].get("lj") is None or r.get("judge_model") != judged_by]
    items = [JudgeItem(r["question"], r["gold"], r["prediction"]) for r in todo]
    verdicts = judge.judge_all(items, progress=settings.progress) if items else []
    for record, verdict in zip(todo, verdicts):
        record["metrics"]["lj"] = verdict.value
        record["judge_model"] = judged_by
        record["judge_error"] = verdict.error
    failures = [f"{r['key']}: {r['judge_error']}" for r in records if r.get("judge_error")]
    return {
        "endpoint": judge.url,
        "model": settings.judge_model,
        "prompt": judge.prompt.name,
        "asked": sum(1 for v in verdicts if v.source == "judge"),
        "from_cache": sum(1 for v in verdicts if v.source == "cache"),
        "no_answer": sum(1 for v in verdicts if v.source == "no answer"),
        "failures": len(failures),
        "first_failures": failures[:5],
    }


def _protocol_summary(settings: EvalSettings, per_source: dict[str, Any]) -> dict[str, Any]:
    """What two runs must share to be compared: the paper's metric definitions, retrieval, data subset, judge."""
    protocol = PROTOCOLS[settings.protocol].describe()
    protocol["normalization"] = settings.normalization
    return {
        **protocol,
        "retriever": settings.retriever,
        "top_k": settings.top_k,
        "max_searches": settings.max_searches,
        "subset": {
            "data": [os.fspath(p) for p in settings.data],
            "limit": settings.limit,
            "rows": {source: stats["rows"] for source, stats in per_source.items()},
        },
        "judge": {"model": settings.judge_model, "prompt": settings.judge_prompt} if settings.judge_model else None,
        "sampling": {"temperature": settings.temperature, "top_p": settings.top_p},
    }


def run_eval(settings: EvalSettings) -> dict[str, Any]:
    """Run (or finish) an evaluation; returns the summary written to ``out/summary.json``."""
    settings, sources = with_run(settings)
    settings = settings.with_defaults()
    print(f"eval: search, reward and length settings\n{sources}")
    if settings.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, not {settings.normalization!r}")
    if settings.judge_prompt not in JUDGE_PROMPTS:
        raise ValueError(f"judge prompt must be one of {sorted(JUDGE_PROMPTS)}, not {settings.judge_prompt!r}")
    if bool(settings.judge_endpoint) != bool(settings.judge_model):
        raise ValueError("the LLM judge needs both an endpoint and a model name")
    normalization = settings.normalization
    out = Path(settings.out)
    rows = load_rows(settings.data, settings.limit)
    _check_resume(out, settings.run_identity())
    store = RowStore(out / "rows.jsonl")
    done = store.load()
    for row in rows:
        kept = done.get(row.key)
        if kept is not None and kept.get("question") != row.question:
            raise ValueError(
                f"{store.path} has a different question for {row.key} ({kept.get('question')!r}): "
                "the data changed since that run; use another --out"
            )
    todo = [row for row in rows if row.key not in done]
    resumed = len(rows) - len(todo)
    if resumed:
        print(f"eval: {resumed} of {len(rows)} rows already done in {store.path}")
    failures = _roll_out(settings, todo, store, done, normalization, resumed) if todo else []

    records = [done[row.key] for row in rows if row.key in done]
    judge_summary = _judge(settings, records, out) if settings.judge_endpoint else None
    keys = {row.key for row in rows}
    others = [r for key, r in done.items() if key not in keys]  # rows of another --data or --limit
    store.rewrite([*records, *others])  # dataset order, judge verdicts included

    per_source = aggregate(records)
    summary = {
        "protocol": _protocol_summary(settings, per_source),
        "settings": {**settings.run_identity(), "data": [os.fspath(p) for p in settings.data], "limit": settings.limit},
        "rows": len(rows),
        "evaluated": len(records),
        "resumed": resumed,
        "new": len(records) - resumed,
        "failed": len(failures),
        "first_failures": failures[:5],
        "judge": judge_summary,
        "benchmarks": per_source,
        "average": macro_average(per_source) if per_source else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    table = markdown_table(per_source, settings.protocol) if per_source else "No rows evaluated.\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    print(table, end="")
    if failures:
        print(f"eval: {len(failures)} rows failed (rerun to retry them); first: {failures[0]}")
    return summary
