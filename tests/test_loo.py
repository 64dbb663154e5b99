"""Leave-one-X task families and the tree backbones."""
import hashlib

import numpy as np
import pandas as pd
import pytest

from oodbench import hookimpl, plugins
from oodbench.data import Dataset, DatasetSpec
from oodbench.results import ResultStore
from oodbench.runner import IncompatibleError, RunSpec, check_compatible, run
from oodbench_plugins.families import loo
from oodbench_plugins.families.elements import elements_of, member_matrix, symbol_matrix

from conftest import has_data

needs_mp = pytest.mark.skipif(not has_data("other/mp_2019_roost"), reason="mp_2019 data not found")

TRICKY = ["NaN", "Ag(AuF4)2", "Ca10(PO4)6(OH)2", "Li0.5Co0.5O2", "Fe0Ni1", "Fe0.0Ni", "Fe1.0O1.50", "H2O",
          "Ag12Sn7H16(Se11N2)2", "Pa", "Cs2Se3Sn1", "Ta2Te1Zr1"]


def pmg_elements(formula):
    from pymatgen.core import Composition
    return {e.symbol for e in Composition(formula).elements}


def test_regex_parser_agrees_with_pymatgen():
    for f in TRICKY:
        assert elements_of(f) == pmg_elements(f), f
    with pytest.raises(ValueError, match="not an element"):
        elements_of("Xx2O")
    M, symbols = symbol_matrix(TRICKY)
    from pymatgen.core import Element
    assert symbols == sorted(symbols, key=lambda s: Element(s).Z)
    for i, f in enumerate(TRICKY):
        assert {symbols[j] for j in np.flatnonzero(M[i])} == pmg_elements(f)


@needs_mp
def test_regex_parser_agrees_with_pymatgen_on_mp_sample():
    from oodbench.data import load_dataset
    ds = load_dataset("mp_2019")
    M, symbols = member_matrix(ds)
    rows = np.random.default_rng(1).choice(len(ds), 1500, replace=False)
    for i in rows:
        assert {symbols[j] for j in np.flatnonzero(M[i])} == pmg_elements(ds.formulas[i]), ds.formulas[i]


# ---------------------------------------------------------------- a toy family through the real machinery

CATIONS = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Zn"]
ANIONS = ["F", "Cl", "Br", "I", "O", "S", "Se"]


def toy_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for a in CATIONS:
        for b in ANIONS:
            for n in (1, 2, 3):
                f = f"{a}{b}{n}" if n > 1 else f"{a}{b}"
                rows.append((f"toy-{len(rows)}", f, float(rng.normal()) + 0.3 * n))
    rows.append(("toy-bad", "LiF4", float("nan")))  # a missing label is in no part of any split
    return pd.DataFrame(rows, columns=["id", "formula", "target"])


TOY_FAMS = [loo.LooFamilyDef(f"toy-loo-{by}", "loo_toy", "target", by, "toy label", min_test=15,
                             val_fraction=0.2) for by in ("element", "group", "period")]


class ToyPlugin:
    @hookimpl
    def oodbench_datasets(self):
        table = toy_table()
        digest = hashlib.sha256(table.to_csv().encode()).hexdigest()  # content-keyed caches see edits
        return [DatasetSpec("loo_toy", lambda home: Dataset("loo_toy", table, {"kind": "synthetic",
                                                                               "sha256": digest}), "toy")]

    @hookimpl
    def oodbench_task_families(self):
        return [loo.make_family(f) for f in TOY_FAMS]


@pytest.fixture
def toy():
    plugins.registries()  # load the entry points first, so the toy plugin is added to them
    plugins.register(ToyPlugin(), name="loo-toy")
    yield plugins.registries()
    plugins.reset()
    loo._member_sizes.cache_clear()


def test_family_members_are_deterministic_and_sized(toy):
    fam = toy.families.get("toy-loo-element")
    first = fam.members()
    assert first == fam.members()
    # only symbols with >= 15 labelled rows (each anion: 8 cations x 3; cations: 7 x 3), ordered by Z
    assert first == ["Li", "O", "F", "Na", "Mg", "S", "Cl", "K", "Ca", "Zn", "Se", "Br", "Sr", "I", "Ba"]
    assert toy.families.get("toy-loo-period").members() == ["2", "3", "4", "5", "6"]
    for key in ("O", "Li", "Ba"):
        spec = fam.make(key)
        a, b = spec.load().split, fam.make(key).load().split
        assert a.hash == b.hash and np.array_equal(a.train, b.train)
        assert spec.meta["sizes"] == a.sizes()  # what `oodbench list tasks --family` shows is the real split


@pytest.mark.parametrize("fam_name,key,banned", [("toy-loo-element", "O", {"O"}),
                                                  ("toy-loo-group", "17", {"F", "Cl", "Br", "I"}),
                                                  ("toy-loo-period", "2", {"Li", "F", "O"})])
def test_left_out_elements_never_in_train_or_val(toy, fam_name, key, banned):
    td = toy.families.get(fam_name).make(key).load()
    s = td.split
    forms = np.array(td.dataset.formulas)
    assert len(s.test) >= 15
    for f in forms[np.concatenate([s.train, s.val])]:
        assert not pmg_elements(f) & banned, f
    for f in forms[s.test]:
        assert pmg_elements(f) & banned, f
    bad = int(np.flatnonzero(td.dataset.ids == "toy-bad")[0])
    assert bad not in set(s.train) | set(s.val) | set(s.test)
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test)


@needs_mp
def test_mp_family_holds_out_oxygen_everywhere():
    from oodbench.tasks import get_task
    spec = get_task("mp-eform-loo-element:O")
    td = spec.load()
    forms = pd.Series(td.dataset.formulas)
    has_o = forms.str.contains(r"O(?![a-z])")  # an independent check: "O" not followed by a lower-case letter
    assert not has_o.iloc[np.concatenate([td.split.train, td.split.val])].any()
    assert has_o.iloc[td.split.test].all()
    assert spec.meta["sizes"] == td.split.sizes()
    assert 0.09 < len(td.split.val) / (len(td.split.val) + len(td.split.train)) < 0.11


# ---------------------------------------------------------------- tree backbones

def test_trees_refuse_gradient_methods(toy):
    from oodbench.api import Method

    class NeedsGrad(Method):
        name = "needs-grad-toy"
        description = "toy"
        requires_gradients = True

    class Plugin:
        @hookimpl
        def oodbench_methods(self):
            return [NeedsGrad]

    plugins.register(Plugin(), name="needs-grad-toy")
    for backbone in ("forest", "xgboost"):
        with pytest.raises(IncompatibleError, match="needs gradients or embeddings.*use method 'erm'"):
            check_compatible("toy-loo-element:O", "needs-grad-toy", backbone)
        check_compatible("toy-loo-element:O", "erm", backbone)  # ERM is fine


def test_tree_module_has_no_embedding():
    from oodbench_plugins.backbones.trees import RandomForest
    m = RandomForest().build(None, seed=0)
    assert m.gradient_free and not list(m.parameters())
    with pytest.raises(TypeError, match="no embedding and no gradients"):
        m.embed(None)


@pytest.mark.parametrize("backbone", ["forest", "xgboost"])
def test_tiny_erm_tree_run(toy, tmp_path, backbone):
    spec = RunSpec(task="toy-loo-element:O", method="erm", backbone=backbone, seed=0, preset="small")
    rec = run(spec, ResultStore(tmp_path))
    assert rec["config"]["backbone"] == backbone and rec["training"]["epochs"] == 0
    assert len(rec["predictions"]["y_pred"]) == rec["task"]["sizes"]["test"] == 24
    assert np.all(np.isfinite(rec["predictions"]["y_pred"])) and np.isfinite(rec["metrics"]["mae"])
    again = run(RunSpec(task="toy-loo-element:O", method="erm", backbone=backbone, seed=0, preset="small"),
                ResultStore(tmp_path / "again"))
    assert again["predictions"]["y_pred"] == rec["predictions"]["y_pred"]  # deterministic for a seed


def test_missing_xgboost_is_a_clear_incompatibility(toy, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xgboost" else real(name, *a))
    with pytest.raises(IncompatibleError, match="pip install xgboost-cpu"):
        check_compatible("toy-loo-element:O", "erm", "xgboost")
    check_compatible("toy-loo-element:O", "erm", "forest")
