"""Partial sampling (Magar & Barati Farimani 2023, as used by CAL) and the epoch-checkpoint EMA."""
from __future__ import annotations

import math

import numpy as np
import torch

from oodbench.api import Subset
from oodbench.training import predict_batched


def highest_loss_rows(model, subset: Subset, fraction: float, device, beta: float) -> np.ndarray:
    """Positions in ``subset`` of its ``fraction`` highest-loss samples under ``model`` (eval mode).

    Ties keep the subset's order (stable sort), so the choice is deterministic.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"partial_fraction must be in (0, 1], got {fraction}")
    pred = torch.as_tensor(predict_batched(model, subset.inputs, device))
    loss = torch.nn.functional.smooth_l1_loss(pred, torch.as_tensor(subset.y, dtype=torch.float32),
                                              reduction="none", beta=beta).numpy()
    k = max(1, int(math.ceil(fraction * len(loss))))
    return np.sort(np.argsort(-loss, kind="stable")[:k])


class EpochEMA:
    """Exponential moving average of the model's floating-point state, updated once per epoch.

    The first update copies the model; later ones blend ``decay * ema + (1 - decay) * model``.
    Integer buffers (e.g. BatchNorm's step counter) follow the model.
    """

    def __init__(self, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.state = None
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        current = model.state_dict()
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in current.items()}
        else:
            for k, v in current.items():
                if v.is_floating_point():
                    self.state[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
                else:
                    self.state[k].copy_(v)
        self.updates += 1

    def load_into(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)
