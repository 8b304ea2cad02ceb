"""Run a function when a module has been imported: how the plugin registers with verl without importing verl's
heavy modules itself.

verl loads the plugin in every process at the end of ``import verl``. Importing verl's agent loop, rollout and
trainer modules there to call their ``register`` functions would cost every process (FSDP workers, reward workers,
the driver) seconds and pull in vLLM, which verl itself imports only where it is used. Instead the plugin asks to
be called when one of those modules is imported: :func:`when_imported` runs the hook at once if the module is
already loaded, else right after the module's code has run, before ``import`` returns to whoever asked for it.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Callable
from types import ModuleType

Hook = Callable[[ModuleType], None]

_hooks: dict[str, list[Hook]] = {}
_lock = threading.RLock()


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once module ``name`` is imported (now, if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None or _initialising(module):
            _hooks.setdefault(name, []).append(hook)
            if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
                sys.meta_path.insert(0, _PostImportFinder())
            return
    hook(module)


def _initialising(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _run_hooks(module: ModuleType) -> None:
    with _lock:
        hooks = _hooks.pop(module.__name__, [])
    for hook in hooks:
        hook(module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds hooked modules with the other finders, and wraps their loader to run the hooks after execution."""

    def __init__(self) -> None:
        self._finding = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _hooks or getattr(self._finding, "name", None) == fullname:
            return None
        self._finding.name = fullname
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._finding.name = None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its own loader: nothing after this can tell it was hooked
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _run_hooks(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)
