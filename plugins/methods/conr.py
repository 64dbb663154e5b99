"""Plugin: ConR, contrastive regularisation for imbalanced regression (Keramati et al., ICLR 2024).

Keramati, Meng & Evans, "ConR: Contrastive Regularizer for Deep Imbalanced
Regression", ICLR 2024, Sec. 3. On L2-normalised embeddings z, for an
anchor j of the batch:

* positives K+_j: samples whose label is within ω of y_j;
* negatives K-_j: samples whose label is farther than ω but whose
  *prediction* is within ω of ŷ_j — the pairs the model currently confuses;
* only anchors with at least one negative contribute (the paper's anchor
  selection), and the loss is

    L_j = -1/|K+_j| Σ_{i∈K+_j} log [ exp(z_j·z_i/τ) /
          ( Σ_{i'∈K+_j} exp(z_j·z_i'/τ) + Σ_{p∈K-_j} S_jp exp(z_j·z_p/τ) ) ],

  with pushing weight S_jp = η_j exp(e |y_j - y_p|) growing with the label
  distance (η_j = 1, or the LDS inverse-density weight of y_j with
  ``reweight``). The total loss is MSE + β mean_j η_j L_j.

Defaults follow the authors' AgeDB release where the units allow it:
temperature 0.2 (the released code's default argument), and e and ω rescaled
from years of age to standardised labels (AgeDB's label sd is about 12 years).

Adapted for materials: compositions have no label-preserving augmentation,
so there is a single view per sample (the paper's two augmented views give
every anchor at least its own twin as a positive); the positives are other
samples within ω. An anchor with negatives but no positive therefore can
occur: its term is dropped (it has nothing to be pulled towards), never
0/0 = NaN as in the released code. ω and e are in standardised label units:
ω = 0.1 sd (AgeDB's window of 1 year) and e = 0.12 per sd (AgeDB's 0.01 per year). The
embedding is the backbone's ``model.embed``, so graph backbones work too.
β = 1 rather than the AgeDB 4, since here the task loss is an MSE on
standardised targets, several times smaller than AgeDB's L1 in years.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from oodbench import hookimpl
from oodbench.api import Method
from oodbench.training import TrainingMixin

from ._shared import BinLookup, check_choice, inverse_density_weights, label_bins, smoothed_density


def conr_loss(z: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, window: float = 0.1,
              temperature: float = 0.2, e: float = 0.12, eta=None) -> torch.Tensor:
    """ConR regulariser of embeddings ``z`` [B, D] with labels ``y`` and predictions ``pred`` [B].

    ``eta`` ([B] or None for ones) weights each anchor and its pushes. Returns 0
    (with a gradient path) when no anchor has both a positive and a negative.
    """
    b = len(y)
    zn = F.normalize(z.reshape(b, -1), dim=1)
    sim = zn @ zn.T / temperature
    label_dist = (y[:, None] - y[None, :]).abs()
    pred = pred.detach()
    pred_close = (pred[:, None] - pred[None, :]).abs() <= window
    not_self = ~torch.eye(b, dtype=torch.bool, device=y.device)
    pos = (label_dist <= window) & not_self
    neg = (label_dist > window) & pred_close
    eta = torch.ones_like(y) if eta is None else eta
    # only anchors with a positive and a negative contribute; selecting their rows keeps every
    # logsumexp row non-empty, so masked entries can be -inf (no NaN, and exp(-inf) is cheap)
    anchor = pos.any(1) & neg.any(1)
    if not bool(anchor.any()):
        return sim.sum() * 0.0
    sim, pos, neg = sim[anchor], pos[anchor], neg[anchor]
    log_push = torch.log(eta[anchor])[:, None] + e * label_dist[anchor]
    logits = torch.where(pos, sim, sim + log_push).masked_fill(~(pos | neg), float("-inf"))
    per_anchor = torch.logsumexp(logits, dim=1) - (sim * pos).sum(1) / pos.sum(1)
    return (eta[anchor] * per_anchor).sum() / b


class ConR(TrainingMixin, Method):
    name = "conr"
    description = "ConR: MSE + contrastive regulariser pushing apart confused embeddings of distant labels"
    paper = "Keramati, Meng & Evans, ConR: Contrastive Regularizer for Deep Imbalanced Regression, ICLR 2024"
    needs_embedding = True

    def __init__(self, beta: float = 1.0, window: float = 0.1, temperature: float = 0.2, e: float = 0.12,
                 reweight: str = "none", **train_kw):
        self.beta = beta
        self.window = window
        self.temperature = temperature
        self.e = e
        self.reweight = reweight
        TrainingMixin.__init__(self, **train_kw)

    def setup(self, model, data, ctx):
        check_choice(self.name, "reweight", self.reweight, ("none", "sqrt_inv", "inverse"))
        if not float(self.window) > 0 or not float(self.temperature) > 0:
            raise ValueError(f"conr: window and temperature must be positive, got window={self.window}, "
                             f"temperature={self.temperature}")
        self._eta = None
        if self.reweight != "none":
            # η_j from the LDS-smoothed training-label density (Yang et al. 2021 defaults)
            edges, _ = label_bins(data.train.y)
            density = smoothed_density(data.train.y, edges, "gaussian", 5, 2.0, self.reweight)
            self._eta = BinLookup(edges, inverse_density_weights(data.train.y, edges, density)[0], ctx.device)

    def loss(self, model, batch, ctx):
        z = model.embed(batch.x)
        pred = model.head(z)
        mse = F.mse_loss(pred, batch.y)
        if not self.beta:
            return mse
        eta = self._eta(batch.y) if self._eta is not None else None
        reg = conr_loss(z, batch.y, pred, float(self.window), float(self.temperature), float(self.e), eta)
        return mse + float(self.beta) * reg


@hookimpl
def oodbench_methods():
    return [ConR]
