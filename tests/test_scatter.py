"""The pure-torch torch_scatter stand-in: values and gradients against independent references.

Runs in the core install (no fairchem needed); the torch_geometric comparison
runs where torch_geometric is installed (the fairchem extra).
"""
from __future__ import annotations

import sys

import pytest
import torch

from oodbench_plugins.backbones.fairchem import scatter as S


def _loop_reference(src, index, dim, dim_size, reduce):
    """Group-by-loop reduction: slow, obviously right, and independent of scatter kernels."""
    src_t = src.movedim(dim, 0)
    outs = []
    for g in range(dim_size):
        rows = src_t[index == g]
        if rows.shape[0] == 0:
            outs.append(torch.zeros_like(src_t[0]))
        elif reduce == "sum":
            outs.append(rows.sum(0))
        elif reduce == "mean":
            outs.append(rows.mean(0))
        elif reduce == "max":
            outs.append(rows.max(0).values)
        elif reduce == "min":
            outs.append(rows.min(0).values)
    return torch.stack(outs).movedim(0, dim)


def _data(shape, dim, n_groups, seed):
    g = torch.Generator().manual_seed(seed)
    # distinct values, so max/min have a unique arg and a well-defined gradient
    src = torch.randperm(int(torch.tensor(shape).prod()), generator=g).double().reshape(shape) / 7.0
    index = torch.randint(0, n_groups - 1, (shape[dim],), generator=g)  # the last group stays empty
    return src, index


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("shape,dim", [((11,), 0), ((9, 4), 0), ((3, 8, 2), 1), ((5, 6), -1)])
def test_scatter_values_and_gradients_match_loop_reference(reduce, shape, dim):
    src, index = _data(shape, dim, n_groups=5, seed=len(shape) * 10 + dim)
    a = src.clone().requires_grad_(True)
    b = src.clone().requires_grad_(True)
    got = S.scatter(a, index, dim=dim, dim_size=5, reduce=reduce)
    want = _loop_reference(b, index, dim, 5, reduce)
    torch.testing.assert_close(got, want)
    w = torch.randn(got.shape, dtype=got.dtype, generator=torch.Generator().manual_seed(1))
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_scatter_sum_matches_index_add_and_infers_dim_size():
    src, index = _data((7, 3), 0, n_groups=4, seed=3)
    want = torch.zeros(int(index.max()) + 1, 3, dtype=src.dtype).index_add_(0, index, src)
    torch.testing.assert_close(S.scatter(src, index, dim=0), want)
    # a 2-D index (already broadcast) takes the scatter_add path, same answer
    torch.testing.assert_close(S.scatter(src, index[:, None].expand_as(src), dim=0), want)


def test_scatter_sum_accumulates_into_out():
    src, index = _data((6,), 0, n_groups=3, seed=4)
    out = torch.ones(3, dtype=src.dtype)
    torch.testing.assert_close(S.scatter(src, index, dim=0, out=out),
                               torch.ones(3, dtype=src.dtype).index_add_(0, index, src))


def test_scatter_matches_torch_scatter_reduce():
    src, index = _data((10, 4), 0, n_groups=4, seed=5)
    for reduce, op in [("mean", "mean"), ("max", "amax"), ("min", "amin")]:
        want = torch.zeros(4, 4, dtype=src.dtype).scatter_reduce_(
            0, index[:, None].expand_as(src), src, reduce=op, include_self=False)
        torch.testing.assert_close(S.scatter(src, index, dim=0, dim_size=4, reduce=reduce), want)


def test_integer_mean_floors_like_torch_scatter():
    src = torch.tensor([-3, 0, 5, 2])
    index = torch.tensor([0, 0, 1, 1])
    assert S.scatter(src, index, dim=0, reduce="mean").tolist() == [-2, 3]


def test_segment_coo_counts_sorted_index_like_fairchem():
    index = torch.tensor([0, 0, 1, 3, 3, 3])
    ones = index.new_ones(1).expand_as(index)  # fairchem passes an expanded (non-contiguous) tensor
    assert S.segment_coo(ones, index, dim_size=5).tolist() == [2, 1, 0, 3, 0]


def test_segment_csr_reduces_ranges_and_ignores_rows_outside_indptr():
    src = torch.arange(10.0).reshape(5, 2).requires_grad_(True)
    indptr = torch.tensor([1, 3, 3, 4])
    got = S.segment_csr(src, indptr)
    want = torch.stack([src[1:3].sum(0), torch.zeros(2), src[3:4].sum(0)])
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert src.grad[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    mean = S.segment_csr(src.detach(), torch.tensor([0, 2, 5]), reduce="mean")
    torch.testing.assert_close(mean, torch.stack([src[0:2].mean(0), src[2:5].mean(0)]).detach())


def test_unsupported_uses_fail_loudly():
    x = torch.ones(4)
    with pytest.raises(ValueError, match="unknown reduce"):
        S.scatter(x, torch.zeros(4, dtype=torch.long), reduce="median")
    with pytest.raises(NotImplementedError, match="install torch_scatter"):
        S.segment_csr(x.view(1, 4), torch.tensor([[0, 2, 4]]))
    with pytest.raises(NotImplementedError, match="torch_sparse"):
        S.SparseTensor(row=torch.zeros(1))


def test_matches_torch_geometric_scatter():
    pyg = pytest.importorskip("torch_geometric.utils")
    src, index = _data((12, 3), 0, n_groups=5, seed=6)
    for reduce in ("sum", "mean", "max", "min"):
        a = src.clone().requires_grad_(True)
        b = src.clone().requires_grad_(True)
        got = S.scatter(a, index, dim=0, dim_size=5, reduce=reduce)
        want = pyg.scatter(b, index, dim=0, dim_size=5, reduce=reduce)
        torch.testing.assert_close(got, want)
        got.pow(2).sum().backward()
        want.pow(2).sum().backward()
        torch.testing.assert_close(a.grad, b.grad)


def test_install_registers_only_missing_modules_and_uninstall_reverts(monkeypatch):
    for name in ("torch_scatter", "torch_scatter.utils", "torch_sparse"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    real = {}
    for name in ("torch_scatter", "torch_sparse"):
        try:
            __import__(name)
            real[name] = sys.modules[name]
        except ImportError:
            pass
    used = S.install()
    try:
        for name in ("torch_scatter", "torch_sparse"):
            if name in real:
                assert used[name] == "real" and sys.modules[name] is real[name]
            else:
                assert used[name] == "standin" and S.is_standin(name)
        if "torch_scatter" not in real:
            from torch_scatter import scatter, segment_coo, segment_csr  # noqa: F401  (what fairchem imports)
            from torch_scatter.utils import broadcast  # noqa: F401
            assert scatter is S.scatter
        assert S.install() == used  # idempotent
    finally:
        S.uninstall()
    for name in ("torch_scatter", "torch_sparse"):
        assert not S.is_standin(name)
        assert (sys.modules.get(name) is real[name]) if name in real else (name not in sys.modules)
