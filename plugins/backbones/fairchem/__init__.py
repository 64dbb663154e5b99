"""Plugin: PaiNN and EquiformerV2 (fairchem-core 1.x) as crystal-structure backbones.

Both are registered in every install; fairchem itself is imported only when
one is used, so the core install stays light and a missing extra is reported
with the command that installs it (``pip install -e ".[fairchem]"``).

- ``graphs``: periodic radius graphs, built once per dataset, cached, collated cheaply;
- ``scatter``: pure-torch stand-ins for torch_scatter / torch_sparse;
- ``compat``: importing fairchem 1.x;
- ``painn`` / ``equiformer``: the two backbones.
"""
from oodbench import hookimpl

from .equiformer import EquiformerV2Backbone
from .painn import PaiNNBackbone


@hookimpl
def oodbench_backbones():
    return [PaiNNBackbone, EquiformerV2Backbone]
