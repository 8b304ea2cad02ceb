"""A GPU inference engine's timing, without the GPU: vLLM-style continuous batching over a clock.

:class:`CostModel` says what one engine iteration costs: a decode step over ``n`` running sequences costs
``decode_base_ms + decode_per_seq_ms * n`` (memory-bound: the weights are read once a step, each sequence adds its
KV cache and its share of the matrix products), and the prompt tokens admitted in an iteration add
``prefill_per_token_ms`` each (compute-bound). At most ``max_num_seqs`` sequences run; the rest wait.

Defaults: a 7-8B model in bf16 on one H100 SXM with vLLM. Calibrated from Lambda's vLLM benchmark
(github.com/LambdaLabsML/vllm-benchmark, ``benchmark_v0.md``: Llama 3.1 8B, tp=1, ``max-num-seq=256``, vLLM 0.6.0
with 10 scheduler steps: 8,088 output tokens/s, median TPOT 25.57 ms): a full batch of 256 steps in ~25.6 ms;
the fixed part from the H100's 3.35 TB/s (NVIDIA's datasheet) reading ~15 GB of weights at ~75 % of peak
(~6 ms), the rest spread over the 256 sequences (0.077 ms each); prefill at ~50 % of the 989 TFLOPS bf16 peak,
2 x 7.6 GFLOP a token (0.03 ms a token). Context length is not modelled (a longer KV cache makes a sequence's
share grow); nor is chunked prefill spreading a long prompt over several iterations.

:class:`ContinuousBatcher` is the scheduler as a state machine over a virtual clock (seconds): requests are
admitted at iteration boundaries while there is room, each finishes after its tokens' worth of decode steps
(the first of which also pays its prefill). The simulated rollout server drives it in real time
(:mod:`research_plugin.verl.sim_rollout`); :func:`ideal_makespan` and :func:`synchronous_makespan` drive it
instantly, to give the references a measured rollout is compared with.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CostModel:
    """What an engine iteration costs (module docstring); times in milliseconds."""

    decode_base_ms: float = 6.0
    decode_per_seq_ms: float = 0.077
    prefill_per_token_ms: float = 0.03
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        if min(self.decode_base_ms, self.decode_per_seq_ms, self.prefill_per_token_ms) < 0 or self.max_num_seqs < 1:
            raise ValueError(f"cost model: times must be >= 0 and max_num_seqs >= 1, not {self}")

    def step_s(self, running: int) -> float:
        """One decode step over ``running`` sequences, in seconds."""
        return (self.decode_base_ms + self.decode_per_seq_ms * running) / 1000.0

    def prefill_s(self, tokens: int) -> float:
        return self.prefill_per_token_ms * tokens / 1000.0


@dataclass
class _Request:
    key: object
    arrival: float
    prefill: int
    decode: int


@dataclass
class Chunk:
    """The next run of decode steps the batcher plans: ``steps`` iterations, the first ``first_s`` long (a decode
    step plus the prefill of the requests admitted at its start), the others ``step_s`` each."""

    start: float
    first_s: float
    step_s: float
    steps: int

    def end(self, steps: int | None = None) -> float:
        steps = self.steps if steps is None else steps
        return self.start + self.first_s + (steps - 1) * self.step_s

    def steps_before(self, at: float) -> int:
        """The iterations that have ended by ``at``, plus the one running then (a request arriving at ``at``
        joins at that boundary)."""
        if at <= self.start + self.first_s:
            return 1
        return min(self.steps, 1 + math.ceil((at - self.start - self.first_s) / self.step_s - 1e-9))


@dataclass
class ContinuousBatcher:
    """vLLM's scheduling, reduced to its timing (module docstring). Keys identify requests; the clock is ``now``."""

    cost: CostModel = field(default_factory=CostModel)
    now: float = 0.0
    busy_s: float = 0.0
    """Virtual time spent in iterations (the engine's busy time)."""
    max_running: int = 0

    def __post_init__(self) -> None:
        self._waiting: deque[_Request] = deque()
        self._running: list[tuple[int, int, object]] = []  # heap of (finish step, order, key)
        self._steps = 0
        self._order = 0
        self._chunk: Chunk | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        return not self._running and not self._waiting

    def has_room(self) -> bool:
        return len(self._running) < self.cost.max_num_seqs

    def submit(self, key: object, prefill: int, decode: int, at: float | None = None) -> None:
        """A request that arrived at ``at`` (default: now) needing ``prefill`` prompt tokens and ``decode`` steps."""
        self._waiting.append(_Request(key, self.now if at is None else at, max(0, prefill), max(1, decode)))

    def plan(self) -> Chunk | None:
        """Admit what has arrived (while there is room) and plan the iterations up to the next finish; None when
        nothing runs or can start (then the clock moves to the next arrival, if any)."""
        if not self._running and self._waiting and self._waiting[0].arrival > self.now:
            self.now = self._waiting[0].arrival
        prefill = 0
        while self._waiting and self.has_room() and self._waiting[0].arrival <= self.now:
            r = self._waiting.popleft()
            prefill += r.prefill
            heapq.heappush(self._running, (self._steps + r.decode, self._order, r.key))
            self._order += 1
        if not self._running:
            self._chunk = None
            return None
        self.max_running = max(self.max_running, len(self._running))
        step = self.cost.step_s(len(self._running))
        self._chunk = Chunk(self.now, step + self.cost.prefill_s(prefill), step, self._running[0][0] - self._steps)
        return self._chunk

    def advance(self, steps: int | None = None) -> list[object]:
        """Run ``steps`` iterations of the planned chunk (default: all of it); the keys that finished."""
        chunk = self._chunk
        assert chunk is not None, "plan() first"
        steps = chunk.steps if steps is None else max(1, min(steps, chunk.steps))
        self.busy_s += chunk.end(steps) - chunk.start
        self.now = chunk.end(steps)
        self._steps += steps
        self._chunk = None
        done = []
        while self._running and self._running[0][0] <= self._steps:
            done.append(heapq.heappop(self._running)[2])
        return done

    def run_until_idle(self) -> None:
        """Drive the clock instantly until every submitted request finished (offline use)."""
        while not self.idle:
            if self.plan() is not None:
                self.advance()


Turn = tuple[int, int]
"""One generation call of a trajectory: (prompt tokens to prefill, tokens to decode)."""


def ideal_makespan(trajectories: Sequence[Sequence[Turn]], cost: CostModel) -> float:
    """Seconds to roll out ``trajectories`` on one engine when every search is answered instantly and the agent
    costs nothing: each trajectory's next turn arrives the moment its previous one finishes."""
    batcher = ContinuousBatcher(cost)
    next_turn = [0] * len(trajectories)
    for i, turns in enumerate(trajectories):
        if turns:
            batcher.submit(i, *turns[0])
            next_turn[i] = 1
    while not batcher.idle:
        if batcher.plan() is None:
            continue
        for i in batcher.advance():
            if next_turn[i] < len(trajectories[i]):
                batcher.submit(i, *trajectories[i][next_turn[i]])
                next_turn[i] += 1
    return batcher.now


def synchronous_makespan(
    replicas: Sequence[Sequence[Sequence[Turn]]], cost: CostModel, search_s: float | Sequence[float]
) -> float:
    """Seconds for synchronous turns (Search-R1's loop): turn k of every unfinished trajectory starts together on
    its replica, the turn ends when the slowest replica's batch has finished, then the turn's searches take
    ``search_s`` (one value, or one per turn) before turn k+1 starts."""
    total = 0.0
    turns = max((len(t) for r in replicas for t in r), default=0)
    for k in range(turns):
        longest = 0.0
        for trajectories in replicas:
            batcher = ContinuousBatcher(cost)
            for i, traj in enumerate(trajectories):
                if k < len(traj):
                    batcher.submit(i, *traj[k])
            batcher.run_until_idle()
            longest = max(longest, batcher.now)
        total += longest
        if k < turns - 1:
            total += search_s if isinstance(search_s, (int, float)) else search_s[k]
    return total
