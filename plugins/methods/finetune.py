"""Plugin: fine-tuning, the conventional adaptation baseline of the CAL paper's targeted experiments.

Li, Miklaucic & Hu (arXiv:2408.09297) compare targeted CAL with "traditional
fine-tuning": train on the training set, then continue training on the few
labelled target samples. Here:

1. ERM on the training set with the shared loop (MSE on standardised labels,
   AdamW, ReduceLROnPlateau, early stopping on validation MAE, best
   checkpoint), exactly as method ``erm``;
2. then ``finetune_epochs`` (20) epochs on the target pool with a fresh AdamW
   at ``finetune_lr_factor`` (0.1) times the training learning rate, mini-batches
   of ``finetune_batch_size`` (32, or the whole pool when it is smaller),
   same loss and weight decay, dropout on.

Choices and why: a lower learning rate and few epochs keep the model close to
the pre-trained one (k is 64-1024 samples); all k pool samples are trained on
and no checkpoint is selected, because a validation split carved out of 64
target samples would be too noisy to select with, and the training-domain
validation set says nothing about the target domain. Without a pool this
method is ERM, so the runner refuses it (use ``erm``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from oodbench import hookimpl
from oodbench.api import Method
from oodbench.training import TrainingMixin, fit_loss_method, train_epoch


class FineTune(TrainingMixin, Method):
    name = "finetune"
    description = "ERM on the training set, then a few low-LR epochs on the k labelled target samples (--adapt K)"
    paper = "conventional fine-tuning; the baseline of targeted CAL (Li, Miklaucic & Hu 2024)"
    uses_target_pool = True
    requires_target_pool = True

    def __init__(self, finetune_epochs: int = 20, finetune_lr_factor: float = 0.1, finetune_batch_size: int = 32,
                 **train_kw):
        TrainingMixin.__init__(self, **train_kw)
        self.finetune_epochs = finetune_epochs
        self.finetune_lr_factor = finetune_lr_factor
        self.finetune_batch_size = finetune_batch_size

    def loss(self, model, batch, ctx):
        return F.mse_loss(model(batch.x), batch.y)

    def fit(self, model, data, ctx):
        if data.pool is None or len(data.pool) == 0:
            raise ValueError("finetune needs labelled target samples: run it with --adapt K "
                             "(without them it is plain ERM: use method 'erm')")
        if int(self.finetune_epochs) < 0 or int(self.finetune_batch_size) < 1:
            raise ValueError(f"finetune_epochs must be >= 0 and finetune_batch_size >= 1, got "
                             f"{self.finetune_epochs} and {self.finetune_batch_size}")
        model = fit_loss_method(self, model, data, ctx)
        if getattr(model, "gradient_free", False):
            raise ValueError("finetune needs a neural backbone (a gradient-free model cannot be fine-tuned)")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                lr=self.lr * self.finetune_lr_factor, weight_decay=self.weight_decay)
        bs = min(int(self.finetune_batch_size), len(data.pool))
        for _ in range(int(self.finetune_epochs)):
            train_epoch(self, model, data.pool, opt, ctx, bs)
        ctx.info.update(finetune_epochs=int(self.finetune_epochs), finetune_samples=len(data.pool),
                        finetune_batch_size=bs)
        return model


@hookimpl
def oodbench_methods():
    return [FineTune]
