"""What the PaiNN and EquiformerV2 backbones share: graph featurisation, mean pooling, head, AMP, seeding."""
from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from oodbench.api import STRUCTURE, Backbone, BackboneModule, Subset

from .compat import FairchemMissing, fairchem_modules
from .graphs import GraphBatch, GraphInputs, GraphSettings, dataset_graphs

# fairchem's defaults (PaiNN 83, EquiformerV2 90 elements) reject U and heavier; matbench has up to Pu.
MAX_ELEMENTS = 100
# Atoms per forward pass at prediction time (CPU, CUDA).
INFER_CHUNK_ATOMS = (4096, 8192)


def float32_geometry(base: type) -> type:
    """``base`` (a fairchem model class) with its graph geometry computed outside autocast.

    Distances and edge vectors stay float32 under AMP: a lattice offset of
    ~10 Å rounded to bfloat16 is off by ~0.04 Å.
    """
    name = f"Float32Geometry{base.__name__}"
    if name not in globals():  # one class per base, importable by name

        def generate_graph(self, data, *args, **kwargs):
            with torch.autocast(data.pos.device.type, enabled=False):
                return base.generate_graph(self, data, *args, **kwargs)

        globals()[name] = type(name, (base,), {"generate_graph": generate_graph, "__module__": __name__,
                                               "__qualname__": name})
    return globals()[name]


class PooledGraphModule(BackboneModule):
    """A fairchem network → mean over each crystal's atoms (``embed``) → MLP to the scalar (``head``).

    The targets are per-crystal intensive quantities (a phonon peak, a
    refractive index), so atoms are averaged: a supercell gets the same
    embedding as its primitive cell, which a sum would not give.
    """

    def __init__(self, net: nn.Module, width: int, amp: bool):
        super().__init__()
        self.net = net
        self.embedding_dim = int(width)
        hidden = max(8, self.embedding_dim // 2)
        self.out = nn.Sequential(nn.Linear(self.embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.amp = bool(amp)

    def atom_sums(self, x: GraphBatch) -> torch.Tensor:
        """[B, D]: per-crystal sums of the network's invariant atom features."""
        raise NotImplementedError

    def embed(self, x: GraphBatch) -> torch.Tensor:
        if not torch.is_grad_enabled():
            # Prediction comes in batches of up to 1024 crystals (Method.predict); with the default
            # presets their per-edge tensors (EquiformerV2: edges x SO(2) coefficients x channels) would
            # need tens of GB. Crystals are independent, so evaluate in chunks (same result; no speed
            # difference measured on a CPU between 128-atom chunks and one 7,700-atom batch).
            parts = x.chunks(INFER_CHUNK_ATOMS[x.pos.device.type == "cuda"])
            if len(parts) > 1:
                return torch.cat([self._embed(p) for p in parts])
        return self._embed(x)

    def _embed(self, x: GraphBatch) -> torch.Tensor:
        use_amp = self.amp and x.pos.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            sums = self.atom_sums(x)
        return sums.float() / x.natoms.to(sums.device, torch.float32)[:, None]

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(z).squeeze(-1)


class FairchemGraphBackbone(Backbone):
    """A fairchem-core 1.x model on precomputed periodic graphs of the dataset's crystal structures."""

    input_kind = STRUCTURE
    needs_edges: ClassVar[bool] = False       # PaiNN cannot run a crystal without any edge
    symmetric_graph: ClassVar[bool] = False   # PaiNN keeps one direction per atom pair: needs both present

    @classmethod
    def missing_dependency(cls):
        try:
            fairchem_modules()
        except FairchemMissing as exc:
            return str(exc)
        return None

    def graph_settings(self) -> GraphSettings:
        return GraphSettings(float(self.cutoff), int(self.max_neighbors), bool(self.enforce_max_neighbors_strictly),
                             self.symmetric_graph)

    def featurize(self, dataset, cache=None) -> GraphInputs:
        fairchem_modules()  # no extra installed: fail now, with the install command, not after graph building
        settings = self.graph_settings()
        graphs = dataset_graphs(dataset, settings, cache)
        z_max = int(graphs.atomic_numbers.max()) if graphs.atomic_numbers.numel() else 0
        if z_max >= MAX_ELEMENTS:
            raise ValueError(f"dataset {dataset.name!r} has element Z={z_max}; backbone {self.name!r} embeds "
                             f"elements up to Z={MAX_ELEMENTS - 1}")
        if self.needs_edges and (graphs.neighbors == 0).any():
            bad = np.asarray(dataset.ids)[(graphs.neighbors == 0).numpy()]
            raise ValueError(f"{len(bad)} crystal(s) of {dataset.name!r} have no neighbour within cutoff="
                             f"{settings.cutoff} Å (e.g. {', '.join(map(str, bad[:5]))}); {self.name} needs at "
                             f"least one edge per crystal: raise the backbone's cutoff (-B cutoff=...)")
        return GraphInputs(graphs, settings=settings)

    def check_inputs(self, train: Subset) -> None:
        inputs = train.inputs
        if not isinstance(inputs, GraphInputs):
            raise TypeError(f"backbone {self.name!r} needs the GraphInputs its featurize makes, got "
                            f"{type(inputs).__name__}")
        if inputs.settings is not None and inputs.settings != self.graph_settings():
            raise ValueError(f"the inputs were featurized with {inputs.settings} but backbone {self.name!r} "
                             f"is set to {self.graph_settings()}; featurize again after changing the graph "
                             f"hyperparameters")

    def build(self, train: Subset, seed: int) -> PooledGraphModule:
        self.check_inputs(train)
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            # fairchem 1.3 calls APIs torch 2.13 / PyG 2.8 deprecate (torch.jit.script, MessagePassing.jittable)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*jittable.*")
            return self.make_module(train)

    def make_module(self, train: Subset) -> PooledGraphModule:
        raise NotImplementedError
