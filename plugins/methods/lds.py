"""Plugin: LDS, label distribution smoothing (Yang et al., ICML 2021).

Yang, Zha, Chen, Wang & Katabi, "Delving into Deep Imbalanced Regression",
ICML 2021, Sec. 3.1. The empirical label density is replaced by its
convolution with a symmetric kernel k:

    p~(y') = ∫ k(y, y') p(y) dy,

and every training sample is weighted by the inverse of p~ at its label
(cost-sensitive re-weighting). As in the authors' release the histogram counts
are square-rooted first ("SQINV", the paper's default; ``reweight='inverse'``
uses raw counts), the kernel is Gaussian with size 5 bins and sigma 2, and the
weights are rescaled to mean 1 over the training set so the loss keeps the
scale of the plain MSE.

Adapted for materials: the paper's labels come in natural bins (1 year of
age); materials labels do not, so the bin width is chosen from the training
labels by the Freedman-Diaconis rule (``bin_width`` overrides it, in
standardised units) and recorded in the result (``lds_bin_width`` in label
units). The histogram is built from the training split only — never the
validation or test labels — and labels beyond the training range take the
weight of the end bins. The weighted loss is the MSE on standardised targets,
the objective every other method here uses (the paper's AgeDB runs used L1).
"""
from __future__ import annotations

from oodbench import hookimpl
from oodbench.api import Method
from oodbench.training import TrainingMixin

from ._shared import KERNELS, REWEIGHTS, BinLookup, check_choice, inverse_density_weights, label_bins, \
    smoothed_density


class LDS(TrainingMixin, Method):
    name = "lds"
    description = "label distribution smoothing: MSE weighted by the inverse kernel-smoothed label density"
    paper = "Yang et al., Delving into Deep Imbalanced Regression, ICML 2021"

    def __init__(self, kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0,
                 reweight: str = "sqrt_inv", bin_width=None, **train_kw):
        self.kernel = kernel
        self.kernel_size = kernel_size
        self.sigma = sigma
        self.reweight = reweight
        self.bin_width = bin_width
        TrainingMixin.__init__(self, **train_kw)

    def setup(self, model, data, ctx):
        check_choice(self.name, "kernel", self.kernel, KERNELS)
        check_choice(self.name, "reweight", self.reweight, REWEIGHTS)
        edges, width = label_bins(data.train.y, self.bin_width)
        density = smoothed_density(data.train.y, edges, self.kernel, int(self.kernel_size), float(self.sigma),
                                   self.reweight)
        bin_w, sample_w = inverse_density_weights(data.train.y, edges, density)
        self._weight = BinLookup(edges, bin_w, ctx.device)
        ctx.info.update(lds_bin_width=float(width * data.y_scale), lds_bin_width_std=float(width),
                        lds_bins=len(edges) - 1,
                        lds_weight_range=[float(sample_w.min()), float(sample_w.max())])

    def sample_weights(self, y):
        """LDS weight of each (standardised) label; available after ``setup``."""
        return self._weight(y)

    def loss(self, model, batch, ctx):
        return (self._weight(batch.y) * (model(batch.x) - batch.y) ** 2).mean()


@hookimpl
def oodbench_methods():
    return [LDS]
