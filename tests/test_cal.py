"""CAL: SAL attack and weight update, partial sampling, seed provenance, fine-tuning, frozen CAL splits."""
import functools
import json
import os
import resource
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from oodbench.api import Context
from oodbench.runner import IncompatibleError, check_compatible
from oodbench.tasks import read_split_file
from oodbench.testing import check_method, toy_dataset, toy_fit_data
from oodbench_plugins.backbones.irnet import IRNet, IRNetModule
from oodbench_plugins.methods import cal as cal_pkg
from oodbench_plugins.methods.cal import CAL, CALAdversarialOnly, CALPartialOnly
from oodbench_plugins.methods.cal.sal import (PerturbationSpace, StableAdversary, huber,
                                              vjp_through_parameter_gradient)
from oodbench_plugins.methods.cal.sampling import highest_loss_rows
from oodbench_plugins.methods.finetune import FineTune

TASKS = Path(__file__).resolve().parents[1] / "tasks"
CPU = torch.device("cpu")


def module(n_in=12, widths=(32, 16), seed=0):
    torch.manual_seed(seed)
    return IRNetModule(n_in, widths, 0.0, torch.zeros(n_in), torch.ones(n_in)).eval()


def loss_of(pred, y):
    return huber(pred, y, 1.0)


# ---------------------------------------------------------------- SAL

def test_attack_raises_loss_and_moves_unstable_features_more():
    m = module()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 12, generator=g)
    y = torch.randn(256, generator=g)
    space = PerturbationSpace(m)
    sal = StableAdversary(12, steps=3, step_size=0.1)
    sal.w[:6] = 0.05          # unstable covariates: cheap to move
    sal.w[6:] = 5.0           # stable covariates: 100x the cost
    p0 = space.encode(x)
    p_adv, dxA_dw = sal.attack(space.decode, p0, y, loss_of)
    with torch.no_grad():
        before, after = loss_of(space.decode(p0), y), loss_of(space.decode(p_adv), y)
    assert after.mean() > before.mean()
    assert (after >= before - 1e-6).float().mean() > 0.95
    moved = (p_adv - p0).abs().mean(0)
    assert moved[:6].mean() > 5 * moved[6:].mean()
    # a larger weight pulls a covariate back towards its seed: d|delta|/dw < 0 (almost everywhere)
    assert ((dxA_dw * (p_adv - p0)) < 0).float().mean() > 0.9


def test_gamma_is_the_inverse_of_the_smallest_weight():
    sal = StableAdversary(4)
    sal.w[:] = torch.tensor([2.0, 4.0, 8.0, 0.5])
    assert sal.gamma == pytest.approx(2.0)


def test_vjp_equals_explicit_jacobian_product_on_a_tiny_model():
    m = module(n_in=5, widths=(7,))
    params = [p for p in m.parameters()]
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.randn(4)
    v = [torch.randn_like(p) for p in params]
    _, vjp = vjp_through_parameter_gradient(loss_of(m(x), y).mean(), params, v, x)

    flat_v = torch.cat([t.reshape(-1) for t in v])

    def flat_grad(xx):
        gs = torch.autograd.grad(loss_of(m(xx), y).mean(), params, create_graph=True)
        return torch.cat([t.reshape(-1) for t in gs])
    J = torch.autograd.functional.jacobian(flat_grad, x.detach())   # [P, 4, 5], fine at this size
    expected = torch.einsum("p,pbd->bd", flat_v, J)
    torch.testing.assert_close(vjp, expected, rtol=1e-4, atol=1e-6)


def test_weight_update_never_materialises_the_jacobian(monkeypatch):
    # IR-net at the paper's widths: 2.8 M parameters; d(grad_theta loss)/dx_A for 64 seeds x 145
    # covariates would be 2.8e6 * 64 * 145 floats, about 100 GB.
    torch.manual_seed(0)
    m = IRNetModule(145, (2048, 1024, 512), 0.1, torch.zeros(145), torch.ones(145))
    n_params = sum(p.numel() for p in m.parameters())
    jac_bytes = n_params * 64 * 145 * 4
    assert jac_bytes > 50e9, "the model must be too large for the full Jacobian"

    def forbidden(*a, **k):
        raise AssertionError("full Jacobian requested")
    monkeypatch.setattr(torch.autograd.functional, "jacobian", forbidden)
    monkeypatch.setattr(torch.func, "jacrev", forbidden)
    monkeypatch.setattr(torch.func, "jacfwd", forbidden)

    method = CAL(n_seeds=64, adv_steps=1)
    params = [p for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x, y = torch.randn(64, 145), torch.randn(64)
    adversary = [None]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    method._adversarial_step(m.train(), params, opt, PerturbationSpace(m), adversary, x, y, x, y, epoch=0,
                             rng=np.random.default_rng(0))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    assert grown < 2e9, f"peak memory grew by {grown / 1e9:.1f} GB"
    w = adversary[0].w
    assert not torch.allclose(w, torch.ones_like(w)), "the SAL weights did not move"
    assert torch.all(w >= method.w_floor)


# ---------------------------------------------------------------- partial sampling

@functools.lru_cache(maxsize=None)
def _toy_inputs(n=48):
    ds = toy_dataset(n)
    return IRNet(widths=(16, 8)).featurize(ds, None), ds.table["target"].to_numpy()


def _toy(pool=False):
    inputs, y = _toy_inputs()
    data, test = toy_fit_data(inputs, y, pool=pool)
    return IRNet(widths=(16, 8)), inputs, data, test


def test_partial_sampling_picks_the_highest_loss_samples():
    bb, _, data, _ = _toy()
    m = bb.build(data.train, seed=0)
    with torch.no_grad():                 # a model that predicts 0: the loss ranks |y|
        m.out.weight.zero_()
        m.out.bias.zero_()
    rows = highest_loss_rows(m, data.train, 0.25, CPU, beta=1.0)
    k = int(np.ceil(0.25 * len(data.train)))
    assert len(rows) == k
    assert set(rows) == set(np.argsort(-np.abs(data.train.y), kind="stable")[:k])


def test_after_warmup_cal_ps_trains_only_on_the_ranked_subset(monkeypatch):
    _, _, data, _ = _toy()
    ranked, trained = [], []
    real_rank, real_batches = cal_pkg.highest_loss_rows, cal_pkg._CALBase._batches

    def rank(*a, **k):
        ranked.append(set(real_rank(*a, **k)))
        return np.array(sorted(ranked[-1]))

    def batches(self, rows, rng):
        for b in real_batches(self, rows, rng):
            trained.append(set(b))
            yield b
    monkeypatch.setattr(cal_pkg, "highest_loss_rows", rank)
    monkeypatch.setattr(cal_pkg._CALBase, "_batches", batches)
    method = CALPartialOnly(warmup_epochs=2, rerank_every=2, max_epochs=4, batch_size=4, patience=100)
    ctx = Context(device=CPU, seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
    method.fit(IRNet(widths=(16, 8)).build(data.train, 0), data, ctx)
    assert len(ranked) == 1 and len(ranked[0]) == int(np.ceil(0.2 * len(data.train)))
    per_epoch_warm = len(data.train) // 4
    assert len(set().union(*trained[:per_epoch_warm])) == 4 * per_epoch_warm   # warm-up: all data
    after = trained[2 * per_epoch_warm:]
    assert after and all(b <= ranked[0] for b in after)


# ---------------------------------------------------------------- seeds

@pytest.mark.parametrize("targeted", [False, True])
def test_adversarial_seeds_come_from_train_or_pool_never_test(targeted):
    _, _, data, test = _toy(pool=targeted)
    test_ids = {f"r{i}" for i in test}
    assert not targeted or set(data.pool.ids) <= test_ids    # toy pool rows are held-out rows, like the runner's
    # the runner hands the method the pool and evaluates the rest: model that split here too
    eval_ids = test_ids - set(data.pool.ids) if targeted else test_ids
    method = CAL(warmup_epochs=0, max_epochs=3, batch_size=8, n_seeds=4, patience=100)
    ctx = Context(device=CPU, seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
    method.fit(IRNet(widths=(16, 8)).build(data.train, 0), data, ctx)
    seeds = set(method.seed_ids_)
    assert seeds, "no adversarial step ran"
    assert not seeds & eval_ids
    if targeted:
        assert method.seed_source_ == "pool" and seeds <= set(data.pool.ids)
        assert not seeds & set(data.train.ids)
    else:
        assert method.seed_source_ == "train" and seeds <= set(data.train.ids)
    assert ctx.info["adversarial_seed_source"] == method.seed_source_


def test_cal_ps_refuses_a_pool():
    assert CAL.uses_target_pool and CALAdversarialOnly.uses_target_pool and not CALPartialOnly.uses_target_pool
    _, _, data, _ = _toy(pool=True)
    ctx = Context(device=CPU, seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
    with pytest.raises(ValueError, match="target pool"):
        CALPartialOnly(max_epochs=1).fit(IRNet(widths=(16, 8)).build(data.train, 0), data, ctx)


def test_embedding_space_attack_for_backbones_without_input_normalisation():
    class GraphLike(torch.nn.Module):
        """Only embed/head, like a crystal-graph backbone."""
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(6, 5)
            self.out = torch.nn.Linear(5, 1)

        def embed(self, x):
            return torch.tanh(self.enc(x))

        def head(self, z):
            return self.out(z).squeeze(-1)

        def forward(self, x):
            return self.head(self.embed(x))
    torch.manual_seed(0)
    m = GraphLike()
    space = PerturbationSpace(m)
    assert not space.on_inputs and space.kind == "embeddings"
    method = CAL(n_seeds=8)
    params = list(m.parameters())
    adversary = [None]
    x, y = torch.randn(8, 6), torch.randn(8)
    method._adversarial_step(m, params, torch.optim.AdamW(params, 1e-2), space, adversary, x, y, x, y, 0,
                             np.random.default_rng(0))
    assert adversary[0].w.shape == (5,)


# ---------------------------------------------------------------- conformance and fine-tuning

def test_conformance_cal_targeted():
    check_method(CAL, params=dict(warmup_epochs=1, batch_size=8, n_seeds=4))


def test_finetune_needs_a_pool_and_changes_the_model_on_it():
    _, inputs, data, test = _toy(pool=False)
    ctx = Context(device=CPU, seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
    with pytest.raises(ValueError, match="--adapt"):
        FineTune(max_epochs=1).fit(IRNet(widths=(16, 8)).build(data.train, 0), data, ctx)
    _, inputs, data, test = _toy(pool=True)
    fitted = {}
    for epochs in (0, 5):
        torch.manual_seed(0)
        ctx = Context(device=CPU, seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
        method = FineTune(max_epochs=2, batch_size=8, finetune_epochs=epochs, finetune_lr_factor=1.0)
        m = method.fit(IRNet(widths=(16, 8)).build(data.train, 0), data, ctx)
        fitted[epochs] = method.predict(m, data.pool.inputs, ctx)
    err = {e: np.abs(p - data.pool.y).mean() for e, p in fitted.items()}
    assert err[5] < err[0]


def test_runner_refuses_finetune_without_adapt():
    with pytest.raises(IncompatibleError, match="--adapt"):
        check_compatible("phonons-top", "finetune", "irnet", adapt_k=0)
    check_compatible("phonons-top", "finetune", "irnet", adapt_k=64)
    with pytest.raises(IncompatibleError):
        check_compatible("phonons-top", "cal-ps", "irnet", adapt_k=64)


# ---------------------------------------------------------------- frozen CAL splits

def _cal_tasks():
    out = []
    for p in sorted(TASKS.glob("*.toml")):
        d = tomllib.loads(p.read_text())
        if d["split"]["kind"] == "frozen-ids":
            out.append(d)
    return out


def test_frozen_cal_split_files_are_disjoint_and_complete():
    tasks = _cal_tasks()
    assert {t["name"] for t in tasks} >= {"phonons-cal-covariate", "phonons-cal-prior-max", "phonons-cal-prior-min",
                                          "phonons-cal-iid"}
    files = {}
    for t in tasks:
        files.setdefault(t["split"]["file"], (t["split"]["sha256"], []))[1].append(t)
    for rel, (sha, members) in files.items():
        doc = read_split_file(TASKS / rel, sha)
        groups = {g: set(v) for g, v in doc["groups"].items()}
        core = ("train", "val", "iid-test")
        for a in core:
            for b in groups:
                if a != b:
                    assert not groups[a] & groups[b], f"{rel}: {a} and {b} overlap"
        assert len(set().union(*groups.values())) == doc["rows"], f"{rel}: groups do not cover every row"
        for t in members:
            assert t["split"]["test"] in groups and t["meta"].get("adapt_k", 0) < len(groups[t["split"]["test"]])


def test_frozen_split_rejects_a_changed_file(tmp_path):
    t = next(t for t in _cal_tasks() if t["name"] == "phonons-cal-iid")
    raw = (TASKS / t["split"]["file"]).read_bytes()
    bad = tmp_path / "x.json.gz"
    bad.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(ValueError, match="sha256"):
        read_split_file(bad, t["split"]["sha256"])


@pytest.mark.skipif(not Path(os.environ.get("OODBENCH_DATA", "/nonexistent"), "matminer",
                             "matbench_phonons.json.gz").exists(), reason="matbench_phonons not found")
def test_frozen_phonons_task_loads_with_the_recorded_sizes():
    from oodbench.tasks import get_task
    td = get_task("phonons-cal-prior-max").load()
    s = td.split
    assert len(set(s.train) | set(s.val) | set(s.test)) == len(s.train) + len(s.val) + len(s.test)
    assert s.extrapolation["side"] == "top" and td.y[s.test].min() > s.extrapolation["boundary"]
    doc = json.loads(__import__("gzip").decompress((TASKS / "splits/phonons-cal.json.gz").read_bytes()))
    assert set(doc["groups"]["prior-max"]) == set(td.dataset.ids[s.test])


@pytest.mark.parametrize("cls", [CAL, CALPartialOnly, CALAdversarialOnly])
def test_a_warmup_checkpoint_is_never_returned(cls, monkeypatch):
    # validation that only gets worse: the best epoch overall is 0, inside the warm-up
    calls = iter(range(1000))
    monkeypatch.setattr(cal_pkg, "mae", lambda pred, y: float(next(calls)))
    _, _, data, _ = _toy()
    ctx = Context(device=CPU, seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
    kw = {} if cls is CALPartialOnly else {"n_seeds": 4}
    cls(warmup_epochs=2, max_epochs=8, batch_size=8, patience=2, **kw).fit(
        IRNet(widths=(16, 8)).build(data.train, 0), data, ctx)
    assert ctx.info["best_epoch"] == 2            # the first averaged checkpoint, not epoch 0
    assert ctx.info["epochs"] == 5                # patience counts from there: stop 2 worse epochs later
