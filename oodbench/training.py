"""The shared training loop for loss-based methods, and batched prediction.

One loop serves every method that only changes the objective (ERM, LDS,
BalancedMSE, RankSim, ConR, C-Mixup, FOMA): AdamW, ReduceLROnPlateau on the
validation MAE, early stopping, best-validation checkpoint.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from . import metrics
from .api import BackboneModule, Context, FitData, Inputs, Method


class TrainingMixin:
    """Hyperparameters of the shared loop; loss-based methods inherit them.

    Defaults follow the CAL paper's IR-net training (AdamW, plateau factor 0.8,
    patience 5) with up to 200 epochs and early stopping after 30 epochs
    without a better validation MAE.
    """

    def __init__(self, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 128,
                 max_epochs: int = 200, patience: int = 30, plateau_factor: float = 0.8,
                 plateau_patience: int = 5, grad_clip: float = 0.0):
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.grad_clip = grad_clip


@torch.no_grad()
def predict_batched(model: BackboneModule, inputs: Inputs, device, batch_size: int = 1024) -> np.ndarray:
    if getattr(model, "gradient_free", False):
        return model.predict_direct(inputs)
    model.eval()
    out = []
    n = len(inputs)
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(n, s + batch_size))
        out.append(model(inputs.batch(idx, device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Validation MAE for early stopping: the registered metric, without its evaluation-info argument."""
    return float(metrics.mae(np.asarray(a), np.asarray(b), None))


class EarlyStopping:
    """Keeps the best-validation state dict and says when patience has run out."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = math.inf
        self.best_epoch = -1
        self.best_state = None
        self.bad = 0

    def step(self, value: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record ``value``; return True when training should stop."""
        if value < self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def make_optimizer(method, model: torch.nn.Module):
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups += method.extra_parameters()
    opt = torch.optim.AdamW(groups, lr=method.lr, weight_decay=method.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=method.plateau_factor, patience=method.plateau_patience)
    return opt, sched


def train_epoch(method, model: BackboneModule, subset, opt, ctx: Context, batch_size: int,
                drop_last: bool = False) -> None:
    """One shuffled pass over ``subset`` minimising ``method.loss`` (with ``method.grad_clip`` if set)."""
    model.train()
    for batch in subset.batches(batch_size, ctx.device, shuffle=True, generator=ctx.rng, drop_last=drop_last):
        loss = method.loss(model, batch, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if method.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), method.grad_clip)
        opt.step()


def fit_loss_method(method: Method, model: BackboneModule, data: FitData, ctx: Context) -> BackboneModule:
    """Train ``model`` by minimising ``method.loss``; return it at its best validation epoch."""
    if getattr(model, "gradient_free", False):
        model.fit_direct(data.train, data.val, seed=ctx.seed)
        ctx.info["epochs"] = 0
        return model
    model.to(ctx.device)
    method.setup(model, data, ctx)
    opt, sched = make_optimizer(method, model)
    stopper = EarlyStopping(method.patience)
    t0 = time.perf_counter()
    epoch = -1
    for epoch in range(method.max_epochs):
        train_epoch(method, model, data.train, opt, ctx, method.batch_size, drop_last=True)
        val_mae = mae(method.predict(model, data.val.inputs, ctx), data.val.y)
        sched.step(val_mae)
        if stopper.step(val_mae, epoch, model):
            break
    stopper.restore(model)
    ctx.info.update(epochs=epoch + 1, best_epoch=stopper.best_epoch,
                    best_val_mae_std=stopper.best, train_seconds=time.perf_counter() - t0)
    return model
