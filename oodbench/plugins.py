"""The plugin manager: loads every plugin and fills the registries.

Built-in features are ordinary plugins declared in the ``oodbench`` entry-point
group of this package's pyproject.toml. Set ``OODBENCH_DISABLE_PLUGIN_AUTOLOAD=1``
to load no entry point at all (then register plugins by hand with
:func:`get_manager().register`), like pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.
A plugin that fails to import or to register is reported as a warning naming it
and its error; the others still load.
"""
from __future__ import annotations

import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .registry import Registry

ENTRY_POINT_GROUP = "oodbench"
DISABLE_ENV = "OODBENCH_DISABLE_PLUGIN_AUTOLOAD"


class PluginLoadWarning(UserWarning):
    pass


@dataclass
class Registries:
    datasets: Registry = field(default_factory=lambda: Registry("dataset"))
    tasks: Registry = field(default_factory=lambda: Registry("task"))
    families: Registry = field(default_factory=lambda: Registry("family"))
    metrics: Registry = field(default_factory=lambda: Registry("metric"))
    methods: Registry = field(default_factory=lambda: Registry("method"))
    backbones: Registry = field(default_factory=lambda: Registry("backbone"))
    failed: dict = field(default_factory=dict)


_HOOKS = {
    "oodbench_datasets": "datasets",
    "oodbench_tasks": "tasks",
    "oodbench_task_families": "families",
    "oodbench_metrics": "metrics",
    "oodbench_methods": "methods",
    "oodbench_backbones": "backbones",
}


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("oodbench")
    pm.add_hookspecs(hookspecs)
    return pm


def load_entry_points(pm: pluggy.PluginManager, failed: dict) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the others down
            failed[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"oodbench plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                          f"{type(exc).__name__}: {exc}", PluginLoadWarning, stacklevel=2)


def collect(pm: pluggy.PluginManager, failed: dict | None = None) -> Registries:
    regs = Registries(failed=dict(failed or {}))
    for plugin_name, plugin in pm.list_name_plugin():
        for hook_name, attr in _HOOKS.items():
            impl = getattr(plugin, hook_name, None)
            if impl is None:
                continue
            try:
                items = impl() or []
            except Exception as exc:
                regs.failed[plugin_name] = f"{hook_name}: {type(exc).__name__}: {exc}"
                warnings.warn(f"oodbench plugin {plugin_name!r} raised in {hook_name} and is skipped: "
                              f"{type(exc).__name__}: {exc}", PluginLoadWarning, stacklevel=2)
                continue
            registry = getattr(regs, attr)
            for item in items:
                registry.add(item.name, item, origin=plugin_name)
    return regs


_PM: pluggy.PluginManager | None = None
_REGS: Registries | None = None
_FAILED: dict = {}


def get_manager() -> pluggy.PluginManager:
    global _PM
    if _PM is None:
        _PM = _new_manager()
        if not os.environ.get(DISABLE_ENV):
            load_entry_points(_PM, _FAILED)
    return _PM


def registries() -> Registries:
    """The registries of every loaded plugin, built once per process."""
    global _REGS
    if _REGS is None:
        _REGS = collect(get_manager(), _FAILED)
    return _REGS


def register(plugin, name: str | None = None) -> None:
    """Register a plugin object by hand (tests, notebooks) and rebuild the registries."""
    global _REGS
    get_manager().register(plugin, name=name)
    _REGS = None


def reset() -> None:
    """Forget every loaded plugin (tests)."""
    global _PM, _REGS, _FAILED
    _PM, _REGS, _FAILED = None, None, {}
