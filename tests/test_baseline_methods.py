"""Mechanism tests of the six imbalanced-regression / augmentation baselines.

Each test fails if the method's core mechanism is missing (e.g. LDS weights
not larger for rare labels, C-Mixup partners no closer in label than random
ones), not merely if the wiring breaks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from oodbench.api import BackboneModule, Batch, Context, FitData, Inputs, Subset, TensorInputs
from oodbench.testing import check_method
from oodbench_plugins.methods import _shared
from oodbench_plugins.methods.balanced_mse import BalancedMSE
from oodbench_plugins.methods.cmixup import CMixup, KernelPartnerSampler, sample_partners
from oodbench_plugins.methods.conr import ConR, conr_loss
from oodbench_plugins.methods.foma import FOMA, foma_transform
from oodbench_plugins.methods.lds import LDS
from oodbench_plugins.methods.ranksim import RankSim, descending_rank, ranksim_loss, unique_label_rows

ALL = [LDS, BalancedMSE, RankSim, ConR, CMixup, FOMA]


def ctx(seed=0):
    return Context(torch.device("cpu"), seed, np.random.default_rng(seed), log=lambda *a: None)


def tensor_data(y_train, y_val=None, d=5, seed=0, y_scale=1.0):
    rng = np.random.default_rng(seed)
    y_train = np.asarray(y_train, dtype=np.float32)
    y_val = np.asarray(y_val if y_val is not None else y_train[:4], dtype=np.float32)
    def sub(y):
        x = torch.as_tensor(rng.normal(size=(len(y), d)), dtype=torch.float32)
        return Subset(TensorInputs(x), y, np.array([f"r{i}" for i in range(len(y))]))
    return FitData(sub(y_train), sub(y_val), y_scale=y_scale)


class ZeroModel(BackboneModule):
    embedding_dim = 1

    def embed(self, x):
        return torch.zeros(len(x), 1)

    def head(self, z):
        return z[:, 0]


class GraphLikeInputs(Inputs):
    """Inputs whose batch is a dict, not a tensor — like crystal graphs, they cannot be mixed."""

    kind = "structure"

    def __init__(self, t):
        self.t = t

    def __len__(self):
        return len(self.t)

    def take(self, idx):
        return GraphLikeInputs(self.t[torch.as_tensor(np.asarray(idx))])

    def batch(self, idx, device):
        return {"nodes": self.t[torch.as_tensor(np.asarray(idx))].to(device)}


class GraphLikeModule(BackboneModule):
    def __init__(self, d_in=6, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d_in, d)
        self.out = nn.Linear(d, 1)
        self.embedding_dim = d

    def embed(self, x):
        return torch.tanh(self.lin(x["nodes"]))

    def head(self, z):
        return self.out(z).squeeze(-1)


# ------------------------------------------------------------------ conformance

@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_conformance(cls):
    check_method(cls)
    assert cls.paper and cls.__module__.startswith("oodbench_plugins.methods.")


# ------------------------------------------------------------------ LDS

def test_lds_weights_larger_for_rare_labels_and_mean_one():
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(0, 0.5, 600), [2.6, 2.8, 3.0]])
    data = tensor_data(y, y_val=[50.0, -50.0, 40.0, 30.0], y_scale=2.0)  # extreme val labels must be ignored
    method, c = LDS(), ctx()
    method.setup(ZeroModel(), data, c)
    w = method.sample_weights(torch.tensor([0.0, 2.8]))
    assert w[1] > 3 * w[0]
    assert np.isclose(method.sample_weights(torch.as_tensor(y, dtype=torch.float32)).mean().item(), 1.0, atol=1e-4)
    # histogram from the training labels only: the bins span their range, not the validation labels'
    assert c.info["lds_bins"] * c.info["lds_bin_width_std"] < (y.max() - y.min()) + c.info["lds_bin_width_std"]
    assert np.isclose(c.info["lds_bin_width"], 2.0 * c.info["lds_bin_width_std"])


def test_lds_loss_is_the_weighted_mse():
    rng = np.random.default_rng(1)
    y = np.concatenate([rng.normal(0, 0.3, 300), [2.0, 2.2]]).astype(np.float32)
    data = tensor_data(y)
    method = LDS()
    method.setup(ZeroModel(), data, ctx())
    yb = torch.tensor([0.0, 0.1, 2.1])
    batch = Batch(torch.zeros(3, 5), yb, np.arange(3))
    loss = method.loss(ZeroModel(), batch, ctx())
    assert torch.isclose(loss, (method.sample_weights(yb) * yb ** 2).mean())
    assert loss > (yb ** 2).mean()  # the rare label's error counts more than in the plain MSE


def test_lds_gaussian_window_is_symmetric_and_peaked():
    w = _shared.kernel_window("gaussian", 5, 2.0)
    assert w[2] == 1.0 and np.allclose(w, w[::-1]) and w[0] < w[1] < w[2]
    with pytest.raises(ValueError, match="odd"):
        _shared.kernel_window("gaussian", 4, 2.0)
    edges = np.array([0.0, 1.0, 2.0, 3.0])  # 3 bins, narrower than the 5-bin window
    assert _shared.smoothed_density([0.5, 1.5, 1.6, 2.5], edges).shape == (3,)


# ------------------------------------------------------------------ Balanced MSE

def test_balanced_mse_sigma_is_learned():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5)).astype(np.float32)
    y = (y - y.mean()) / y.std()
    data = FitData(Subset(TensorInputs(torch.as_tensor(x[:90])), y[:90], np.arange(90).astype(str)),
                   Subset(TensorInputs(torch.as_tensor(x[90:])), y[90:], np.arange(30).astype(str)))
    from oodbench_plugins.backbones.irnet import IRNet
    method, c = BalancedMSE(max_epochs=4, batch_size=16), ctx()
    method.fit(IRNet(widths=(16, 8)).build(data.train, seed=0), data, c)
    assert abs(c.info["bmse_noise_sigma_std"] - method.init_noise_sigma) > 1e-2
    assert method.extra_parameters()[0]["lr"] == method.sigma_lr


def test_balanced_mse_batch_of_one_is_an_error():
    data = tensor_data(np.linspace(-1, 1, 20))
    method = BalancedMSE()
    method.setup(ZeroModel(), data, ctx())
    with pytest.raises(ValueError, match="batch of 1"):
        method.loss(ZeroModel(), Batch(torch.zeros(1, 5), torch.tensor([0.3]), np.arange(1)), ctx())
    with pytest.raises(ValueError, match="batch_size"):
        BalancedMSE(batch_size=1).setup(ZeroModel(), data, ctx())


@pytest.mark.parametrize("impl", ["bmc", "gai", "bni"])
def test_balanced_mse_pushes_predictions_away_from_the_dense_labels(impl):
    # training labels crowd at 0; a sample labelled 1 predicted exactly right is still pulled towards
    # the rare side (+), which plain MSE (zero gradient there) does not do
    rng = np.random.default_rng(0)
    y_train = np.concatenate([rng.normal(0, 0.2, 400), rng.normal(2, 0.2, 10)]).astype(np.float32)
    method = BalancedMSE(impl=impl, init_noise_sigma=0.5)
    method.setup(ZeroModel(), tensor_data(y_train), ctx())
    y = torch.tensor(np.concatenate([[1.0], y_train[:63]]), dtype=torch.float32)
    pred = y.clone().requires_grad_(True)
    method.balanced_loss(pred, y).backward()
    assert pred.grad[0] < 0
    assert method.balanced_loss(y, y) < method.balanced_loss(y.flip(0), y)


# ------------------------------------------------------------------ RankSim

def test_ranksim_zero_for_label_ordered_features_positive_otherwise():
    y = torch.rand(16, generator=torch.Generator().manual_seed(3))  # no equal label distances (ties)
    aligned = torch.stack([torch.cos(y), torch.sin(y)], dim=1)  # cosine similarity = cos(y_i - y_j)
    assert ranksim_loss(aligned, y) < 1e-6
    assert ranksim_loss(torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), y) > 0.5


def test_ranksim_gradient_moves_feature_ranking_towards_label_ranking():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(24, generator=g)
    z = torch.randn(24, 6, generator=g, requires_grad=True)

    def agreement(z):
        zn = nn.functional.normalize(z.detach(), dim=1)
        fr = descending_rank(zn @ zn.T)
        lr = descending_rank(-(y[:, None] - y[None, :]).abs())
        return float(np.corrcoef(fr.flatten(), lr.flatten())[0, 1])

    before, loss0 = agreement(z), ranksim_loss(z, y).item()
    for _ in range(20):
        loss = ranksim_loss(z, y)
        (grad,) = torch.autograd.grad(loss, z)
        assert grad.abs().sum() > 0
        with torch.no_grad():
            z -= 1.0 * grad
    assert ranksim_loss(z, y).item() < 0.5 * loss0
    assert agreement(z) > before + 0.2


def test_ranksim_keeps_one_sample_per_tied_label():
    y = torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    keep = unique_label_rows(y, torch.Generator().manual_seed(0))
    assert sorted(y[keep].tolist()) == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------ ConR

def test_conr_finite_without_positives():
    y = torch.arange(8, dtype=torch.float32)          # every pair farther apart than the window
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = conr_loss(z, y, torch.zeros(8), window=0.1)  # all predictions equal: every pair is "confused"
    loss.backward()
    assert torch.isfinite(loss) and loss == 0 and torch.isfinite(z.grad).all()


def test_conr_pulls_positives_and_pushes_confused_negatives():
    y = torch.tensor([0.0, 0.05, 1.0])
    z = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.8, 0.0, 0.6]], requires_grad=True)
    pred = torch.zeros(3)                               # the model confuses sample 2 with 0 and 1
    loss = conr_loss(z, y, pred, window=0.1)
    assert loss > 0
    (grad,) = torch.autograd.grad(loss, z)
    z2 = nn.functional.normalize(z.detach() - 0.1 * grad, dim=1)
    z1 = nn.functional.normalize(z.detach(), dim=1)
    assert z2[0] @ z2[1] > z1[0] @ z1[1]               # positive pair closer
    assert z2[0] @ z2[2] < z1[0] @ z1[2]               # confused negative farther
    # pushing weight grows with label distance: the same geometry costs more with a farther negative
    far = conr_loss(z.detach(), torch.tensor([0.0, 0.05, 4.0]), pred, window=0.1)
    assert far > loss


# ------------------------------------------------------------------ C-Mixup

def test_cmixup_partners_are_closer_in_label_than_random():
    g = torch.Generator().manual_seed(0)
    candidates = torch.randn(3000, generator=g)
    anchors = candidates[:256]
    random_gap = (anchors - candidates[torch.randint(0, 3000, (256,), generator=g)]).abs().mean()
    for j in (sample_partners(anchors, candidates, 0.1, g), KernelPartnerSampler(candidates, 0.1).sample(anchors, g)):
        assert (anchors - candidates[j]).abs().mean() < 0.25 * random_gap


@pytest.mark.parametrize("bandwidth", [0.05, 0.5])
def test_cmixup_training_set_sampler_follows_the_kernel_exactly(bandwidth):
    g = torch.Generator().manual_seed(2)
    candidates = torch.randn(40, generator=g)
    j = KernelPartnerSampler(candidates, bandwidth).sample(torch.full((20000,), 0.3), g)
    empirical = torch.bincount(j, minlength=40).double() / len(j)
    exact = torch.softmax(-(0.3 - candidates.double()) ** 2 / (2 * bandwidth ** 2), 0)
    assert (empirical - exact).abs().sum() / 2 < 0.03  # total variation; sampling noise is ~0.01


def test_cmixup_samples_from_a_large_training_set_without_a_big_matrix():
    g = torch.Generator().manual_seed(1)
    candidates = torch.randn(200_000, generator=g)  # an N x N matrix would be 160 GB, B x N 200 MB
    sampler = KernelPartnerSampler(candidates, 0.05)
    assert len(sampler.counts) <= KernelPartnerSampler.MAX_BINS
    j = sampler.sample(candidates[:256], g)
    assert j.shape == (256,) and (candidates[:256] - candidates[j]).abs().max() < 0.5


def test_cmixup_records_bandwidth_in_label_units():
    c = ctx()
    CMixup(bandwidth=0.3).setup(ZeroModel(), tensor_data(np.linspace(-1, 1, 30), y_scale=4.0), c)
    assert np.isclose(c.info["cmixup_bandwidth"], 1.2)


# ------------------------------------------------------------------ FOMA

def test_foma_shrinks_the_tail_and_transforms_the_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g) @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]))
    y = x[:, 0] + 0.1 * torch.randn(40, generator=g)
    x_new, y_new, k = foma_transform(x, y, lam=0.3, rho=0.8)
    s = torch.linalg.svdvals(torch.cat([x, y[:, None]], 1))
    s_new = torch.linalg.svdvals(torch.cat([x_new, y_new[:, None]], 1))
    assert 0 < k < len(s)
    assert torch.allclose(s_new[:k], s[:k], rtol=1e-4)
    assert torch.allclose(s_new[k:], 0.3 * s[k:], rtol=1e-3)
    assert (y_new - y).abs().max() > 1e-2            # the labels really are transformed
    x_same, y_same, _ = foma_transform(x, y, lam=1.0)
    assert torch.allclose(x_same, x, atol=1e-4) and torch.allclose(y_same, y, atol=1e-4)


# ------------------------------------------------------------------ every backbone

@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_works_on_a_backbone_whose_batch_cannot_be_mixed(cls):
    rng = np.random.default_rng(0)
    t = torch.as_tensor(rng.normal(size=(64, 6)), dtype=torch.float32)
    y = (t[:, 0] + 0.5 * t[:, 1]).numpy()
    ids = np.arange(64).astype(str)
    data = FitData(Subset(GraphLikeInputs(t[:48]), y[:48], ids[:48]), Subset(GraphLikeInputs(t[48:]), y[48:], ids[48:]))
    model, method, c = GraphLikeModule(), cls(), ctx()
    method.setup(model, data, c)
    batch = next(data.train.batches(32, torch.device("cpu"), shuffle=True, generator=c.rng))
    loss = method.loss(model, batch, c)
    loss.backward()
    assert torch.isfinite(loss) and model.lin.weight.grad.abs().sum() > 0
    if "space" in method.get_params():
        with pytest.raises(ValueError, match="space='input'"):
            cls(space="input").setup(model, data, c)
