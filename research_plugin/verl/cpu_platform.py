"""A CPU platform for verl: train with FSDP2 + gloo on a machine without an accelerator.

Registered with verl's ``PlatformRegistry`` as ``cpu``, and used only where it is selected: by verl's own
``VERL_PLATFORM=cpu``, in the shell or, as the CPU recipes do, in the run's Ray runtime environment
(``ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM``). verl's auto-detection never picks it, so with the
plugin installed and nothing selected verl answers as it does without the plugin. The launcher (``main_ppo``'s
driver) fixes its platform when it imports verl, before the config is read: when the config's runtime environment
names ``cpu`` and the shell does not name a platform, :func:`select_from_config` (run as verl's
``auto_set_device``) selects it in the driver too, so ``trainer.device`` stays ``cpu`` and every process agrees.

What verl needs from a platform, and what differs on CPU:

- ``device_name`` ``"cpu"``, ``current_device()`` ``"cpu"`` (verl passes it to ``torch.device`` / ``.to``);
- ``device_module``: ``torch.cpu`` lacks the memory, RNG and IPC calls verl makes on its device module, so a
  small namespace answers them (memory figures from the process, RNG from torch's CPU generator);
- Ray: verl schedules its workers on the ``GPU`` resource and checks that enough exist, so a CPU run declares
  logical GPU slots (``ray_kwargs.ray_init.num_gpus``), one per trainer process; nothing uses CUDA;
- collectives: gloo. verl builds the backend string ``cpu:gloo,<device>:<backend>``, which torch rejects for
  ``cpu:gloo,cpu:gloo``; on this platform the process-group helpers are given ``cpu:gloo``;
- the FSDP/FSDP2 training engine is registered for ``cuda``/``npu`` only: it is registered for ``cpu`` too.
"""

from __future__ import annotations

import contextlib
import functools
import os
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

NAME = "cpu"


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover - psutil ships with ray
        return 0


def _mem_get_info(device=None) -> tuple[int, int]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return free, pages


def _device_module() -> ModuleType:
    """``torch.cpu`` plus the calls verl makes on ``torch.cuda`` that have a meaning (or a no-op) on CPU."""
    noop = lambda *a, **k: None  # noqa: E731
    extra = {
        "empty_cache": noop,
        "ipc_collect": noop,
        "reset_peak_memory_stats": noop,
        "set_per_process_memory_fraction": noop,
        "memory_allocated": lambda device=None: _rss(),
        "memory_reserved": lambda device=None: _rss(),
        "max_memory_allocated": lambda device=None: _rss(),
        "max_memory_reserved": lambda device=None: _rss(),
        "mem_get_info": _mem_get_info,
        "get_device_name": lambda device=None: "cpu",
        "get_rng_state": lambda device=None: torch.get_rng_state(),
        "set_rng_state": lambda state, device=None: torch.set_rng_state(state),
        "manual_seed": torch.manual_seed,
        "manual_seed_all": torch.manual_seed,
        "current_device": lambda: "cpu",
    }
    names = {n: getattr(torch.cpu, n) for n in dir(torch.cpu) if not n.startswith("__")}
    module = ModuleType("research_plugin.cpu_device")
    module.__dict__.update({**names, **extra})
    return module


_DEVICE_MODULE = _device_module()


@PlatformRegistry.register(platform=NAME)
class PlatformCPU(PlatformBase):
    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never claimed by auto-detection: a process runs on this platform only where it is selected (module
        # docstring), so installing the plugin leaves verl's own choice alone.
        return False

    def current_device(self) -> str:  # type: ignore[override]
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for the logical GPU slots; CPU torch ignores it

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def _is_cpu() -> bool:
    from verl.utils.device import get_device_name

    return get_device_name() == NAME


def register_engine() -> None:
    """Make verl's FSDP/FSDP2 language-model engine selectable on ``cpu`` (verl registers it for cuda/npu)."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    for backend in ("fsdp", "fsdp2"):
        registry = EngineRegistry._engines.setdefault("language_model", {}).setdefault(backend, {})
        registry.setdefault(NAME, FSDPEngineWithLMHead)


def _cpu_worker_setup(init):
    """Wrap verl's process-group initialiser, the first thing a training worker does on this platform.

    On CPU it asks torch for ``cpu:gloo`` only and registers the engine (the worker has just imported verl's
    engine package, so this costs nothing and never runs in processes that do not train).
    """

    @functools.wraps(init)
    def wrapper(*args, backend=None, **kwargs):
        if backend is None and _is_cpu():
            backend = "cpu:gloo"
            register_engine()
        return init(*args, backend=backend, **kwargs)

    wrapper.research_plugin_cpu = True
    return wrapper


RUNTIME_ENV_KEY = "ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM"
"""Where a verl config selects a platform for the run's Ray processes (verl's own variable)."""


def selected_by(config) -> str | None:
    """``VERL_PLATFORM`` as the config's Ray runtime environment sets it (stripped, lower case), else None."""
    try:
        from omegaconf import OmegaConf

        value = OmegaConf.select(config, RUNTIME_ENV_KEY, default=None)
    except Exception:  # not an OmegaConf config: it selects nothing
        return None
    if value is None:
        return None
    return str(value).strip().lower() or None


def select_from_config(config) -> bool:
    """Select this platform in the current process when ``config`` selects it for the run's Ray processes and the
    environment names no platform (an explicit ``VERL_PLATFORM`` wins); whether it did. Sets ``VERL_PLATFORM``
    too, so processes started from here (Ray's) inherit the choice."""
    if os.environ.get("VERL_PLATFORM", "").strip() or selected_by(config) != NAME:
        return False
    from verl.plugin.platform import get_platform, set_platform

    os.environ["VERL_PLATFORM"] = NAME
    if not isinstance(get_platform(), PlatformCPU):
        # verl fixed this process's platform when it was imported, before any config existed: replace it
        set_platform(PlatformCPU())
    print(f"research_plugin: the cpu platform, selected by the config's {RUNTIME_ENV_KEY}=cpu", flush=True)
    return True


def _selecting(auto_set_device):
    """verl's ``auto_set_device(config)``, run after :func:`select_from_config`."""

    @functools.wraps(auto_set_device)
    def wrapper(config, *args, **kwargs):
        select_from_config(config)
        return auto_set_device(config, *args, **kwargs)

    wrapper.research_plugin_cpu = True
    return wrapper


def _rebind(module: ModuleType, name: str, wrap) -> None:
    """Replace ``module.name`` by ``wrap(original)`` there and wherever a verl module already bound it by name; a
    later ``from <module> import name`` gets the wrapped one."""
    import sys

    original = getattr(module, name)
    if getattr(original, "research_plugin_cpu", False):
        return
    hooked = wrap(original)
    for mod_name, mod in list(sys.modules.items()):
        if (mod_name == module.__name__ or mod_name.startswith("verl.")) and getattr(mod, name, None) is original:
            setattr(mod, name, hooked)


def install(dist: ModuleType) -> None:
    """Hook verl's process-group helper in ``verl.utils.distributed`` (``dist``): workers on this platform use gloo."""
    _rebind(dist, "initialize_global_process_group_ray", _cpu_worker_setup)


def install_selection(device: ModuleType) -> None:
    """Hook verl's ``auto_set_device`` in ``verl.utils.device`` (``device``): a config selects the platform in the
    launcher's process (:func:`select_from_config`)."""
    _rebind(device, "auto_set_device", _selecting)
