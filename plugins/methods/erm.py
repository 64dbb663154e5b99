"""Plugin: ERM, empirical risk minimisation — the baseline every method is compared with.

Minimises the mean squared error on standardised targets with the shared
training loop (AdamW, ReduceLROnPlateau factor 0.8 / patience 5, up to 200
epochs, early stopping after 30 epochs without a better validation MAE,
best-validation checkpoint). On a gradient-free backbone (tree ensembles) ERM
is the backbone's own least-squares fit.
"""
from __future__ import annotations

import torch.nn.functional as F

from oodbench import hookimpl
from oodbench.api import Method
from oodbench.training import TrainingMixin


class ERM(TrainingMixin, Method):
    name = "erm"
    description = "empirical risk minimisation (MSE on standardised targets)"
    paper = "Vapnik 1992; baseline of the MEX and CAL papers"
    requires_gradients = False

    def __init__(self, **train_kw):
        TrainingMixin.__init__(self, **train_kw)

    def loss(self, model, batch, ctx):
        return F.mse_loss(model(batch.x), batch.y)


@hookimpl
def oodbench_methods():
    return [ERM]
