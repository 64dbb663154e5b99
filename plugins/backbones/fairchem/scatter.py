"""Pure-torch stand-ins for the parts of ``torch_scatter`` / ``torch_sparse`` that fairchem 1.x imports.

fairchem-core 1.x imports ``scatter``, ``segment_coo`` and ``segment_csr``
from ``torch_scatter`` (and, through its ``gemnet`` package, ``SparseTensor``
from ``torch_sparse``) at module level. Both packages exist on PyPI only as
C++/CUDA source that takes ~20 minutes to build on 2 cores, and wheels for a
new torch appear late. PaiNN and EquiformerV2 only need sum/mean/min/max
reductions along one dimension with a 1-D index, which torch has natively
(``index_add_``, ``scatter_reduce_``), so these functions implement exactly
that subset with torch_scatter's semantics (empty groups give 0, ``dim_size``
defaults to ``index.max() + 1``, the index is broadcast along ``dim``) and
raise ``NotImplementedError`` for the rest. ``tests/test_scatter.py`` checks
values and gradients against torch reductions and torch_geometric.

:func:`install` registers the stand-ins in ``sys.modules`` only when the real
package cannot be imported, so an installed torch_scatter always wins;
:func:`uninstall` removes exactly what :func:`install` added.
"""
from __future__ import annotations

import sys
import types
from typing import Optional

import torch

_REDUCE = {"sum": "sum", "add": "sum", "mean": "mean", "min": "amin", "max": "amax"}
STANDIN_FLAG = "__oodbench_standin__"


def _normalise_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    """``index`` expanded to ``src``'s shape: a 1-D index runs along ``dim``, others are right-padded."""
    dim = _normalise_dim(dim, src.dim())
    if index.dim() == 1:
        index = index.view([1] * dim + [-1])
    while index.dim() < src.dim():
        index = index.unsqueeze(-1)
    return index.expand(src.size())


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
            dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    """Reduce the slices of ``src`` along ``dim`` that share an ``index`` value (torch_scatter.scatter)."""
    if reduce not in _REDUCE:
        raise ValueError(f"scatter: unknown reduce {reduce!r}; use one of {sorted(_REDUCE)}")
    dim = _normalise_dim(dim, src.dim())
    if out is not None and reduce not in ("sum", "add"):
        raise NotImplementedError("the torch_scatter stand-in accumulates into `out` only for reduce='sum'; "
                                  "install torch_scatter for other reductions with `out`")
    if dim_size is None:
        dim_size = out.size(dim) if out is not None else (int(index.max()) + 1 if index.numel() else 0)
    size = list(src.size())
    size[dim] = dim_size
    op = _REDUCE[reduce]
    if op == "sum" and index.dim() == 1:
        # index_add_ needs no broadcast index and is the fastest sum on CPU and GPU
        base = out if out is not None else src.new_zeros(size)
        return base.index_add(dim, index, src)
    full = broadcast(index, src, dim)
    if op == "sum":
        base = out if out is not None else src.new_zeros(size)
        return base.scatter_add(dim, full, src)
    if op == "mean" and not src.is_floating_point():
        # torch_scatter floors integer means; scatter_reduce would truncate towards zero
        count = src.new_zeros(size).scatter_add(dim, full, torch.ones_like(src))
        total = src.new_zeros(size).scatter_add(dim, full, src)
        return total.div(count.clamp(min=1), rounding_mode="floor")
    if op in ("amax", "amin"):
        # Start from ±inf, not 0: torch's backward counts the start value as a tie even with
        # include_self=False, which would halve the gradient of a group whose max (min) is 0.
        info = torch.finfo(src.dtype) if src.is_floating_point() else torch.iinfo(src.dtype)
        start = src.new_full(size, info.min if op == "amax" else info.max)
        if src.is_floating_point():
            start.fill_(float("-inf") if op == "amax" else float("inf"))
        res = start.scatter_reduce(dim, full, src, reduce=op, include_self=False)
        filled = src.new_zeros(size, dtype=torch.bool).scatter(dim, full, True)
        return torch.where(filled, res, torch.zeros((), dtype=src.dtype, device=src.device))  # empty → 0
    # include_self=False: an empty group keeps the 0 it starts with, as in torch_scatter
    return src.new_zeros(size).scatter_reduce(dim, full, src, reduce=op, include_self=False)


def segment_coo(src: torch.Tensor, index: torch.Tensor, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.segment_coo for a 1-D sorted ``index`` over the first dimension of ``src``."""
    if index.dim() != 1:
        raise NotImplementedError("the torch_scatter stand-in supports segment_coo with a 1-D index only; "
                                  "install torch_scatter for batched indices")
    return scatter(src, index, dim=0, out=out, dim_size=dim_size, reduce=reduce)


def segment_csr(src: torch.Tensor, indptr: torch.Tensor, out: Optional[torch.Tensor] = None,
                reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.segment_csr for a 1-D ``indptr``: reduce ``src[indptr[i]:indptr[i+1]]`` for each i."""
    if indptr.dim() != 1:
        raise NotImplementedError("the torch_scatter stand-in supports segment_csr with a 1-D indptr only; "
                                  "install torch_scatter for batched indptr")
    n = indptr.numel() - 1
    counts = indptr[1:] - indptr[:-1]
    index = torch.repeat_interleave(torch.arange(n, device=src.device), counts)
    # rows outside [indptr[0], indptr[-1]) belong to no segment and are ignored
    part = src.narrow(0, int(indptr[0]), int(indptr[-1] - indptr[0])) if n > 0 else src[:0]
    return scatter(part, index, dim=0, out=out, dim_size=n, reduce=reduce)


class SparseTensor:
    """Placeholder for ``torch_sparse.SparseTensor``: importable, but any use says what to install."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "torch_sparse is not installed; oodbench registered a placeholder so that fairchem's gemnet "
            "package imports (PaiNN and EquiformerV2 never build a SparseTensor). To run GemNet-type "
            "models, `pip install torch_sparse` (builds from source, ~10 min).")

    @classmethod
    def from_edge_index(cls, *args, **kwargs):
        cls()


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name, f"oodbench stand-in for {name} (see {__name__})")
    for k, v in attrs.items():
        setattr(mod, k, v)
    setattr(mod, STANDIN_FLAG, True)
    return mod


def _importable(name: str) -> bool:
    mod = sys.modules.get(name)
    if mod is not None:
        return True
    try:
        __import__(name)
    except Exception:  # a broken binary install (ImportError, OSError on a bad .so) counts as missing
        sys.modules.pop(name, None)
        return False
    return True


def install() -> dict:
    """Register stand-ins for torch_scatter / torch_sparse that cannot be imported; return which is which."""
    used = {}
    if _importable("torch_scatter"):
        used["torch_scatter"] = "standin" if is_standin("torch_scatter") else "real"
    else:
        utils = _module("torch_scatter.utils", broadcast=broadcast)
        sys.modules["torch_scatter"] = _module("torch_scatter", scatter=scatter, segment_coo=segment_coo,
                                               segment_csr=segment_csr, utils=utils)
        sys.modules["torch_scatter.utils"] = utils
        used["torch_scatter"] = "standin"
    if _importable("torch_sparse"):
        used["torch_sparse"] = "standin" if is_standin("torch_sparse") else "real"
    else:
        sys.modules["torch_sparse"] = _module("torch_sparse", SparseTensor=SparseTensor)
        used["torch_sparse"] = "standin"
    return used


def is_standin(name: str) -> bool:
    return bool(getattr(sys.modules.get(name), STANDIN_FLAG, False))


def uninstall() -> None:
    """Remove the stand-ins that :func:`install` registered (modules imported from them keep their refs)."""
    for name in ("torch_scatter.utils", "torch_scatter", "torch_sparse"):
        if is_standin(name):
            del sys.modules[name]
