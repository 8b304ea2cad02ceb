#!/usr/bin/env python
"""Rollout at the scale users run: thousands of concurrent search trajectories through verl's own rollout path.

Each measured rollout is one ``AgentLoopManager.generate_sequences`` of verl 0.9.1 — its agent-loop workers (Ray
actors), its load balancer and server client, our ``search_agent`` loop, verl's reward loop workers — with every
search sent over HTTP to a ``research-plugin serve`` process. What generates:

- ``--engine sim`` (default): the plugin's ``sim`` rollout backend, one replica per simulated GPU
  (``--replicas``): scripted search-agent text (2-4 searches, log-normal call lengths) returned after the time a
  vLLM engine would take for a 7-8B model on one H100 (``research_plugin.simulation.gpu_timing``: continuous
  batching, calibrated from a published vLLM figure); the server answers from a backend of set latency
  (``--retrieval-latency``, default the dense backend measured on an H200: 66.8 ms + 0.807 ms a query). From the
  calls each replica served it computes two references on the same schedule: the **ideal** (searches answered
  instantly, agent free) and **synchronous turns** (every trajectory waits for the whole batch's turn and its
  searches, Search-R1's loop).
- ``--engine vllm_cpu``: verl's vLLM rollout on vLLM's CPU build with the shipped tiny policy, searching BM25 over
  the fact world's corpus: the real thing at this size on this machine (no GPU timing).

Per size it records the rollout's wall time, searches, failed searches, the retrieval server's batches, the agent
loop's own CPU per search (``agent_cpu_s``: our code between awaits) and the agent-loop worker processes' whole CPU
(verl, Ray, HTTP, ours) and peak memory. JSON + PNG in ``--out-dir``; every size is written as it finishes.

    python bench/rollout_scale.py                          # sim: 80, 320, 1280, 5120 trajectories (~8 min)
    python bench/rollout_scale.py --engine vllm_cpu --sizes 1280 5120
    python bench/rollout_scale.py --quick                  # smoke run (the suite's): small sizes, time scaled down
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SAMPLES = 5
"""Samples per prompt (ReSearch's GRPO group): a size of 1,280 is 256 prompts x 5."""
GPU_BOX_LATENCY = (66.8, 0.807)
TARGETS = {"max_wall_over_ideal": 1.10, "min_sync_over_wall": 1.5, "max_agent_cpu_fraction": 0.02}


# --------------------------------------------------------------------------------------------------------------
# the retrieval server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: str, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "research_plugin.cli", "serve", "--index", index, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"research-plugin serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("research-plugin serve did not answer /health in 60 s")


def server_metrics(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/metrics", timeout=10).read())


# --------------------------------------------------------------------------------------------------------------
# verl


def rollout_config(args, url: str):
    from research_plugin.demo.assets import demo_model
    from research_plugin.verl.local_rollout import compose_verl_config

    engine = [
        "actor_rollout_ref.rollout.name=sim",
        f"actor_rollout_ref.rollout.n_gpus_per_node={args.replicas}",
        f"actor_rollout_ref.rollout.max_num_seqs={args.max_num_seqs}",
        "actor_rollout_ref.rollout.full_determinism=True",  # the sim tells trajectories apart by verl's stable ids
        *[f"+actor_rollout_ref.rollout.engine_kwargs.sim.{k}={v}" for k, v in args.sim_kwargs.items()],
    ] if args.engine == "sim" else [
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.n_gpus_per_node=1",
        "actor_rollout_ref.rollout.dtype=float32",
        "+actor_rollout_ref.rollout.enable_sleep_mode=False",
        "actor_rollout_ref.rollout.load_format=auto",  # standalone: the policy's weights, not the trainer's sync
        f"actor_rollout_ref.rollout.max_num_seqs={args.max_num_seqs}",
        "+actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls="
        "research_plugin.verl.vllm_cpu_worker.CPUWorkerExtension",
    ]  # fmt: skip
    return compose_verl_config(
        [
            f"actor_rollout_ref.model.path={demo_model()}",
            "actor_rollout_ref.rollout.mode=async",
            "actor_rollout_ref.rollout.nnodes=1",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            f"actor_rollout_ref.rollout.prompt_length={args.prompt_length}",
            f"actor_rollout_ref.rollout.response_length={args.response_length}",
            "actor_rollout_ref.rollout.temperature=1.0",
            "actor_rollout_ref.rollout.calculate_log_probs=True",
            f"actor_rollout_ref.rollout.agent.num_workers={args.workers}",
            "actor_rollout_ref.rollout.agent.default_agent_loop=search_agent",
            *engine,
            f"reward.num_workers={args.reward_workers}",
            "reward.custom_reward_function.path=pkg://research_plugin",
            "reward.custom_reward_function.name=compute_score",
            "+reward.custom_reward_function.reward_kwargs.scheme=research",
            f"+search_agent.retriever={url}/retrieve",
            f"+search_agent.top_k={args.top_k}",
            f"+search_agent.max_searches={args.max_searches}",
            f"+search_agent.max_result_tokens={args.max_result_tokens}",
            f"+search_agent.search_timeout={args.search_timeout}",
        ]
    )


def sim_settings(args) -> dict[str, Any]:
    """The sim backend's settings: the default cost model, its times scaled by ``--time-scale``."""
    from research_plugin.simulation.gpu_timing import CostModel

    cost = dataclasses.asdict(CostModel(max_num_seqs=args.max_num_seqs))
    scaled = {k: v * args.time_scale if k.endswith("_ms") else v for k, v in cost.items()}
    return {**scaled, "seed": args.seed, "shared_queries": not args.own_queries}


def make_batch(trajectories: int, questions: list[dict], rollout: int):
    """``trajectories / SAMPLES`` prompts, each repeated ``SAMPLES`` times next to each other, as verl's trainer
    hands a GRPO batch to the rollout. Every prompt of every rollout is new (as in a training epoch): the questions
    are numbered, so no search is answered from the retrieval server's cache of an earlier rollout."""
    from research_plugin.verl.local_rollout import make_batch as one_each

    prompts = max(1, trajectories // SAMPLES)
    rows = [{**q, "question": f"{q['question']} (#{rollout}.{i})"}
            for i, q in ((i, questions[i % len(questions)]) for i in range(prompts))]  # fmt: skip
    return one_each(rows, "research").repeat(repeat_times=trajectories // prompts, interleave=True)


class ProcessWatch:
    """CPU seconds and peak resident memory of some processes, sampled every ``period`` seconds."""

    def __init__(self, pids: list[int], period: float = 0.2) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.period = period
        self.peak_rss = [0] * len(pids)
        self._cpu0 = [self._cpu(p) for p in self.procs]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _cpu(p) -> float:
        t = p.cpu_times()
        return t.user + t.system + getattr(t, "children_user", 0) + getattr(t, "children_system", 0)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for i, p in enumerate(self.procs):
                self.peak_rss[i] = max(self.peak_rss[i], p.memory_info().rss)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        cpu = [self._cpu(p) - c0 for p, c0 in zip(self.procs, self._cpu0)]
        return {"cpu_s": round(sum(cpu), 3), "peak_rss_mib_max": round(max(self.peak_rss) / 2**20, 1),
                "peak_rss_mib_sum": round(sum(self.peak_rss) / 2**20, 1)}  # fmt: skip


def pids_of(actors) -> list[int]:
    import ray

    return ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])


def references(stats: list[dict], cost, latency: tuple[float, float]) -> dict:
    """The ideal and synchronous-turns times of the calls the replicas served."""
    from research_plugin.simulation.gpu_timing import ideal_makespan, synchronous_makespan

    replicas = [[turns for _, turns in sorted(s["trajectories"].items())] for s in stats]
    longest = max((len(t) for r in replicas for t in r), default=0)
    searches = [sum(1 for r in replicas for t in r if len(t) > k + 1) for k in range(longest)]
    fixed, per_query = latency
    return {
        "ideal_s": max((ideal_makespan(r, cost) for r in replicas), default=0.0),
        "sync_s": synchronous_makespan(replicas, cost, [(fixed + per_query * n) / 1000.0 for n in searches]),
    }


def measure(args, manager, servers, watch_pids, questions, size: int, url: str, rollout: int) -> dict:
    import numpy as np
    import ray

    if servers:
        ray.get([s.reset.remote() for s in servers])
    batch = make_batch(size, questions, rollout)
    before = server_metrics(url)
    watch = ProcessWatch(watch_pids["agent_loop_workers"])
    others = ProcessWatch(watch_pids["others"])
    start = time.monotonic()
    out = manager.generate_sequences(batch)
    end = time.monotonic()
    wall = end - start
    workers, rest = watch.stop(), others.stop()
    after = server_metrics(url)
    nt = out.non_tensor_batch
    searches = int(np.sum(nt["num_searches"]))
    calls = int(np.sum(nt["__num_turns__"]) - len(out) - searches)  # num_turns = 1 + generations + results
    agent_cpu = float(np.sum(nt["agent_cpu_s"]))
    batches = after["batches"]["count"] - before["batches"]["count"]
    queries = after["batches"]["queries"] - before["batches"]["queries"]
    result: dict[str, Any] = {
        "trajectories": len(out),
        "wall_s": round(wall, 2),
        "searches": searches,
        "failed_searches": int(np.sum(nt["num_failed_searches"])),
        "invalid_queries": int(np.sum(nt["num_invalid_queries"])),
        "generation_calls": calls,
        "masked_equals_retrieved": bool(
            int((out.batch["response_mask"] == 0).logical_and(out.batch["attention_mask"][:, -args.response_length:]
                                                              == 1).sum()) == int(np.sum(nt["retrieved_tokens"]))
        ),  # fmt: skip
        "server": {
            "batches": batches,
            "queries": queries,
            "mean_batch": round(queries / batches, 2) if batches else 0.0,
            "max_batch": after["batches"]["max_size"],
            "rejected_429": after["rejected_429"] - before["rejected_429"],
            "cache_hits": after["cache"]["hits"] - before["cache"]["hits"],
            "joined_in_flight": after["cache"]["joined_in_flight"] - before["cache"]["joined_in_flight"],
            "latency_ms_p50": after["latency_ms"].get("p50"),
            "latency_ms_p99": after["latency_ms"].get("p99"),
        },
        "agent_cpu_s": round(agent_cpu, 3),
        "agent_cpu_ms_per_search": round(1000 * agent_cpu / max(1, searches), 3),
        # of the rollout's wall time (the sim's at its simulated GPU's own speed)
        "agent_cpu_fraction": round(agent_cpu / (wall / args.time_scale), 4),
        "agent_loop_workers": {**workers, "cpu_ms_per_search": round(1000 * workers["cpu_s"] / max(1, searches), 2)},
        "other_processes": rest,
        "timing": {k: round(float(v), 3) for k, v in out.meta_info.get("timing", {}).items()
                   if k.startswith("agent_loop/generate_sequences") or k.startswith("agent_loop/tool_calls")},
    }  # fmt: skip
    if servers:
        from research_plugin.verl.sim_rollout import SimSettings

        stats = ray.get([s.stats.remote() for s in servers])
        cost = SimSettings.from_mapping(args.sim_kwargs).cost
        ref = references(stats, cost, (GPU_BOX_LATENCY[0] * args.time_scale, GPU_BOX_LATENCY[1] * args.time_scale))
        result.update(
            ideal_s=round(ref["ideal_s"], 2),
            sync_s=round(ref["sync_s"], 2),
            engine_busy=[round(s["busy_s"] / wall, 3) for s in stats],
            engine_max_running=[s["max_running"] for s in stats],
            # before the first call reached an engine (verl ships the batch to its workers, which make an agent
            # loop and a prompt per trajectory) and after the last was answered (verl pads and gathers the batch)
            lead_in_s=round(min(s["first_arrival"] for s in stats) - start, 2),
            tail_s=round(end - max(s["last_finish"] for s in stats), 2),
        )
        result.update(ratios(result))
    return result


def ratios(r: dict) -> dict:
    """The rollout against its references. The batch's preparation and collection around the engines' work
    (``lead_in_s + tail_s``, verl's, the same whatever the schedule) belongs to every step, so it is added to both
    references; ``span_over_ideal`` compares the engines' span alone."""
    around = r["lead_in_s"] + r["tail_s"]
    return {
        "wall_over_ideal": round(r["wall_s"] / (r["ideal_s"] + around), 3),
        "sync_over_wall": round((r["sync_s"] + around) / r["wall_s"], 3),
        "span_over_ideal": round((r["wall_s"] - around) / r["ideal_s"], 3),
    }


def verdict(sizes: dict[str, dict]) -> dict:
    """The issue's targets at 1,280 trajectories (or the largest size below), and flatness across sizes."""
    ok = {}
    runs = [r for r in sizes.values() if "ideal_s" in r]
    if not runs:
        return ok
    main = max((r for r in runs if r["trajectories"] <= 1280), key=lambda r: r["trajectories"], default=runs[0])
    ok["at"] = main["trajectories"]
    ok["wall_over_ideal"] = main["wall_over_ideal"] <= TARGETS["max_wall_over_ideal"]
    ok["sync_over_wall"] = main["sync_over_wall"] >= TARGETS["min_sync_over_wall"]
    ok["agent_cpu_fraction"] = all(r["agent_cpu_fraction"] <= TARGETS["max_agent_cpu_fraction"] for r in runs)
    ok["no_failed_searches"] = all(r["failed_searches"] == 0 for r in sizes.values())
    over_ideal = [r["wall_over_ideal"] for r in runs]
    per_search = [r["agent_cpu_ms_per_search"] for r in runs]
    ok["flat_wall_over_ideal"] = max(over_ideal) <= TARGETS["max_wall_over_ideal"]
    ok["flat_cpu_per_search"] = max(per_search) <= 2 * min(per_search)
    return ok


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    runs = sorted(result["sizes"].values(), key=lambda r: r["trajectories"])
    xs = [r["trajectories"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if all("ideal_s" in r for r in runs):
        ax1.plot(xs, [r["wall_over_ideal"] for r in runs], marker="o", label="measured / ideal")
        ax1.plot(xs, [r["sync_over_wall"] * r["wall_over_ideal"] for r in runs], marker="s", ls="--",
                 label="synchronous turns / ideal")  # fmt: skip
        ax1.axhline(TARGETS["max_wall_over_ideal"], color="grey", lw=0.8, ls=":", label="target 1.10")
        ax1.set_ylabel("rollout wall time / ideal")
    else:
        ax1.plot(xs, [r["wall_s"] / r["trajectories"] for r in runs], marker="o", label="wall s / trajectory")
        ax1.set_ylabel("seconds per trajectory")
    ax1.set_xscale("log")
    ax1.set_xlabel("trajectories in the rollout")
    ax1.legend(fontsize="small")
    ax2.plot(xs, [r["agent_cpu_ms_per_search"] for r in runs], marker="o", label="agent loop's own code")
    ax2.plot(xs, [r["agent_loop_workers"]["cpu_ms_per_search"] for r in runs], marker="s",
             label="agent-loop worker processes (verl, Ray, HTTP, ours)")  # fmt: skip
    ax2.set_xscale("log")
    ax2.set_xlabel("trajectories in the rollout")
    ax2.set_ylabel("CPU ms per search")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize="small")
    fig.suptitle(f"{result['engine']} rollout, {result.get('replicas', 1)} replica(s), {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sim", "vllm_cpu"), default="sim")
    parser.add_argument("--sizes", type=int, nargs="+", help="trajectories per rollout (default 80 320 1280 5120)")
    parser.add_argument("--replicas", type=int, default=8, help="sim: simulated GPUs, one engine each")
    parser.add_argument("--workers", type=int, default=8, help="verl agent-loop workers (verl's default: 8)")
    parser.add_argument("--reward-workers", type=int, default=2)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--prompt-length", type=int, default=512)
    parser.add_argument("--response-length", type=int, default=8192)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--max-searches", type=int, default=4)
    parser.add_argument("--max-result-tokens", type=int, default=700)
    parser.add_argument("--search-timeout", type=float, default=60.0)
    parser.add_argument("--passage-words", type=int, default=35,
                        help="sim: words a made-up passage has (~120 tokens of the tiny tokenizer, a wiki-18 "
                        "passage in Qwen's)")  # fmt: skip
    parser.add_argument("--own-queries", action="store_true",
                        help="sim: each trajectory asks its own queries (default: as its prompt's others)")  # fmt: skip
    parser.add_argument("--time-scale", type=float, default=3.0,
                        help="sim: multiply every simulated time (default 3: this 2-core machine then has 0.75 core "
                        "per simulated GPU, a GPU node 10-20)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-args", default="", help="extra `research-plugin serve` flags")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 20 and 60, 2 replicas, time x0.25")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--replot", type=Path, help="judge and plot a results file again, measure nothing")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.replot:
        result = json.loads(args.replot.read_text())
        for r in result["sizes"].values():
            r.update(ratios(r) if "ideal_s" in r else {})
        result["verdict"] = verdict(result["sizes"])
        args.replot.write_text(json.dumps(result, indent=1) + "\n")
        plot(result, args.replot.with_suffix(".png"))
        print(json.dumps(result["verdict"]))
        return 0
    if args.quick:
        args.sizes = args.sizes or [20, 60]
        args.replicas, args.workers, args.reward_workers, args.time_scale = 2, 2, 1, 0.25
        args.tag = args.tag or "quick"
    if args.engine != "sim":
        args.time_scale = 1.0  # a real engine's own time
    args.sizes = args.sizes or [80, 320, 1280, 5120]
    for size in args.sizes:  # verl's manager splits the batch evenly over its workers
        if size % (SAMPLES * args.workers):
            parser.error(f"--sizes: {size} is not a multiple of {SAMPLES} samples x {args.workers} workers")
    args.sim_kwargs = sim_settings(args)

    os.environ.setdefault("VERL_PLATFORM", "cpu")  # what the Ray workers get too: verl finds no accelerator here
    import ray

    from research_plugin.demo.fact_world import bundled_world, question_rows

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"rollout-scale-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    if args.engine == "sim":
        fixed, per_query = (x * args.time_scale for x in GPU_BOX_LATENCY)
        index = json.dumps({"type": "latency", "stages": [[fixed, per_query]], "words": args.passage_words})
    else:
        from research_plugin.demo.assets import fact_world

        index = fact_world("corpus")
    server, url = start_server(index, work / "serve.log", args.server_args.split())
    name = f"rollout-scale-{args.engine}" + (f"-{args.tag}" if args.tag else "")
    out = args.out_dir / f"{name}.json"
    result: dict[str, Any] = {
        "engine": args.engine, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "replicas": args.replicas if args.engine == "sim" else 1, "agent_loop_workers": args.workers,
        "retriever": index, "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir",)},
        "targets": TARGETS, "sizes": {},
    }  # fmt: skip
    try:
        ray.init(
            num_cpus=max(16, 2 * args.workers + args.replicas + 4),
            num_gpus=args.replicas if args.engine == "sim" else 1,
            runtime_env={"env_vars": {"VERL_PLATFORM": "cpu", "TQ_NUM_THREADS": "2", "VLLM_CPU_KVCACHE_SPACE": "2"}},
            include_dashboard=False,
            log_to_driver=False,
        )
        from verl.experimental.agent_loop import AgentLoopManager
        from verl.experimental.reward_loop import RewardLoopManager
        from verl.workers.rollout.llm_server import LLMServerManager

        config = rollout_config(args, url)
        print(f"starting {args.engine} servers, reward and agent-loop workers ...", file=sys.stderr, flush=True)
        servers_manager = LLMServerManager.create(config=config)
        rewards = RewardLoopManager(config)
        manager = AgentLoopManager.create(
            config=config, llm_client=servers_manager.get_client(),
            reward_loop_worker_handles=rewards.reward_loop_worker_handles,
        )  # fmt: skip
        servers = [r._server_handle for r in servers_manager.get_replicas()] if args.engine == "sim" else []
        pids = {"agent_loop_workers": pids_of(manager.agent_loop_workers),
                "others": pids_of(rewards.reward_loop_worker_handles) + pids_of(
                    [r._server_handle for r in servers_manager.get_replicas()]) + [server.pid]}  # fmt: skip
        questions = question_rows(bundled_world())
        measure(args, manager, servers, pids, questions, min(args.sizes), url, 0)  # warm-up: imports, connections
        for rollout, size in enumerate(args.sizes, 1):
            print(f"rollout of {size} trajectories ...", file=sys.stderr, flush=True)
            r = measure(args, manager, servers, pids, questions, size, url, rollout)
            result["sizes"][str(size)] = r
            line = {k: r.get(k) for k in ("wall_s", "ideal_s", "sync_s", "searches", "failed_searches",
                                          "agent_cpu_ms_per_search")}  # fmt: skip
            print(f"  {line}", file=sys.stderr, flush=True)
            result["verdict"] = verdict(result["sizes"])
            args.out_dir.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
            plot(result, out.with_suffix(".png"))
    finally:
        server.terminate()
        server.wait(timeout=30)
        ray.shutdown()
    print(json.dumps(result["verdict"]))
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out} (+ .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
