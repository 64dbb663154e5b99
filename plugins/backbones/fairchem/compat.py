"""Importing fairchem-core 1.x: the optional extra, the scatter stand-ins, and clear errors.

Nothing here runs at plugin load time, so ``painn`` and ``equiformer-v2`` are
listed in every install and only fail, with the install command, when used
without the ``fairchem`` extra.
"""
from __future__ import annotations

import functools
import importlib.metadata
import warnings

INSTALL = 'pip install -e ".[fairchem]"  (fairchem-core 1.3.0 needs numpy<2; see README, "Structure backbones")'


class FairchemMissing(ImportError, ValueError):
    """The optional extra is missing or broken. Also a ValueError: the CLI reports those as one-line
    usage errors (the fix is a command to run, not a bug to debug)."""


@functools.lru_cache(maxsize=1)
def fairchem_modules() -> dict:
    """PaiNN, EquiformerV2Backbone and radius_graph_pbc from fairchem-core 1.x (stand-ins installed as needed)."""
    try:
        version = importlib.metadata.version("fairchem-core")
    except importlib.metadata.PackageNotFoundError:
        raise FairchemMissing(f"the PaiNN / EquiformerV2 backbones need fairchem-core 1.x, which is not "
                              f"installed; install the optional extra: {INSTALL}") from None
    if not version.startswith("1."):
        raise FairchemMissing(f"fairchem-core {version} is installed, but PaiNN and EquiformerV2 exist only "
                              f"in fairchem-core 1.x (2.x removed them); {INSTALL}")
    from . import scatter
    used = scatter.install()
    try:
        with warnings.catch_warnings():
            # fairchem 1.3 decorates with the deprecated torch.cuda.amp.autocast at import time
            warnings.simplefilter("ignore", FutureWarning)
            from fairchem.core.common.utils import radius_graph_pbc
            from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
            from fairchem.core.models.painn.painn import PaiNN
    except ImportError as exc:
        raise FairchemMissing(f"fairchem-core {version} is installed but does not import ({exc}); "
                              f"reinstall the extra: {INSTALL}") from exc
    return {"PaiNN": PaiNN, "EquiformerV2Backbone": EquiformerV2Backbone,
            "radius_graph_pbc": radius_graph_pbc, "scatter": used, "version": version}


def radius_graph_pbc(*args, **kwargs):
    return fairchem_modules()["radius_graph_pbc"](*args, **kwargs)
