"""``research-plugin eval``: evaluate a search policy on prepared benchmark files: the papers' metrics (EM, F1,
ACC_R, sub-EM, LLM judge), searches, retrieval recall."""

from __future__ import annotations

import sys

from ..core.answer_metrics import NORMALIZATIONS
from ..core.dialects import DIALECTS
from ..core.rewards import SCHEMES
from ..core.search_step import PROMPT_FORMATS
from ..evaluation.protocols import JUDGE_PROMPTS, PROTOCOLS


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a search policy on prepared benchmark files (EM, F1, cover-EM, LLM judge)",
        description="Rolls every row out with the training agent loop (greedy by default) and writes rows.jsonl, "
        "summary.json and results.md into --out; a rerun into the same --out skips the rows already done.",
    )
    p.add_argument("--data", nargs="+", required=True, help="parquet files made by `research-plugin prepare`")
    p.add_argument(
        "--model",
        required=True,
        help="OpenAI-compatible completions endpoint (vLLM, SGLang), a local HF model folder, or a training run's "
        "checkpoint folder (its newest Hugging Face copy)",
    )
    p.add_argument(
        "--retriever",
        help="'two_hop', a /retrieve URL, a jsonl corpus or an index folder (default: the run's, else 'two_hop')",
    )
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--tokenizer", help="for an endpoint: local folder with the served model's config and tokenizer")
    p.add_argument("--served-model", help="for an endpoint: the model name to request (default: the first listed)")
    p.add_argument("--prompt-as", choices=["ids", "text"], default="ids", help="send prompts as token ids or text")
    p.add_argument("--api-key-env", help="environment variable holding the endpoint's API key, if it needs one")
    p.add_argument(
        "--dialect", choices=sorted(DIALECTS), help="for rows that name none (default: the run's, else research)"
    )
    p.add_argument(
        "--scheme",
        choices=sorted(SCHEMES),
        help="reward scheme of the reward column (default: the run's, else research)",
    )
    p.add_argument("--top-k", type=int, help="passages per search (default: the run's, else the search agent's)")
    p.add_argument("--max-searches", type=int, help="searches answered per question (default: the run's, else 8)")
    p.add_argument("--max-result-tokens", type=int, help="tokens per result block (default: the run's, else 512)")
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, help="prompt template (default: the run's, else auto)")
    p.add_argument(
        "--prompt-length", type=int, help="longer prompts are left-truncated (default: the run's, else 2048)"
    )
    p.add_argument(
        "--response-length", type=int, help="token budget of a whole trajectory (default: the run's, else 8192)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=8, help="rows (and judge requests) in flight at once")
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        help="the paper whose metrics (names, definitions) and judge prompt to report (default: --scheme's paper)",
    )
    p.add_argument("--normalization", choices=NORMALIZATIONS, help="answer normalisation (default: protocol's)")
    p.add_argument(
        "--judge-prompt",
        choices=sorted(JUDGE_PROMPTS),
        help="how the judge is asked (default: protocol's)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N rows of each file")
    p.add_argument("--judge-endpoint", help="OpenAI-compatible chat endpoint of the LLM judge (e.g. .../v1)")
    p.add_argument("--judge-model", help="model name of the LLM judge")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the judge's key")
    p.add_argument("--judge-cache", help="verdict cache folder (default: OUT/judge_cache)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per policy request")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a failed policy or judge request")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    """Evaluate a search policy on prepared benchmark files: the papers' metrics (EM, F1, ACC_R, sub-EM, LLM judge),
    searches, retrieval recall."""
    from ..evaluation.runner import EvalSettings, run_eval
    from ..retrieval import retriever_spec

    try:
        summary = run_eval(
            EvalSettings(
                data=args.data,
                model=args.model,
                retriever=retriever_spec(args.retriever) if args.retriever is not None else None,
                out=args.out,
                tokenizer=args.tokenizer,
                served_model=args.served_model,
                prompt_as=args.prompt_as,
                policy_key_env=args.api_key_env,
                dialect=args.dialect,
                scheme=args.scheme,
                top_k=args.top_k,
                max_searches=args.max_searches,
                max_result_tokens=args.max_result_tokens,
                prompt_format=args.prompt_format,
                prompt_length=args.prompt_length,
                response_length=args.response_length,
                temperature=args.temperature,
                top_p=args.top_p,
                concurrency=args.concurrency,
                protocol=args.protocol,
                normalization=args.normalization,
                judge_prompt=args.judge_prompt,
                limit=args.limit,
                judge_endpoint=args.judge_endpoint,
                judge_model=args.judge_model,
                judge_key_env=args.judge_key_env,
                judge_cache=args.judge_cache,
                request_timeout=args.timeout,
                max_retries=args.max_retries,
                seed=args.seed,
            )
        )
    except (OSError, ValueError) as e:
        print(f"eval: {e}", file=sys.stderr)
        return 2
    return 1 if summary["failed"] else 0
