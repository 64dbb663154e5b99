"""Crystal graphs for the fairchem backbones: built once per dataset and graph settings, cached, collated cheaply.

A crystal (a pymatgen ``Structure``) becomes the periodic radius graph that
fairchem's own ``radius_graph_pbc`` computes (edges to all neighbour images
within ``cutoff``, at most ``max_neighbors`` per atom), so a precomputed graph
is the graph the model would build on the fly. The neighbour cap is applied
with ``enforce_max_neighbors_strictly=False`` by default: the strict mode cuts
through a shell of equidistant neighbours at an arbitrary member, which makes
a prediction depend on the atom order, the cell choice (supercells) and, when
graphs are built per batch, on the batch-mates.

All graphs of a dataset live in a few concatenated tensors (:class:`CrystalGraphs`);
:class:`GraphInputs.batch` gathers the rows of a batch with vectorised index
arithmetic, so a training step does no per-crystal Python work.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

from oodbench.api import STRUCTURE, Inputs
from oodbench.io import atomic_write

GRAPH_FORMAT = 1  # bump when the stored layout or the graph construction changes


@dataclass(frozen=True)
class GraphSettings:
    cutoff: float
    max_neighbors: int
    strict: bool = False     # fairchem's enforce_max_neighbors_strictly
    symmetric: bool = False  # add every edge's reverse (see crystal_graph)

    def key(self) -> str:
        text = json.dumps({"format": GRAPH_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class CrystalGraphs:
    """Every crystal's graph, concatenated. Edge indices are local to their crystal."""

    atomic_numbers: torch.Tensor  # long [A]
    pos: torch.Tensor             # float32 [A, 3], Cartesian Å
    cell: torch.Tensor            # float32 [G, 3, 3], lattice vectors as rows
    natoms: torch.Tensor          # long [G]
    edge_index: torch.Tensor      # long [2, E]: (neighbour j, centre i), grouped by crystal
    cell_offsets: torch.Tensor    # float32 [E, 3]: image of j, in lattice vectors
    neighbors: torch.Tensor       # long [G]: edges per crystal

    def __post_init__(self):
        self.atom_ptr = _exclusive_cumsum(self.natoms)
        self.edge_ptr = _exclusive_cumsum(self.neighbors)

    def __len__(self) -> int:
        return int(self.natoms.numel())

    def tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self.tensors().values())

    def to(self, device) -> "CrystalGraphs":
        return CrystalGraphs(**{k: v.to(device) for k, v in self.tensors().items()})

    def equal(self, other: "CrystalGraphs") -> bool:
        a, b = self.tensors(), other.tensors()
        return all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """concat(arange(s, s + c) for s, c in zip(starts, counts)), without a Python loop."""
    total = int(counts.sum())
    shift = torch.repeat_interleave(starts - _exclusive_cumsum(counts), counts, output_size=total)
    return shift + torch.arange(total, device=starts.device)


def structure_arrays(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atomic numbers, Cartesian positions, lattice) of an ordered pymatgen structure."""
    if not structure.is_ordered:
        raise ValueError(f"structure {structure.composition.formula!r} has partial occupancies; the fairchem "
                         f"backbones need ordered crystals (order it first, e.g. with pymatgen's "
                         f"OrderDisorderedStructureTransformation)")
    z = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return z, np.asarray(structure.cart_coords, np.float32), np.asarray(structure.lattice.matrix, np.float32)


def crystal_graph(z: np.ndarray, pos: np.ndarray, cell: np.ndarray, settings: GraphSettings):
    """(edge_index, cell_offsets, n_edges) of one crystal, by fairchem's ``radius_graph_pbc``.

    Float32 like the model's own on-the-fly graph, so a cached graph is the
    graph fairchem would build for the same crystal. With ``symmetric`` the
    reverse of every edge is added: the neighbour cap is per centre atom, so
    j may be among i's nearest while i is not among j's, and a model that
    keeps one direction of each pair by atom index (fairchem's PaiNN) would
    otherwise depend on the order of the sites.
    """
    from .compat import radius_graph_pbc
    data = SimpleNamespace(pos=torch.from_numpy(pos), cell=torch.from_numpy(cell)[None],
                           natoms=torch.tensor([len(z)]))
    edge_index, offsets, neighbors = radius_graph_pbc(data, settings.cutoff, settings.max_neighbors,
                                                      enforce_max_neighbors_strictly=settings.strict)
    edge_index, offsets = edge_index.long(), offsets.float()
    if settings.symmetric and edge_index.numel():
        src, dst = edge_index
        off = offsets.round().long()
        both = torch.cat([torch.column_stack([dst, src, off]), torch.column_stack([src, dst, -off])])
        keys = torch.unique(both, dim=0)  # sorted by centre atom first, as radius_graph_pbc orders edges
        edge_index, offsets = torch.stack([keys[:, 1], keys[:, 0]]), keys[:, 2:].float()
    return edge_index, offsets, int(edge_index.shape[1])


def build_graphs(structures, settings: GraphSettings, progress: bool = False) -> CrystalGraphs:
    zs, poss, cells, eis, offs, nedges = [], [], [], [], [], []
    it = structures
    if progress:
        from tqdm import tqdm
        it = tqdm(structures, desc=f"crystal graphs (cutoff {settings.cutoff} Å)", unit="crystal",
                  mininterval=5)
    threads = torch.get_num_threads()
    # One crystal's tensors are tiny: intra-op threads only add synchronisation (10x slower on a busy machine).
    torch.set_num_threads(1)
    try:
        for s in it:
            z, pos, cell = structure_arrays(s)
            ei, off, n = crystal_graph(z, pos, cell, settings)
            zs.append(torch.from_numpy(z))
            poss.append(torch.from_numpy(pos))
            cells.append(torch.from_numpy(cell))
            eis.append(ei)
            offs.append(off)
            nedges.append(n)
    finally:
        torch.set_num_threads(threads)
    return CrystalGraphs(
        atomic_numbers=torch.cat(zs), pos=torch.cat(poss), cell=torch.stack(cells),
        natoms=torch.tensor([len(z) for z in zs], dtype=torch.long),
        edge_index=torch.cat(eis, 1) if eis else torch.zeros(2, 0, dtype=torch.long),
        cell_offsets=torch.cat(offs) if offs else torch.zeros(0, 3),
        neighbors=torch.tensor(nedges, dtype=torch.long))


def graph_cache_path(cache: Path, dataset, settings: GraphSettings) -> Path:
    return Path(cache) / f"{dataset.name}-{dataset.content_key()}-graphs-{settings.key()}.pt"


def dataset_graphs(dataset, settings: GraphSettings, cache: Optional[Path]) -> CrystalGraphs:
    """The graphs of every row of ``dataset``, from ``cache`` when it has them (content-keyed)."""
    path = graph_cache_path(cache, dataset, settings) if cache is not None else None
    if path is not None and path.exists():
        stored = torch.load(path, weights_only=True)
        if stored.get("settings") == asdict(settings) and len(stored["graphs"]["natoms"]) == len(dataset):
            return CrystalGraphs(**stored["graphs"])
    graphs = build_graphs(dataset.structures, settings, progress=len(dataset) > 2000)
    if path is not None:
        atomic_write(path, lambda tmp: torch.save({"settings": asdict(settings), "graphs": graphs.tensors()}, tmp))
    return graphs


@dataclass
class GraphBatch:
    """A batch of crystal graphs with the attributes fairchem models read from a torch_geometric Batch."""

    atomic_numbers: torch.Tensor
    pos: torch.Tensor
    cell: torch.Tensor
    natoms: torch.Tensor
    batch: torch.Tensor           # crystal of each atom
    edge_index: torch.Tensor      # global atom indices within the batch
    cell_offsets: torch.Tensor
    neighbors: torch.Tensor

    def __len__(self) -> int:
        return int(self.natoms.numel())

    @property
    def num_graphs(self) -> int:
        return len(self)

    def to(self, device, non_blocking: bool = False) -> "GraphBatch":
        return GraphBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                             for f in fields(self)})

    def pin_memory(self) -> "GraphBatch":
        return GraphBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def chunks(self, max_atoms: int) -> list["GraphBatch"]:
        """Consecutive crystals in groups of about ``max_atoms`` atoms (a group holds at least one crystal)."""
        atom_start = _exclusive_cumsum(self.natoms)
        if int(self.natoms.sum()) <= max_atoms:
            return [self]
        group = torch.div(atom_start, max_atoms, rounding_mode="floor")
        cuts = (torch.nonzero(group[1:] != group[:-1]).flatten() + 1).tolist()
        bounds = [0, *cuts, len(self)]
        edge_start = _exclusive_cumsum(self.neighbors)
        out = []
        for c0, c1 in zip(bounds[:-1], bounds[1:]):
            a0 = int(atom_start[c0])
            a1 = a0 + int(self.natoms[c0:c1].sum())
            e0 = int(edge_start[c0])
            e1 = e0 + int(self.neighbors[c0:c1].sum())
            out.append(GraphBatch(
                atomic_numbers=self.atomic_numbers[a0:a1], pos=self.pos[a0:a1], cell=self.cell[c0:c1],
                natoms=self.natoms[c0:c1], batch=self.batch[a0:a1] - c0, edge_index=self.edge_index[:, e0:e1] - a0,
                cell_offsets=self.cell_offsets[e0:e1], neighbors=self.neighbors[c0:c1]))
        return out


def collate(g: CrystalGraphs, rows: torch.Tensor) -> GraphBatch:
    natoms = g.natoms[rows]
    nedges = g.neighbors[rows]
    atoms = _ranges(g.atom_ptr[rows], natoms)
    edges = _ranges(g.edge_ptr[rows], nedges)
    shift = torch.repeat_interleave(_exclusive_cumsum(natoms), nedges, output_size=edges.numel())
    return GraphBatch(
        atomic_numbers=g.atomic_numbers[atoms], pos=g.pos[atoms], cell=g.cell[rows], natoms=natoms,
        batch=torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), natoms,
                                      output_size=atoms.numel()),
        edge_index=g.edge_index[:, edges] + shift, cell_offsets=g.cell_offsets[edges], neighbors=nedges)


# A dataset's graphs up to this size are copied to the GPU once and gathered there; larger ones are
# gathered on the CPU into pinned memory and copied asynchronously per batch.
DEVICE_RESIDENT_BYTES = 2 << 30


class GraphInputs(Inputs):
    """Precomputed crystal graphs for some rows of a dataset (``take`` keeps the storage, only re-indexes)."""

    kind = STRUCTURE

    def __init__(self, graphs: CrystalGraphs, rows: Optional[torch.Tensor] = None, settings=None,
                 _device_copies: Optional[dict] = None):
        self.graphs = graphs
        self.rows = rows if rows is not None else torch.arange(len(graphs))
        self.settings = settings
        self._device_copies = _device_copies if _device_copies is not None else {}

    def __len__(self) -> int:
        return int(self.rows.numel())

    def take(self, idx) -> "GraphInputs":
        return GraphInputs(self.graphs, self.rows[torch.as_tensor(np.asarray(idx), dtype=torch.long)],
                           self.settings, self._device_copies)

    def batch(self, idx, device) -> GraphBatch:
        device = torch.device(device)
        rows = self.rows[torch.as_tensor(np.asarray(idx), dtype=torch.long)]
        if device.type == "cpu":
            return collate(self.graphs, rows)
        if self.graphs.nbytes() <= DEVICE_RESIDENT_BYTES:
            key = str(device)
            if key not in self._device_copies:
                self._device_copies[key] = self.graphs.to(device)
            return collate(self._device_copies[key], rows.to(device))
        return collate(self.graphs, rows).pin_memory().to(device, non_blocking=True)
