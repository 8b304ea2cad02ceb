"""``sim`` rollout backend for verl: a GPU engine's timing without the GPU, for measuring a rollout at scale.

Registered like ``hf`` (``actor_rollout_ref.rollout.name=sim``), it runs the whole of verl's rollout path — the
agent-loop manager and workers, the load balancer, our agent loop, its searches over HTTP — but each replica's
server answers ``generate`` with scripted search-agent text (:mod:`research_plugin.simulation.scripted_agent`)
after the time a GPU engine would take: a continuous-batching scheduler over a clock
(:mod:`research_plugin.simulation.gpu_timing`), run in real time. The server records each trajectory's calls
(prompt tokens to prefill, tokens decoded), so the references a measured rollout is compared with — searches
answered instantly, or synchronous turns — are computed from the very schedule it ran.

Settings under ``actor_rollout_ref.rollout.engine_kwargs.sim`` (all optional): the cost model's
(``decode_base_ms``, ``decode_per_seq_ms``, ``prefill_per_token_ms``, ``max_num_seqs``), the script's
(``min_searches``, ``max_searches``, ``query_tokens``, ``answer_tokens``, ``spread``, ``max_call_tokens``), ``seed``,
``dialect`` and ``shared_queries`` (default true: the samples of one prompt ask the same queries, as a GRPO group's
largely do, so they get the same passages; false: every trajectory's queries are its own). Trajectories are told
apart by verl's stable request ids: the backend needs ``actor_rollout_ref.rollout.full_determinism=True``. Weights
from the trainer are accepted and dropped. A replica needs no device: ``init_standalone`` starts its server on the
driver's node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any

from verl.workers.rollout.replica import RolloutMode, TokenOutput

from ..core.settings import SettingsError, check_fields, check_keys, convert, plain
from ..simulation.gpu_timing import ContinuousBatcher, CostModel
from ..simulation.scripted_agent import ScriptedText, ScriptShape
from .hf_rollout import HFReplica, HFServerAdapter, ServerHooks

NAME = "sim"
WHERE = "actor_rollout_ref.rollout.engine_kwargs.sim"


@dataclass(frozen=True)
class SimSettings:
    cost: CostModel = field(default_factory=CostModel)
    shape: ScriptShape = field(default_factory=ScriptShape)
    seed: int = 0
    dialect: str = "research"
    shared_queries: bool = True

    @classmethod
    def from_mapping(cls, data: Any) -> SimSettings:
        data = dict(plain(data or {}))
        cost_keys = {f.name for f in dataclasses.fields(CostModel)}
        shape_keys = {f.name for f in dataclasses.fields(ScriptShape)}
        check_keys(data, cost_keys | shape_keys | {"seed", "dialect", "shared_queries"}, WHERE, "sim setting")
        pick = lambda keys: {k: v for k, v in data.items() if k in keys}  # noqa: E731
        try:
            cost = CostModel(**check_fields(CostModel, pick(cost_keys), WHERE, "sim setting"))
            shape = ScriptShape(**check_fields(ScriptShape, pick(shape_keys), WHERE, "sim setting"))
        except ValueError as e:
            raise SettingsError(f"{WHERE}: {e}") from None
        seed = convert(data.get("seed", 0), int, "seed", WHERE)
        shared = convert(data.get("shared_queries", True), bool, "shared_queries", WHERE)
        return cls(cost, shape, seed, str(data.get("dialect", "research")), shared)


@dataclass
class _Trajectory:
    calls: list[int]
    topic: int
    """What its queries ask about: its prompt (``shared_queries``), or its prompt and its own index."""
    turns: list[tuple[int, int]] = field(default_factory=list)
    """(prompt tokens prefilled, tokens decoded) per generation call, as served."""
    cached: int = 0
    """Tokens of this trajectory in the (simulated) prefix cache: what the next call need not prefill."""


class SimRolloutServer(ServerHooks):
    """One replica's simulated engine (a Ray actor; module docstring)."""

    def __init__(self, config, model_config, replica_rank: int = 0):
        from transformers import AutoTokenizer
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        if not getattr(config, "full_determinism", False):
            raise SettingsError(
                "the sim rollout backend tells trajectories apart by verl's stable request ids: "
                "set actor_rollout_ref.rollout.full_determinism=True"
            )
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        tokenizer = AutoTokenizer.from_pretrained(model_config.local_path)
        self.settings = SimSettings.from_mapping((config.engine_kwargs or {}).get(NAME))
        self.text = ScriptedText(tokenizer, self.settings.dialect)
        self.eos = tokenizer.eos_token_id
        self.replica_rank = replica_rank
        self.global_steps = 0
        self._engine: asyncio.Task | None = None  # the engine loop, started by the first call
        self._fresh()

    async def reset(self) -> None:
        """Forget the served trajectories and restart the engine's clock (between measured rollouts)."""
        if self._engine is not None:
            self._engine.cancel()
        self._fresh()

    def _fresh(self) -> None:
        self.batcher = ContinuousBatcher(self.settings.cost, now=time.monotonic())
        self.trajectories: dict[int, _Trajectory] = {}
        self.first_arrival: float | None = None
        self.last_finish: float | None = None
        self._wake: asyncio.Event | None = None
        self._engine = None

    def stats(self) -> dict[str, Any]:
        """What this replica served: each trajectory's calls, the engine's busy time, when the first call came and
        the last one was answered (``time.monotonic``)."""
        return {
            "replica": self.replica_rank,
            "trajectories": {i: t.turns for i, t in self.trajectories.items()},
            "busy_s": self.batcher.busy_s,
            "max_running": self.batcher.max_running,
            "first_arrival": self.first_arrival,
            "last_finish": self.last_finish,
        }

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str, **kwargs):
        if not str(request_id).startswith("det-"):
            raise ValueError(f"sim rollout: request id {request_id!r} is not verl's stable id (full_determinism)")
        index = int(str(request_id)[4:])
        traj = self.trajectories.get(index)
        if traj is None:
            prompt = array("i", prompt_ids).tobytes()
            topic = zlib.crc32(prompt if self.settings.shared_queries else prompt + index.to_bytes(8, "little"))
            traj = _Trajectory(self.settings.shape.calls(self.settings.seed, index), topic)
            self.trajectories[index] = traj
        k = len(traj.turns)
        if k < len(traj.calls):
            ids = self.text.call(traj.calls[k], topic=traj.topic, call=k, last=k == len(traj.calls) - 1)
        else:  # the agent asked again after the script's answer (a notice block): end the trajectory
            ids = [self.eos]
        budget = int(sampling_params.get("max_tokens") or len(ids))
        out = ids[:budget]
        prefill = max(0, len(prompt_ids) - traj.cached)
        traj.turns.append((prefill, len(out)))
        traj.cached = len(prompt_ids) + len(out)
        await self._run(prefill, len(out))
        finish = "length" if len(out) < len(ids) else "stop"
        return TokenOutput(
            token_ids=out,
            log_probs=[0.0] * len(out) if sampling_params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps, "finish_reason": finish},
        )

    async def _run(self, prefill: int, decode: int) -> None:
        """Wait for the simulated engine to prefill and decode this call."""
        now = time.monotonic()
        self.first_arrival = self.first_arrival or now
        if self._engine is None or self._engine.done():
            self._wake = asyncio.Event()
            self._engine = asyncio.get_running_loop().create_task(self._engine_loop())
        done = asyncio.get_running_loop().create_future()
        self.batcher.submit(done, prefill, decode, at=now)
        self._wake.set()
        await done
        self.last_finish = time.monotonic()

    async def _engine_loop(self) -> None:
        """Drive the batcher in real time: sleep to the end of each planned run of steps, cut short at the
        iteration boundary after a new request arrives while there is room for it."""
        b, wake = self.batcher, self._wake
        while True:
            if b.idle:
                wake.clear()
                await wake.wait()
                b.now = max(b.now, time.monotonic())
                continue
            chunk = b.plan()
            if chunk is None:
                continue
            steps = chunk.steps
            while (delay := chunk.end(steps) - time.monotonic()) > 0:
                if steps == 1 or not b.has_room():
                    await asyncio.sleep(delay)
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except asyncio.TimeoutError:
                    break
                steps = min(steps, chunk.steps_before(time.monotonic()))
            for done in b.advance(steps):
                if not done.done():
                    done.set_result(None)

    # -- weights: nothing to load without a model --------------------------------------------------------------
    def update_weights(self, named_tensors: dict, global_steps: int | None = None) -> int:
        if global_steps is not None:
            self.set_global_steps(global_steps)
        return len(named_tensors)

    def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = int(global_steps)


class SimReplica(HFReplica):
    """One :class:`SimRolloutServer` per replica; standalone replicas need no workers (no device)."""

    backend = NAME
    server_class = SimRolloutServer

    async def init_standalone(self):
        self.rollout_mode = RolloutMode.STANDALONE
        await self.launch_servers()


class SimServerAdapter(HFServerAdapter):
    """Trainer-side handle: weights are walked (every rank must) and dropped."""

    backend = NAME

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps: int | None = None, **kw):
        for _ in weights:
            await asyncio.sleep(0)
        if self.is_leader and global_steps is not None:
            await self.server.set_global_steps.remote(global_steps)
