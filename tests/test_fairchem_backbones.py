"""PaiNN / EquiformerV2 backbones: contracts, graph cache, invariances (tiny models, CPU).

Needs the optional extra (``pip install -e ".[fairchem]"``); without it only
the tests of the missing-extra behaviour run.
"""
from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

from oodbench.plugins import registries
from oodbench.testing import check_backbone, toy_dataset, toy_fit_data
from oodbench_plugins.backbones.fairchem import EquiformerV2Backbone, PaiNNBackbone, compat
from oodbench_plugins.backbones.fairchem.graphs import (GraphInputs, GraphSettings, build_graphs,
                                                        graph_cache_path)

try:
    HAVE_FAIRCHEM = importlib.metadata.version("fairchem-core").startswith("1.")
except importlib.metadata.PackageNotFoundError:
    HAVE_FAIRCHEM = False
needs_fairchem = pytest.mark.skipif(not HAVE_FAIRCHEM,
                                    reason='fairchem-core 1.x not installed: pip install -e ".[fairchem]"')
BACKBONES = [PaiNNBackbone, EquiformerV2Backbone]
# fairchem 1.3 on torch 2.13: deprecation notices (torch.jit.script, jittable, cuda.amp) are not our failures
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore:.*jittable.*:UserWarning")
TINY = {"num_layers": 1}  # on top of the `small` preset: invariance does not need depth


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny graphs: intra-op threads only add synchronisation (several times slower on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(cls, **kw):
    return cls().set_params(**{**cls.presets["small"], **kw})


def test_backbones_are_registered_without_the_extra():
    regs = registries()
    assert regs.backbones.get("painn") is PaiNNBackbone
    assert regs.backbones.get("equiformer-v2") is EquiformerV2Backbone
    for cls in BACKBONES:
        assert {"small", "default"} <= set(cls.presets)


def test_missing_extra_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(compat.importlib.metadata, "version", missing)
    compat.fairchem_modules.cache_clear()
    try:
        with pytest.raises(compat.FairchemMissing, match=r'pip install -e "\.\[fairchem\]"'):
            small(PaiNNBackbone).featurize(toy_dataset(4), None)
    finally:
        compat.fairchem_modules.cache_clear()


# ------------------------------------------------------------------ with fairchem

@pytest.fixture(scope="module")
def toy():
    return toy_dataset(24)


@needs_fairchem
@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.name)
def test_conformance(cls, toy):
    check_backbone(cls, params=TINY, dataset=toy)


@needs_fairchem
@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.name)
def test_erm_trains_reproducibly_through_the_shared_loop(cls):
    from oodbench.testing import check_method
    from oodbench_plugins.methods.erm import ERM
    check_method(ERM, backbone=small(cls, **TINY), max_epochs=2, params={"batch_size": 8})


def _model(cls, toy, seed=0, **kw):
    bb = small(cls, **{**TINY, **kw})
    inputs = bb.featurize(toy, None)
    data, _ = toy_fit_data(inputs, toy.table["target"].to_numpy())
    model = bb.build(data.train, seed=seed).eval()
    return bb, model


def _predict(bb, model, structures):
    from oodbench.data import Dataset
    import pandas as pd
    ds = Dataset("t", pd.DataFrame({"id": [str(i) for i in range(len(structures))],
                                    "formula": [s.composition.formula for s in structures]}),
                 {"sha256": "x"}, _structures=lambda: structures)
    inputs = bb.featurize(ds, None)
    with torch.no_grad():
        return model(inputs.batch(np.arange(len(structures)), "cpu")).numpy()


def _variants(s, seed):
    """The same crystal rotated, translated, with sites permuted, and as a 2x1x1 supercell."""
    from pymatgen.core.operations import SymmOp
    from scipy.spatial.transform import Rotation
    rot = s.copy()
    rot.apply_operation(SymmOp.from_rotation_and_translation(Rotation.random(random_state=seed).as_matrix()))
    shifted = s.copy()
    shifted.translate_sites(list(range(len(s))), np.random.default_rng(seed).random(3), frac_coords=True)
    permuted = type(s).from_sites(list(reversed(s.sites)))
    return {"rotated": rot, "translated": shifted, "permuted": permuted, "supercell": s * (2, 1, 1)}


VARIANTS = ("rotated", "translated", "permuted", "supercell")


@needs_fairchem
@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.name)
def test_predictions_invariant_to_rotation_translation_permutation_supercell(cls, toy):
    bb, model = _model(cls, toy)
    base = list(toy.structures[:4])
    variants = [_variants(s, i) for i, s in enumerate(base)]
    p = _predict(bb, model, base + [v[name] for name in VARIANTS for v in variants]).reshape(5, len(base))
    for name, got in zip(VARIANTS, p[1:]):
        np.testing.assert_allclose(got, p[0], rtol=1e-4, atol=1e-4, err_msg=f"{cls.name}: {name} crystal")


def _low_symmetry_crystal():
    from pymatgen.core import Lattice, Structure
    rng = np.random.default_rng(7)
    return Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 81, 97, 103), ["Li", "O", "Fe", "S", "O"],
                     rng.random((5, 3)))


@needs_fairchem
def test_painn_is_invariant_to_site_order_when_neighbour_caps_are_asymmetric(toy):
    """The cap is per centre atom, so j→i may exist without i→j; PaiNN then needs the symmetrised graph."""
    from oodbench_plugins.backbones.fairchem.graphs import crystal_graph, structure_arrays
    s = _low_symmetry_crystal()
    bb, model = _model(PaiNNBackbone, toy, max_neighbors=4)
    raw = GraphSettings(bb.cutoff, bb.max_neighbors, symmetric=False)
    ei, off, _ = crystal_graph(*structure_arrays(s), raw)
    edges = set(zip(ei[0].tolist(), ei[1].tolist(), *off.round().long().T.tolist()))
    assert any((i, j, -a, -b, -c) not in edges for j, i, a, b, c in edges), "the crystal must test an asymmetric cap"
    perms = [list(range(5)), [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]]
    p = _predict(bb, model, [type(s).from_sites([s.sites[k] for k in order]) for order in perms])
    np.testing.assert_allclose(p, p[0], rtol=1e-4, atol=1e-4)


@needs_fairchem
def test_strict_neighbour_cap_breaks_supercell_invariance(toy):
    """Why strict=False: fairchem's default cuts equidistant shells arbitrarily (this test would catch a revert)."""
    bb, model = _model(PaiNNBackbone, toy, enforce_max_neighbors_strictly=True, max_neighbors=8)
    base = list(toy.structures[:6])
    p = _predict(bb, model, base + [s * (2, 1, 1) for s in base]).reshape(2, len(base))
    assert np.abs(p[1] - p[0]).max() > 1e-3


@needs_fairchem
def test_cached_graphs_equal_fresh_ones_and_key_on_settings(toy, tmp_path):
    bb = small(PaiNNBackbone)
    first = bb.featurize(toy, tmp_path)
    path = graph_cache_path(tmp_path, toy, bb.graph_settings())
    assert path.exists()
    cached = bb.featurize(toy, tmp_path)
    fresh = build_graphs(toy.structures, bb.graph_settings())
    assert cached.graphs.equal(fresh) and first.graphs.equal(fresh)
    other = graph_cache_path(tmp_path, toy, GraphSettings(bb.cutoff + 1.0, bb.max_neighbors))
    assert other != path


@needs_fairchem
@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.name)
def test_precomputed_graphs_match_the_models_own_graphs(cls, toy):
    """Collated cached graphs give the predictions fairchem gives when it builds the batch graph itself.

    (The toy crystals' graphs are symmetric, so PaiNN's symmetrisation changes nothing here.)"""
    bb, model = _model(cls, toy)
    inputs = bb.featurize(toy, None)
    idx = np.array([5, 0, 17, 3, 11])
    x = inputs.take(np.arange(len(toy))).batch(idx, "cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        pre = model(x)
    model.net.otf_graph = True
    torch.manual_seed(0)
    with torch.no_grad():
        otf = model(x)
    torch.testing.assert_close(pre, otf, rtol=1e-5, atol=1e-5)


@needs_fairchem
def test_batch_collates_rows_of_a_taken_subset(toy):
    bb = small(PaiNNBackbone)
    inputs = bb.featurize(toy, None)
    sub = inputs.take(np.array([4, 9, 2]))
    x = sub.batch(np.array([2, 0]), "cpu")  # dataset rows 2 and 4
    g = inputs.graphs
    assert x.natoms.tolist() == [int(g.natoms[2]), int(g.natoms[4])]
    assert x.batch.tolist() == [0] * int(g.natoms[2]) + [1] * int(g.natoms[4])
    n2 = int(g.neighbors[2])
    ei2 = g.edge_index[:, int(g.edge_ptr[2]):int(g.edge_ptr[2]) + n2]
    ei4 = g.edge_index[:, int(g.edge_ptr[4]):int(g.edge_ptr[4]) + int(g.neighbors[4])]
    assert torch.equal(x.edge_index, torch.cat([ei2, ei4 + int(g.natoms[2])], 1))
    assert isinstance(sub, GraphInputs) and len(sub) == 3


@needs_fairchem
def test_prediction_in_atom_chunks_equals_one_pass(toy, monkeypatch):
    from oodbench_plugins.backbones.fairchem import base
    bb, model = _model(PaiNNBackbone, toy)
    x = bb.featurize(toy, None).batch(np.arange(len(toy)), "cpu")
    one_pass = model(x).detach()  # grad enabled: never chunked
    monkeypatch.setattr(base, "INFER_CHUNK_ATOMS", (5, 5))
    assert len(x.chunks(5)) > 5
    with torch.no_grad():
        torch.testing.assert_close(model(x), one_pass, rtol=1e-5, atol=1e-6)


@needs_fairchem
def test_painn_rejects_a_crystal_without_neighbours():
    from oodbench.data import Dataset
    from pymatgen.core import Lattice, Structure
    import pandas as pd
    lone = Structure(Lattice.cubic(9.0), ["Na"], [[0, 0, 0]])
    ds = Dataset("lone", pd.DataFrame({"id": ["x-1"], "formula": ["Na"]}), {"sha256": "y"}, _structures=lambda: [lone])
    with pytest.raises(ValueError, match=r"x-1.*raise the backbone's cutoff"):
        small(PaiNNBackbone).featurize(ds, None)
