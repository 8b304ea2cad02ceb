"""Weight refit for verl's vLLM rollout on vLLM's CPU backend (imported inside vLLM's worker process only).

verl pushes the trainer's weights to vLLM after every step through its worker extension
(``vLLMColocateWorkerExtension.update_weights_from_ipc``), which calls ``model.load_weights`` on the running
model. vLLM's CPU backend repacks linear layers for its kernels once the weights are loaded, and the repacked
parameters have no ``weight_loader`` any more, so the second load fails (``'Parameter' object has no attribute
'weight_loader'``). vLLM has a way to load checkpoint-format weights into a processed model again: layer-wise
reload (``vllm.model_executor.model_loader.reload``), which restores each layer's loadable parameters, loads, and
runs the layer's post-load processing again once all its weights arrived. This extension wraps verl's receiver in
it. Received tensors are views of a shared-memory bucket that the next bucket overwrites, and reload keeps them
until a layer is complete, so each is copied out first.

Killed at the end of a job, vLLM's processes cannot unlink their shared-memory segments; each worker starts a
:mod:`research_plugin.shm_reaper` for itself and its parents, which removes them once the processes are gone.

Select it with ``+actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls=`` this class's path
(``research_plugin.verl.vllm_cpu.WORKER_EXTENSION``); the CPU recipes do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

logger = logging.getLogger(__name__)


class CPUWorkerExtension(vLLMColocateWorkerExtension):
    """verl's worker extension, with the weight update done through vLLM's layer-wise reload."""

    def __new__(cls, **kwargs):
        instance = super().__new__(cls, **kwargs)
        from ..shm_reaper import watch

        watch(_ancestry(os.getpid(), 3))
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_rotary_reload_notice)
        return instance

    def update_weights_from_ipc(self, peft_config: dict | None = None, base_sync_done=False, use_shm: bool = False):
        if peft_config and base_sync_done:
            raise NotImplementedError("vLLM on CPU: LoRA adapter sync is not supported; merge the adapter instead")
        from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        model = self.model_runner.get_model()
        receiver = BucketedWeightReceiver(
            zmq_handle=self._get_zmq_handle(), device=torch.device("cpu"), use_shm=use_shm
        )
        loaded: set[str] = set()

        def on_bucket(weights: list[tuple[str, torch.Tensor]], is_last: bool) -> None:
            loaded.update(model.load_weights((name, tensor.clone()) for name, tensor in weights))

        initialize_layerwise_reload(model)
        receiver.receive_weights(on_bucket_received=on_bucket)
        finalize_layerwise_reload(model, self.model_runner.model_config)
        logger.info("vLLM on CPU: reloaded %d weights", len(loaded))


def _ancestry(pid: int, depth: int) -> list[int]:
    """``pid`` and up to ``depth - 1`` of its ancestors (the engine core and the rollout server above a worker)."""
    chain = [pid]
    while len(chain) < depth:
        try:
            parent = int(Path(f"/proc/{chain[-1]}/stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if parent <= 1:
            break
        chain.append(parent)
    return chain


def _rotary_reload_notice(record: logging.LogRecord) -> bool:
    """Drop reload's per-step warning about rotary embeddings: they hold no checkpoint weights, only a cache that
    reload puts back as it was."""
    return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")
