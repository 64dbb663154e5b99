"""Stable adversarial learning (SAL; Liu et al., AAAI 2021) as CAL uses it: the attack and the cost weights.

Notation follows the SAL paper. ``w`` holds one transport-cost weight per
covariate (here: per standardised input feature, or per embedding dimension
for backbones without an input normalisation), the cost of moving a sample
from ``x`` to ``x_A`` is ``c_w = sum_d w_d (x_A,d - x_d)^2`` and
``gamma = 1 / min(w)``, so the least stable covariate costs ``gamma * w = 1``
per squared unit and every other covariate costs more.

* Adversarial samples (SAL eq. 3): ``x_A = argmax ell(theta; x_A, y) - gamma c_w(x_A, x)``,
  approximated by ``steps`` proximal ascent steps. Each step moves along the
  loss gradient normalised to unit RMS per sample (the raw input gradient of
  a regression loss spans orders of magnitude during training; the CAL code
  normalises it with an Adam-style ascent for the same reason) and then
  applies the exact proximal map of the quadratic cost,
  ``delta <- (delta + a g) / (1 + 2 a gamma w)``. The proximal form keeps the
  ascent stable however large ``gamma w`` gets, and makes low-cost (unstable)
  covariates move more from the first step on.
* Weight update (SAL eq. 5): ``dR/dw = dR/dtheta . dtheta/dx_A . dx_A/dw`` with
  ``dtheta/dx_A = -beta d(grad_theta ell)/dx_A`` (one SGD-like step of size
  ``beta`` on the adversarial samples) and ``dx_A/dw`` carried through the
  ascent steps in closed form. The middle product is a vector-Jacobian
  product, ``d/dx_A <grad_theta ell(theta; x_A), v>`` with ``v = dR/dtheta``,
  computed by double back-propagation, so memory stays O(parameters + batch)
  and no ``theta x x_A`` Jacobian is formed (the CAL code materialises it
  with ``jacrev``). As in SAL the step on ``w`` is normalised by its largest
  component, so only its direction matters.
* ``R(theta)`` (SAL eq. 4) is the sum of the environments' losses with the
  worst environment up-weighted by ``1 + alpha`` and the best down-weighted by
  ``1 - alpha``. With one training distribution the seeds are split at random
  into ``n_envs`` environments, as the CAL code does.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


class PerturbationSpace:
    """Where adversarial samples live, and how a prediction is made from a point there.

    IR-net style modules (``normalise`` + ``embed_normalised``) are attacked
    on their standardised input features, so the SAL weights belong to the
    145 Magpie features. Any other :class:`oodbench.api.BackboneModule` (e.g.
    a crystal-graph network, whose inputs are graphs) is attacked on its
    embedding ``embed(x)``: the seed embedding is computed with the current
    model and detached, the adversarial point goes through ``head`` only, and
    the SAL weights belong to the embedding dimensions.
    """

    def __init__(self, model):
        self.model = model
        self.on_inputs = callable(getattr(model, "normalise", None)) and callable(
            getattr(model, "embed_normalised", None))

    @property
    def kind(self) -> str:
        return "standardised inputs" if self.on_inputs else "embeddings"

    def encode(self, x) -> torch.Tensor:
        with torch.no_grad():
            p = self.model.normalise(x) if self.on_inputs else self.model.embed(x)
        return p.detach()

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        if self.on_inputs:
            return self.model.head(self.model.embed_normalised(p))
        return self.model.head(p)


class StableAdversary:
    """The SAL cost weights ``w`` with the attack that uses them and the update that learns them."""

    def __init__(self, dim: int, steps: int = 3, step_size: float = 0.1, w_lr: float = 0.1,
                 w_floor: float = 0.01, n_envs: int = 5, device=None):
        if steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {steps}")
        if n_envs < 2:
            raise ValueError(f"n_envs must be >= 2 (R(theta) compares environments), got {n_envs}")
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.w_lr = float(w_lr)
        self.w_floor = float(w_floor)
        self.n_envs = int(n_envs)
        self.w = torch.ones(dim, device=device)

    @property
    def gamma(self) -> float:
        return float(1.0 / self.w.min())

    def attack(self, decode: Callable, p0: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial points ``x_A`` (detached) and ``dx_A/dw`` per element (same shape).

        ``loss_fn(pred, y)`` must return per-sample losses.
        """
        a = self.step_size
        c = 2.0 * a * self.gamma * self.w          # [D]: proximal shrinkage of each covariate
        shrink = 1.0 / (1.0 + c)
        delta = torch.zeros_like(p0)
        ddelta_dw = torch.zeros_like(p0)
        for _ in range(self.steps):
            p = (p0 + delta).requires_grad_(True)
            with torch.enable_grad():
                g, = torch.autograd.grad(loss_fn(decode(p), y).sum(), p)
            g = g / (g.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-12)
            delta_new = (delta + a * g) * shrink
            # d/dw_d of (delta + a g) / (1 + 2 a gamma w_d), holding g fixed as SAL does
            ddelta_dw = ddelta_dw * shrink - 2.0 * a * self.gamma * delta_new * shrink
            delta = delta_new.detach()
        return (p0 + delta).detach(), ddelta_dw.detach()

    def risk(self, per_sample_loss: torch.Tensor, alpha: float, generator: np.random.Generator) -> torch.Tensor:
        """``R(theta)``: environments' mean losses, worst one times (1 + alpha), best one times (1 - alpha)."""
        n = per_sample_loss.shape[0]
        k = min(self.n_envs, n)
        parts = np.array_split(generator.permutation(n), k)
        env = torch.stack([per_sample_loss[torch.as_tensor(ix, device=per_sample_loss.device)].mean()
                           for ix in parts])
        scale = torch.ones_like(env)
        if k > 1:
            scale[int(torch.argmax(env.detach()))] = 1.0 + alpha
            scale[int(torch.argmin(env.detach()))] = 1.0 - alpha
        return (env * scale).sum()

    @torch.no_grad()
    def update(self, dR_dxA: torch.Tensor, dxA_dw: torch.Tensor) -> float:
        """One normalised step of ``w`` down ``dR/dw`` (SAL eq. 5); returns the step's largest change."""
        dw = (dR_dxA * dxA_dw).sum(dim=0)
        m = float(dw.abs().max())
        if not np.isfinite(m) or m == 0.0:
            return 0.0
        self.w -= self.w_lr * dw / m
        # SAL keeps the weights positive; a floor (rather than SAL's reset-to-1) keeps gamma bounded
        self.w.clamp_(min=self.w_floor)
        return self.w_lr


def vjp_through_parameter_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
                                   wrt: torch.Tensor) -> tuple[list, torch.Tensor]:
    """``grad_theta loss`` (detached) and ``d/d wrt <grad_theta loss, v>`` by double back-propagation.

    This is ``v^T (d^2 loss / d theta d wrt)`` without forming the Hessian block:
    one extra backward pass, memory O(parameters + wrt).
    """
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    dot = sum((g * vi).sum() for g, vi in zip(grads, v) if g is not None)
    if not torch.is_tensor(dot) or not dot.requires_grad:
        vjp = torch.zeros_like(wrt)
    else:
        vjp, = torch.autograd.grad(dot, wrt, allow_unused=True)
        vjp = torch.zeros_like(wrt) if vjp is None else vjp
    return [None if g is None else g.detach() for g in grads], vjp.detach()


def huber(pred: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-sample smooth-L1 (Huber) loss, CAL's training loss."""
    return F.smooth_l1_loss(pred, y, reduction="none", beta=beta)
