"""One conformance test per registered method and backbone (the kit third parties run too)."""
import pytest

from oodbench.plugins import registries
from oodbench.testing import check_backbone, check_method

REGS = registries()


@pytest.mark.parametrize("name", REGS.methods.names())
def test_method_conforms(name):
    check_method(REGS.methods.get(name))


@pytest.mark.parametrize("name", REGS.backbones.names())
def test_backbone_conforms(name):
    cls = REGS.backbones.get(name)
    if cls.missing_dependency():  # optional extras (fairchem) are tested where they are installed
        pytest.skip(cls.missing_dependency())
    check_backbone(cls, preset="small")


@pytest.mark.parametrize("name", REGS.methods.names())
def test_method_documents_its_paper(name):
    import sys
    cls = REGS.methods.get(name)
    doc = (sys.modules[cls.__module__].__doc__ or "") + (cls.__doc__ or "")
    assert cls.paper, f"method {name}: set `paper`"
    assert len(doc) > 120, f"method {name}: the docstring must name the paper, its equations and what changed"
