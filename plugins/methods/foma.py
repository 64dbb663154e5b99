"""Plugin: FOMA, first-order manifold data augmentation (Kaufman & Azencot, ICML 2024).

Kaufman & Azencot, "First-Order Manifold Data Augmentation for Regression
Learning", ICML 2024, Sec. 4, Alg. 1. A batch and its labels are stacked as
A = [X | Y] (B × (D+1)) and decomposed, A = U S Vᵀ. The top-k singular
directions approximate the tangent space of the data manifold; the rest are
shrunk by λ ~ Beta(α, α), one λ per batch:

    A~ = U diag(s_1, ..., s_k, λ s_{k+1}, ..., λ s_r) Vᵀ,   [X~ | Y~] = A~,

and the model is trained with the MSE on (X~, Y~). k is the smallest number
of singular values whose share of Σ s reaches ``rho`` (the authors' ρ
criterion; ``k`` fixes it instead). α = 1 and ρ = 0.9 lie in the middle of the
ranges the paper tunes over (α 0.3-1.4, ρ 0.825-0.975).

Where (``space``): ``input`` decomposes IR-net's standardised composition
features (input FOMA); ``embedding`` decomposes the backbone's embedding
``model.embed(x)`` and feeds Z~ to ``model.head`` (the paper's latent FOMA) —
the only option for crystal-graph batches; ``auto`` (default) picks input
when the batch is one feature tensor.

Implementation notes, and what was adapted: the labels really are
transformed (Y~ is the last column of A~; the authors' EchoNet helper
returns the original Y). A~ is computed as A - (1-λ) A V_t V_tᵀ with V_t the
shrunk right singular vectors, which is the same matrix; the basis V_t is
treated as a constant in the backward pass, so gradients reach the embedding
linearly and never through the SVD (whose gradient is unstable at repeated
singular values), and Y~ is a target without gradient. Y is the
standardised label, so its column has the scale of the standardised features.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from oodbench import hookimpl
from oodbench.api import Method
from oodbench.training import TrainingMixin

from ._shared import check_space, resolve_space


def kept_components(s: torch.Tensor, rho: float = 0.9, k: Optional[int] = None) -> int:
    """How many leading singular values stay unscaled: ``k``, or the fewest whose share of Σ s reaches ``rho``."""
    if k is not None:
        return max(0, min(int(k), len(s)))
    share = torch.cumsum(s, 0) / s.sum().clamp(min=torch.finfo(s.dtype).tiny)
    return min(len(s), int((share < rho).sum()) + 1)


def foma_transform(x: torch.Tensor, y: torch.Tensor, lam: float, rho: float = 0.9,
                   k: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(X~, Y~, k) for a batch ``x`` [B, D] with labels ``y`` [B]; Y~ carries no gradient."""
    a = torch.cat([x, y.detach()[:, None].to(x.dtype)], dim=1)
    with torch.no_grad():
        _, s, vh = torch.linalg.svd(a.detach(), full_matrices=False)
        kept = kept_components(s, rho, k)
        tail = vh[kept:].T                              # [D+1, r-k] shrunk directions
    a_new = a - (1.0 - lam) * (a @ tail) @ tail.T
    return a_new[:, :-1], a_new[:, -1].detach(), kept


class FOMA(TrainingMixin, Method):
    name = "foma"
    description = "FOMA: shrink the small singular values of the batch [X | Y] (tangent-space augmentation)"
    paper = "Kaufman & Azencot, First-Order Manifold Data Augmentation for Regression Learning, ICML 2024"
    needs_embedding = True

    def __init__(self, alpha: float = 1.0, rho: float = 0.9, k=None, space: str = "auto", **train_kw):
        self.alpha = alpha
        self.rho = rho
        self.k = k
        self.space = space
        TrainingMixin.__init__(self, **train_kw)

    def setup(self, model, data, ctx):
        check_space(self.name, self.space, data.train.inputs)
        if not float(self.alpha) > 0:
            raise ValueError(f"foma: alpha must be positive, got {self.alpha}")
        if self.k is None and not 0 < float(self.rho) <= 1:
            raise ValueError(f"foma: rho (share of the singular values kept) must be in (0, 1], got {self.rho}")
        if self.k is not None and int(self.k) < 0:
            raise ValueError(f"foma: k must be a non-negative number of kept components, got {self.k}")

    def loss(self, model, batch, ctx):
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        view = resolve_space(self.name, self.space, model, batch.x)
        if view is not None:
            xs, forward = view
            x_new, y_new, _ = foma_transform(xs.detach(), batch.y, lam, float(self.rho), self.k)
            pred = forward(x_new)
        else:
            z_new, y_new, _ = foma_transform(model.embed(batch.x), batch.y, lam, float(self.rho), self.k)
            pred = model.head(z_new)
        return F.mse_loss(pred, y_new)


@hookimpl
def oodbench_methods():
    return [FOMA]
