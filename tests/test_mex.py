"""MEX: the batched score equals its reference form, NCE learns the true label, the Monte-Carlo search
finds a known maximiser (also beyond the training range), and the searched range and λ are recorded."""
import numpy as np
import pytest
import torch

from oodbench.api import Context, FitData, Subset, TensorInputs
from oodbench.testing import check_method
from oodbench_plugins.backbones.irnet import IRNetModule
from oodbench_plugins.methods.mex import MEX
from oodbench_plugins.methods.mex.model import MEXModule, mex_loss
from oodbench_plugins.methods.mex.search import mc_maximise

from conftest import needs_matbench

FAST = dict(n_noise=16, candidates=64, iters=3, val_candidates=16, val_iters=1)


@pytest.fixture(autouse=True)
def one_thread():
    # these tensors are tiny: a second OpenMP thread only adds synchronisation, which on a
    # busy machine costs far more than the arithmetic
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _net(score="mlp", act="relu", n_in=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    bb = IRNetModule(n_in, (32, 16), 0.0, torch.zeros(n_in), torch.ones(n_in))
    return MEXModule(bb, score, 24, act, 0.1, (-3.0, 3.0)).to(dtype)


@pytest.mark.parametrize("score", ["mlp", "mlp+cos", "cos"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_segment_tables_equal_the_direct_score_and_gradient(score, act):
    net = _net(score, act, dtype=torch.float64)
    with torch.no_grad():
        net.label_encoder.weight[2] = 0.0  # a unit whose pre-activation does not depend on y
    x = torch.randn(5, 4, dtype=torch.float64)
    y = 3 * torch.randn(5, 200, dtype=torch.float64)
    fast = net.score(net.material_part(net.embed(x)), y)
    ref = net.score_direct(net.material_part(net.embed(x), tables=False), y)
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-9)
    params = list(net.parameters())
    g_fast = torch.autograd.grad(fast.square().sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    with torch.no_grad():  # the in-place inference path
        torch.testing.assert_close(net.score(net.material_part(net.embed(x)), y), ref.detach(), rtol=1e-9, atol=1e-9)


def test_nce_training_makes_the_true_label_score_highest():
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(256, 4, generator=g) - 1
    y = x[:, 0] * 1.5  # the label is a known function of the input
    net = _net("mlp")
    sigmas = torch.tensor([0.075, 0.15, 0.3])
    grid = torch.linspace(-2, 2, 161)

    def grid_error():
        with torch.no_grad():
            s = net.score(net.material_part(net.embed(x[:64])), grid.expand(64, -1))
            return float((grid[s.argmax(1)] - y[:64]).abs().mean())

    before = grid_error()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for step in range(120):
        idx = torch.randint(256, (64,), generator=g)
        loss, l_nce, _ = mex_loss(net, x[idx], y[idx], 64, sigmas, 0.5, g)
        first = float(l_nce) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = grid_error()
    assert float(l_nce) < first - 1.0, (first, float(l_nce))
    assert before > 0.5 and after < 0.1, (before, after)


def test_search_recovers_known_maximisers_inside_and_beyond_the_training_range():
    # training labels would span [-1, 1]; the searched prior range is [-3, 4]
    target = torch.tensor([-2.7, -0.4, 0.3, 1.9, 3.55, 10.0])  # the last lies beyond the range: clipped to 4
    calls = []

    def score(y):
        calls.append(tuple(y.shape))
        return -((y - target[:, None]) / 0.05) ** 2

    g = torch.Generator().manual_seed(0)
    got = mc_maximise(score, 6, -3.0, 4.0, candidates=300, iters=10, noise=0.1, beta=0.5, generator=g,
                      device="cpu")
    expect = target.clamp(-3.0, 4.0)
    assert torch.all((got - expect).abs() < 5e-3), (got, expect)
    assert calls == [(6, 300)] * 11, "every round scores all rows' candidates in one [B, C] call"


def test_search_prefers_the_higher_of_two_modes():
    def score(y):  # a broad bump at 0 (height 1) and a narrow, higher one at 2.5 (height 3)
        return torch.exp(-y ** 2) + 3 * torch.exp(-((y - 2.5) / 0.05) ** 2)

    g = torch.Generator().manual_seed(1)
    got = mc_maximise(score, 8, -3.0, 4.0, candidates=1500, iters=10, noise=0.1, beta=0.5, generator=g,
                      device="cpu")
    assert torch.all((got - 2.5).abs() < 5e-3), got


def _toy_fit_data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32))
    y = X[:, 0].numpy() + 0.1 * rng.normal(size=n).astype(np.float32)
    order = np.argsort(y)
    tr, va, te = order[: n // 2], order[n // 2: 3 * n // 4], order[3 * n // 4:]  # test = top labels
    ids = np.array([f"r{i}" for i in range(n)])
    inputs = TensorInputs(X)
    sub = lambda r: Subset(inputs.take(r), y[r], ids[r])  # noqa: E731
    data = FitData(sub(tr), sub(va), label_range=(float(y.min()), float(y.max())), y_mean=2.0, y_scale=3.0)
    return data, inputs.take(te), y[te]


def test_searched_range_and_lambda_are_recorded_and_bound_the_predictions():
    data, test_inputs, _ = _toy_fit_data()
    lo, hi = data.label_range
    for params, expect, source in [
        ({}, (lo, hi), "dataset"),
        ({"range_margin": 0.25}, (lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)), "dataset"),
        ({"label_range": (-1.0, 20.0)}, ((-1.0 - 2.0) / 3.0, (20.0 - 2.0) / 3.0), "hyperparameter"),
    ]:
        method = MEX(max_epochs=1, lam=0.75, **FAST, **params)
        ctx = Context(torch.device("cpu"), 0, np.random.default_rng(0), log=lambda *a: None)
        torch.manual_seed(0)
        model = method.fit(IRNetModule(4, (16,), 0.0, torch.zeros(4), torch.ones(4)), data, ctx)
        np.testing.assert_allclose(ctx.info["mex_label_range_std"], expect, rtol=1e-6)
        np.testing.assert_allclose(ctx.info["mex_label_range"], np.array(expect) * 3.0 + 2.0, rtol=1e-6)
        assert source in ctx.info["mex_label_range_source"]
        assert ctx.info["mex_lambda"] == 0.75 and method.get_params()["lam"] == 0.75
        assert ctx.info["mex_val_candidates"] == FAST["val_candidates"]
        np.testing.assert_allclose(model.label_range.numpy(), expect, rtol=1e-6)  # checkpointed with the model
        pred = method.predict(model, test_inputs, ctx)
        assert pred.shape == (len(test_inputs),)
        assert np.all(pred >= expect[0] - 1e-6) and np.all(pred <= expect[1] + 1e-6)


def test_bad_settings_fail_with_a_clear_message():
    data, _, _ = _toy_fit_data()
    ctx = Context(torch.device("cpu"), 0, np.random.default_rng(0), log=lambda *a: None)
    bb = IRNetModule(4, (16,), 0.0, torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="score="):
        MEX(score="dot", **FAST).fit(bb, data, ctx)
    data.label_range = None
    with pytest.raises(ValueError, match="label_range"):
        MEX(**FAST).fit(bb, data, ctx)
    with pytest.raises(TypeError, match="MEXModule"):
        MEX(**FAST).predict(bb, data.val.inputs, ctx)


def test_mex_passes_the_method_conformance_kit():
    check_method(MEX, params=FAST)


@needs_matbench
def test_runner_records_the_dataset_range_beyond_the_training_labels(tmp_path):
    from oodbench.runner import RunSpec, run
    rec = run(RunSpec(task="phonons-top", method="mex", backbone="irnet", seed=0, preset="small", epochs=1,
                      method_params={**FAST, "lam": 0.25}), store=None, log=lambda *a: None)
    from oodbench.tasks import get_task
    td = get_task("phonons-top").load()
    lo, hi = rec["training"]["mex_label_range"]
    assert lo == pytest.approx(td.y.min(), rel=1e-5) and hi == pytest.approx(td.y.max(), rel=1e-5)
    assert hi > td.y[td.split.train].max(), "top-side task: the searched range must reach past the training labels"
    assert rec["method"]["params"]["lam"] == 0.25 and rec["training"]["mex_lambda"] == 0.25
    assert rec["method"]["params"]["candidates"] == FAST["candidates"]
