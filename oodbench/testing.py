"""Conformance kit for method and backbone plugins (like scikit-learn's ``check_estimator``).

Third parties run it in their own CI::

    from oodbench.testing import check_method, check_backbone
    def test_my_method():
        check_method(MyMethod)

Every check uses a tiny synthetic dataset of real crystals (rock-salt and
CsCl-type binaries built with pymatgen), so no data files are needed.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch

from .api import COMPOSITION, Backbone, BackboneModule, Context, FitData, Method, Subset
from .data import Dataset

_CATIONS = ["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba", "Zn", "Cd", "Ag", "Cu", "Ni"]
_ANIONS = ["F", "Cl", "Br", "I", "O", "S", "Se", "Te"]


def toy_dataset(n: int = 48, seed: int = 0) -> Dataset:
    """``n`` binary crystals with a smooth label of their composition (``target``)."""
    from pymatgen.core import Element, Lattice, Structure
    pairs = list(itertools.product(_CATIONS, _ANIONS))
    rng = np.random.default_rng(seed)
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)]
    structures, ys = [], []
    for i, (a, b) in enumerate(chosen):
        r = (Element(a).atomic_radius or 1.5) + (Element(b).atomic_radius or 1.5)
        if i % 2:  # rock salt, primitive fcc cell
            h = float(r)
            s = Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
        else:  # CsCl type
            s = Structure(Lattice.cubic(1.15 * float(r)), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
        structures.append(s)
        ys.append(float(Element(a).X - Element(b).X) + 0.1 * float(r))
    table = pd.DataFrame({"id": [f"toy-{i}" for i in range(len(chosen))],
                          "formula": [s.composition.formula for s in structures], "target": ys})
    return Dataset("toy", table, {"kind": "synthetic", "sha256": f"toy{seed}{n}"}, _structures=lambda: structures)


def toy_fit_data(inputs, y: np.ndarray, seed: int = 0, pool: bool = False) -> tuple[FitData, np.ndarray]:
    """Random train/val(/pool)/test parts; returns FitData and the test rows."""
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    te, va, tr = perm[: n // 5], perm[n // 5: 2 * n // 5], perm[2 * n // 5:]
    ys = ((y - y[tr].mean()) / (y[tr].std() or 1.0)).astype(np.float32)
    ids = np.array([f"r{i}" for i in range(n)])
    def sub(rows):
        return Subset(inputs.take(rows), ys[rows], ids[rows])
    pool_rows = te[: max(2, len(te) // 2)] if pool else None
    data = FitData(sub(tr), sub(va), pool=sub(pool_rows) if pool else None,
                   label_range=(float(ys.min()), float(ys.max())))
    return data, te


def _check_params(cls) -> None:
    obj = cls()
    params = obj.get_params()
    clone = cls(**params)
    assert clone.get_params() == params, f"{cls.__name__}: cls(**get_params()) changes the hyperparameters"
    for k, v in params.items():
        assert getattr(obj, k) == v, f"{cls.__name__}: constructor must store {k!r} unchanged"
    try:
        cls().set_params(__no_such_param__=1)
    except ValueError:
        pass
    else:
        raise AssertionError(f"{cls.__name__}.set_params accepted an unknown hyperparameter")


def check_backbone(cls: type[Backbone], preset: str = "small", params: dict | None = None,
                   dataset: Dataset | None = None) -> None:
    """Contracts of a backbone: hyperparameters, featurize, shapes, gradients, seeding, batch independence."""
    assert getattr(cls, "name", None), "a backbone needs a `name`"
    _check_params(cls)
    bb = cls()
    if preset in cls.presets:
        bb.set_params(**cls.presets[preset])
    bb.set_params(**(params or {}))
    ds = dataset or toy_dataset(24)
    inputs = bb.featurize(ds, None)
    assert len(inputs) == len(ds), "featurize must give one input per dataset row"
    y = ds.table["target"].to_numpy()
    data, _ = toy_fit_data(inputs, y)
    m1 = bb.build(data.train, seed=3)
    assert isinstance(m1, BackboneModule), "build must return an oodbench.api.BackboneModule"
    if cls.gradient_free:
        m1.fit_direct(data.train, data.val, seed=3)
        p = m1.predict_direct(inputs)
        assert p.shape == (len(ds),) and np.all(np.isfinite(p))
        return
    m2 = bb.build(data.train, seed=3)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b), "build(seed) must be deterministic"
    m1.eval()
    idx = np.arange(min(6, len(ds)))
    x = inputs.batch(idx, torch.device("cpu"))
    z = m1.embed(x)
    assert z.shape == (len(idx), m1.embedding_dim), f"embed gives {tuple(z.shape)}, expected ({len(idx)}, {m1.embedding_dim})"
    out = m1.head(z)
    assert out.shape == (len(idx),), f"head must give shape [B], got {tuple(out.shape)}"
    assert torch.isfinite(out).all()
    alone = m1(inputs.batch(idx[:1], torch.device("cpu")))
    assert torch.allclose(alone, out[:1], atol=1e-4, rtol=1e-4), "a prediction must not depend on its batch-mates"
    m1.train()
    m1(x).sum().backward()
    grads = [p.grad for p in m1.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reaches the parameters"


def check_method(cls: type[Method], backbone: Backbone | None = None, max_epochs: int = 2,
                 params: dict | None = None) -> None:
    """Contracts of a method: hyperparameters, a short fit, finite predictions, seeded reproducibility."""
    assert getattr(cls, "name", None), "a method needs a `name`"
    assert cls.description, f"method {cls.name}: give a one-line `description`"
    _check_params(cls)
    if backbone is None:  # the built-in IR-net, found like any plugin (core never imports plugin modules)
        from .plugins import registries
        backbone = registries().backbones.get("irnet")(widths=(32, 16))
    ds = toy_dataset(48)
    inputs = backbone.featurize(ds, None)
    y = ds.table["target"].to_numpy()

    def fit_predict():
        method = cls()
        if "max_epochs" in method.get_params():
            method.set_params(max_epochs=max_epochs)
        method.set_params(**(params or {}))
        torch.manual_seed(0)
        data, test = toy_fit_data(inputs, y, pool=cls.uses_target_pool)
        if not cls.uses_label_range_prior:
            data.label_range = None
        ctx = Context(device=torch.device("cpu"), seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
        model = method.fit(backbone.build(data.train, seed=0), data, ctx)
        return method.predict(model, inputs.take(test), ctx), test

    p1, test = fit_predict()
    assert isinstance(p1, np.ndarray) and p1.shape == (len(test),), \
        f"predict must return a numpy array of shape ({len(test)},), got {getattr(p1, 'shape', type(p1))}"
    assert np.all(np.isfinite(p1)), "predictions must be finite"
    p2, _ = fit_predict()
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-4,
                               err_msg="two fits with the same seed must predict the same")


__all__ = ["check_method", "check_backbone", "toy_dataset", "toy_fit_data", "COMPOSITION"]
