"""``hf`` rollout backend for verl: HF transformers generation on CPU, served like verl's vLLM/SGLang servers.

Three pieces, as verl's rollout contract has them (:mod:`.verl_plugin` registers them by name when verl's rollout
registries are imported):

- ``HFRolloutServer``: a Ray actor per replica (named ``hf_server_{replica}_{node}``) holding the policy and an
  ``HFGenerationServer`` (batched token-in/token-out generation with honest log-probs). It answers verl's
  server calls: ``generate``, ``wake_up``/``sleep``, ``abort_all_requests``/``resume_generation``, KV-cache and
  profiler hooks, and ``update_weights`` / ``set_global_steps`` from the trainer.
- ``HFReplica``: the ``RolloutReplica`` registered as ``hf`` with ``RolloutReplicaRegistry``; it launches the
  servers next to the trainer's workers.
- ``HFServerAdapter``: the actor-side ``BaseRollout`` (``_ROLLOUT_REGISTRY[("hf", "async")]``) that verl's
  training worker calls after each step: it streams the trainer's full weights (HF names) to its server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

NAME = "hf"


def server_name(replica_rank: int, node_rank: int = 0, backend: str = NAME) -> str:
    return f"{backend}_server_{replica_rank}_{node_rank}"


class ServerHooks:
    """What verl calls on every rollout server around generation, as a CPU server answers it: weights and KV cache
    stay in memory between phases, so every hook is a no-op (a server overrides what it must do)."""

    async def wake_up(self, tags: list[str] | None = None):
        return None

    async def sleep(self):
        return None

    async def abort_all_requests(self, reject_request: bool = False):
        return None

    async def resume_generation(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFRolloutServer(ServerHooks):
    """Serves one replica's generation on CPU (a Ray actor, ``max_concurrency`` requests at a time)."""

    def __init__(self, config, model_config, replica_rank: int = 0, seed: int = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        from .hf_generation import HFGenerationServer

        self.config = config
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        path = model_config.local_path
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_config.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            torch_dtype=torch.float32,
            attn_implementation="sdpa",
            trust_remote_code=model_config.trust_remote_code,
        )
        self.engine = HFGenerationServer(
            model,
            tokenizer,
            seed=config.get("seed", seed) + replica_rank,  # rollout.seed, as verl's vLLM server takes it
            max_batch_size=config.max_num_seqs,
            logprobs_mode=config.logprobs_mode or "processed_logprobs",
        )
        self.engine.extra_fields["global_steps"] = 0

    def _max_tokens(self, prompt_len: int, params: dict) -> int:
        """The budget as verl's vLLM server computes it: the request's ``max_tokens`` or the response length."""
        cfg = self.config
        room = cfg.max_model_len - prompt_len if cfg.max_model_len else cfg.prompt_length + cfg.response_length
        if "max_tokens" in params:
            wanted = params.pop("max_tokens")
        elif "max_new_tokens" in params:
            wanted = params.pop("max_new_tokens")
        else:
            wanted = min(cfg.response_length, cfg.prompt_length + cfg.response_length - prompt_len)
        return max(1, min(int(wanted), room))

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data=None,
        video_data=None,
        **kwargs,
    ) -> TokenOutput:
        if image_data or video_data:
            raise ValueError("the hf rollout backend serves text-only policies")
        params = dict(sampling_params)
        params["max_tokens"] = self._max_tokens(len(prompt_ids), params)
        return await self.engine.generate(request_id, prompt_ids=list(prompt_ids), sampling_params=params)

    # -- weights ------------------------------------------------------------------------------------------------
    def update_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        loaded = self.engine.load_weights(named_tensors.items())
        if loaded != len(named_tensors):
            missing = sorted(set(named_tensors) - set(self.engine.model.state_dict()))[:5]
            raise ValueError(
                f"hf rollout: {len(named_tensors) - loaded} weights have no parameter here, e.g. {missing}"
            )
        if global_steps is not None:
            self.set_global_steps(global_steps)
        return loaded

    def set_global_steps(self, global_steps: int) -> None:
        self.engine.extra_fields["global_steps"] = int(global_steps)

    async def abort_all_requests(self, reject_request: bool = False):
        self.engine.abort()


class HFReplica(RolloutReplica):
    """One ``HFRolloutServer`` per replica, on the node of the replica's first worker."""

    backend = NAME
    server_class = HFRolloutServer

    async def launch_servers(self):
        node_id = (
            await self.workers[0].__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
            if self.workers
            else ray.get_runtime_context().get_node_id()
        )
        name = server_name(self.replica_rank, backend=self.backend) + self.name_suffix
        server = (
            ray.remote(self.server_class)
            .options(
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                ),
                name=name,
                num_cpus=0,
                max_concurrency=self.max_concurrency,
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = name  # a router key, not a URL

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(BaseRollout):
    """Trainer-side handle of an ``HFRolloutServer``: forwards resume/release and the weights after each step."""

    backend = NAME

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        world = self.config.tensor_model_parallel_size * self.config.data_parallel_size
        world *= self.config.pipeline_model_parallel_size
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.is_leader = rank % world == 0  # one trainer rank per replica talks to its server
        self._server = None

    @property
    def server(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank, backend=self.backend))
        return self._server

    async def resume(self, tags: list[str]):
        if self.is_leader:
            await self.server.wake_up.remote(tags=tags)

    async def release(self):
        if self.is_leader:
            await self.server.sleep.remote()

    @torch.no_grad()
    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps: int | None = None, **kw):
        if wire_format != "named_tensors":
            raise ValueError(f"hf rollout takes full named tensors, not {wire_format!r}")
        if kw.get("peft_config") is not None:
            raise ValueError("hf rollout: LoRA adapters are not supported; set actor_rollout_ref.model.lora.merge=true")
        # every rank must walk the generator (gathering a sharded tensor is a collective); the leader keeps a copy
        named = {}
        for name, tensor in weights:
            tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            if self.is_leader:
                named[name] = tensor.detach().to("cpu", copy=True)
            await asyncio.sleep(0)
        if self.is_leader:
            await self.server.update_weights.remote(named, global_steps)
