"""The two plugin interfaces: :class:`Backbone` (a model) and :class:`Method` (how it is trained).

Both follow scikit-learn's convention: the constructor stores hyperparameters
and nothing else, ``get_params()`` returns them (they go into every result),
and all state is created later (``Backbone.build``, ``Method.fit``).
Use :func:`oodbench.testing.check_method` / :func:`check_backbone` in your own
CI to check a plugin against these contracts.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional

import numpy as np
import torch
from torch import nn

COMPOSITION = "composition"  # inputs are the 145 Magpie features of the composition
STRUCTURE = "structure"      # inputs are pymatgen crystal structures


class Hyperparameters:
    """Constructor-stores-only base: defaults come from the ``__init__`` signature."""

    @classmethod
    def _param_names(cls) -> list[str]:
        names = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names:
                    names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self._param_names()}

    def set_params(self, **params) -> "Hyperparameters":
        valid = self._param_names()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"{type(self).__name__} has no hyperparameter {k!r}; "
                                 f"valid: {', '.join(sorted(valid))}")
            setattr(self, k, v)
        return self


# ---------------------------------------------------------------- inputs

class Inputs:
    """Model inputs for every row of a dataset; a backbone's ``featurize`` makes them.

    Subclasses hold composition features (a tensor) or crystal graphs. ``take``
    selects rows, ``batch`` makes what the backbone module's ``embed`` consumes.
    """

    kind: str = COMPOSITION
    tensor: Optional[torch.Tensor] = None  # set when the inputs are one feature tensor (mixable)

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, idx: np.ndarray) -> "Inputs":
        raise NotImplementedError

    def batch(self, idx: np.ndarray, device: torch.device) -> Any:
        raise NotImplementedError


class TensorInputs(Inputs):
    """Inputs that are one float tensor [N, F]: slicing is the whole collate."""

    def __init__(self, tensor: torch.Tensor, kind: str = COMPOSITION, feature_names=None):
        self.tensor = tensor
        self.kind = kind
        self.feature_names = list(feature_names) if feature_names is not None else None

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def take(self, idx) -> "TensorInputs":
        return TensorInputs(self.tensor[torch.as_tensor(np.asarray(idx), dtype=torch.long)], self.kind,
                            self.feature_names)

    def batch(self, idx, device) -> torch.Tensor:
        return self.tensor[torch.as_tensor(np.asarray(idx), dtype=torch.long)].to(device, non_blocking=True)


@dataclass
class Batch:
    x: Any                 # what the backbone module consumes
    y: torch.Tensor        # standardised labels, float32 [B]
    idx: np.ndarray        # positions in the Subset the batch came from


@dataclass
class Subset:
    """Inputs and standardised labels of one part of a split (train, val or target pool)."""

    inputs: Inputs
    y: np.ndarray                     # standardised labels (float32)
    ids: np.ndarray                   # dataset ids, for provenance

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, idx) -> "Subset":
        idx = np.asarray(idx)
        return Subset(self.inputs.take(idx), self.y[idx], self.ids[idx])

    def batches(self, batch_size: int, device, shuffle: bool = False,
                generator: Optional[np.random.Generator] = None, drop_last: bool = False) -> Iterator[Batch]:
        n = len(self)
        order = generator.permutation(n) if shuffle else np.arange(n)
        stop = n - (n % batch_size) if drop_last and n > batch_size else n
        y = torch.as_tensor(self.y, dtype=torch.float32)
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            yield Batch(self.inputs.batch(idx, device), y[torch.as_tensor(idx)].to(device), idx)


@dataclass
class FitData:
    """Everything a method may see. Test labels are never here."""

    train: Subset
    val: Subset
    pool: Optional[Subset] = None          # k labelled target-domain samples (adaptation protocol)
    label_range: Optional[tuple] = None    # standardised [l, u] of the whole dataset, for methods that declare the prior
    y_mean: float = 0.0                    # label standardisation (y_std = (y - mean) / scale)
    y_scale: float = 1.0


@dataclass
class Context:
    """Run-time facts a method needs: device, seed, a numpy generator, a logger."""

    device: torch.device
    seed: int
    rng: np.random.Generator
    log: Any = print
    info: dict = field(default_factory=dict)  # things the method reports into the result (e.g. epochs run)


# ---------------------------------------------------------------- backbones

class BackboneModule(nn.Module):
    """What ``Backbone.build`` returns: ``embed`` gives a per-sample embedding, ``head`` the scalar.

    Feature-space methods (mixup, contrastive, matching) call ``embed`` and
    ``head`` separately; ``forward(x) = head(embed(x))`` returns shape [B].
    """

    embedding_dim: int

    def embed(self, x) -> torch.Tensor:
        raise NotImplementedError

    def head(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x) -> torch.Tensor:
        return self.head(self.embed(x))


class Backbone(Hyperparameters):
    """A model family. Subclasses set the class attributes and implement featurize + build."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    input_kind: ClassVar[str] = COMPOSITION
    gradient_free: ClassVar[bool] = False   # tree ensembles: fitted directly, no embedding
    presets: ClassVar[dict] = {}             # name -> hyperparameter overrides ("small", "default")

    @classmethod
    def missing_dependency(cls) -> Optional[str]:
        """None when the backbone can run here, else what to install (optional extras)."""
        return None

    def featurize(self, dataset, cache) -> Inputs:
        """Inputs for every row of ``dataset`` (a :class:`oodbench.data.Dataset`), cached via ``cache``."""
        raise NotImplementedError

    def build(self, train: Subset, seed: int) -> BackboneModule:
        """A fresh module; ``train`` may be used for input normalisation statistics only."""
        raise NotImplementedError


# ---------------------------------------------------------------- methods

class Method(Hyperparameters):
    """A training method. Simple ones implement ``loss``; others override ``fit``/``predict``.

    The shared loop (:func:`oodbench.training.fit_loss_method`) calls, per
    step, ``loss(model, batch, ctx)`` on standardised labels, with
    ``extra_parameters()`` optimised alongside the model.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_backbone: ClassVar[str] = "irnet"
    requires_gradients: ClassVar[bool] = True      # False: also works on gradient-free backbones (ERM)
    needs_embedding: ClassVar[bool] = False        # mixes/compares embeddings
    uses_target_pool: ClassVar[bool] = False       # can use k labelled target samples
    requires_target_pool: ClassVar[bool] = False   # only works with them (--adapt K), e.g. fine-tuning
    uses_label_range_prior: ClassVar[bool] = False  # reads FitData.label_range

    # ---- shared-loop interface
    def setup(self, model: BackboneModule, data: FitData, ctx: Context) -> None:
        """Called once before training (e.g. LDS computes its label weights here)."""

    def extra_parameters(self) -> list:
        """Parameter groups (dicts for torch.optim) trained alongside the model."""
        return []

    def loss(self, model: BackboneModule, batch: Batch, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    # ---- whole-training interface
    def fit(self, model: BackboneModule, data: FitData, ctx: Context) -> BackboneModule:
        from .training import fit_loss_method
        return fit_loss_method(self, model, data, ctx)

    @torch.no_grad()
    def predict(self, model: BackboneModule, inputs: Inputs, ctx: Context, batch_size: int = 1024) -> np.ndarray:
        """Standardised predictions for every row of ``inputs``."""
        from .training import predict_batched
        return predict_batched(model, inputs, ctx.device, batch_size)
