import importlib.metadata
import sys
import types
import warnings

import pytest

from oodbench import hookimpl, plugins
from oodbench.registry import DuplicateNameError, Registry, UnknownNameError


@pytest.fixture
def fresh():
    plugins.reset()
    yield
    plugins.reset()


def test_did_you_mean():
    r = Registry("task")
    for n in ["phonons-top", "phonons-bottom", "shear-modulus-top"]:
        r.add(n, object())
    with pytest.raises(UnknownNameError) as e:
        r.get("phonon-top")
    msg = str(e.value)
    assert "phonons-top" in msg and "did you mean" in msg.lower() and "oodbench list tasks" in msg


def test_duplicate_names_name_both_plugins():
    r = Registry("method")
    r.add("erm", object(), origin="a")
    with pytest.raises(DuplicateNameError, match="by a and by b"):
        r.add("erm", object(), origin="b")


def test_builtins_are_entry_point_plugins(fresh):
    regs = plugins.registries()
    assert "erm" in regs.methods and "irnet" in regs.backbones and "phonons-top" in regs.tasks
    assert regs.methods.origin("erm") == "erm"  # came through the entry point, like a third party's


def _fake_entry_points(monkeypatch, eps):
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        if group == plugins.ENTRY_POINT_GROUP:
            return list(real(group=group)) + eps
        return real(group=group, **kw)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_broken_plugin_is_reported_not_fatal(fresh, monkeypatch):
    broken = importlib.metadata.EntryPoint("broken-thing", "no_such_module_xyz", plugins.ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, [broken])
    with pytest.warns(plugins.PluginLoadWarning, match="broken-thing.*ModuleNotFoundError"):
        regs = plugins.registries()
    assert "broken-thing" in regs.failed
    assert "erm" in regs.methods  # the others still load


def test_plugin_raising_in_hook_is_reported(fresh, monkeypatch):
    mod = types.ModuleType("raising_plugin")

    @hookimpl
    def oodbench_methods():
        raise RuntimeError("boom")
    mod.oodbench_methods = oodbench_methods
    monkeypatch.setitem(sys.modules, "raising_plugin", mod)
    _fake_entry_points(monkeypatch, [importlib.metadata.EntryPoint("raising", "raising_plugin",
                                                                   plugins.ENTRY_POINT_GROUP)])
    with pytest.warns(plugins.PluginLoadWarning, match="raising.*boom"):
        regs = plugins.registries()
    assert "erm" in regs.methods


def test_disable_autoload(fresh, monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    regs = plugins.registries()
    assert len(regs.methods) == 0
    import oodbench_plugins.methods.erm as erm
    plugins.register(erm, name="erm-by-hand")
    assert "erm" in plugins.registries().methods
