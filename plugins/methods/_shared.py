"""Helpers shared by the imbalanced-regression and augmentation method plugins.

Label-space tools (bin width, LDS-smoothed label density) and the rule that
decides whether a batch can be mixed in input space (a plain feature tensor,
as IR-net's) or only through the backbone's embedding (crystal graphs).
Not a plugin: no entry point.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

KERNELS = ("gaussian", "triang", "laplace")
REWEIGHTS = ("sqrt_inv", "inverse")
SPACES = ("auto", "input", "embedding")

# Freedman-Diaconis can give thousands of bins for heavy-tailed labels; beyond this
# the kernel (a few bins wide) smooths over nothing and the histogram is all noise.
MAX_BINS = 512


def check_choice(method: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{method}: {name}={value!r} is not one of {', '.join(map(repr, choices))}; "
                         f"set it with -M {name}=<one of them>")


def label_bins(y: np.ndarray, bin_width: Optional[float] = None) -> tuple[np.ndarray, float]:
    """Bin edges over the range of ``y`` and the width used.

    Without ``bin_width`` the Freedman-Diaconis rule (2 IQR n^-1/3) picks it,
    falling back to Scott's rule (3.49 sd n^-1/3) when half the labels are equal.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.size < 2 or not np.all(np.isfinite(y)):
        raise ValueError(f"need at least two finite training labels to build a label histogram, got {y.size}")
    lo, hi = float(y.min()), float(y.max())
    if hi - lo <= 0:
        raise ValueError("all training labels are equal: a label density (and any re-weighting by it) "
                         "is undefined; use method 'erm'")
    if bin_width is None:
        q75, q25 = np.percentile(y, [75, 25])
        width = 2.0 * (q75 - q25) * y.size ** (-1 / 3)
        if width <= 0:
            width = 3.49 * float(y.std()) * y.size ** (-1 / 3)
        width = max(width, (hi - lo) / MAX_BINS)
    else:
        width = float(bin_width)
        if not width > 0:
            raise ValueError(f"bin_width must be positive (in standardised label units), got {bin_width}")
    n_bins = max(1, int(np.ceil((hi - lo) / width)))
    return lo + width * np.arange(n_bins + 1), width


def kernel_window(kernel: str, size: int, sigma: float) -> np.ndarray:
    """Symmetric smoothing window of ``size`` bins, peak 1 (Yang et al. 2021, Sec. 3.1)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number of bins, got {size}")
    if kernel != "triang" and not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    k = np.arange(size) - size // 2
    if kernel == "gaussian":
        # The authors' window: a unit impulse Gaussian-filtered within the ks bins (reflecting
        # boundary). For ks=5, sigma=2 it is [.86 .95 1 .95 .86], flatter than a sampled
        # Gaussian; every published LDS number (and RankSim/ConR/Balanced MSE baselines) used it.
        from scipy.ndimage import gaussian_filter1d
        w = gaussian_filter1d((k == 0).astype(np.float64), sigma)
    elif kernel == "laplace":
        w = np.exp(-np.abs(k) / sigma)
    else:  # triangular, zero just beyond the window's ends
        w = 1.0 - np.abs(k) / (size // 2 + 1)
    return w / w.max()


def smoothed_density(y: np.ndarray, edges: np.ndarray, kernel: str = "gaussian", kernel_size: int = 5,
                     sigma: float = 2.0, reweight: str = "sqrt_inv") -> np.ndarray:
    """Per-bin effective label density: histogram (square-rooted for ``sqrt_inv``) convolved with the kernel."""
    counts, _ = np.histogram(np.asarray(y, dtype=np.float64), bins=edges)
    counts = counts.astype(np.float64)
    if reweight == "sqrt_inv":
        counts = np.sqrt(counts)
    from scipy.ndimage import convolve1d
    # zero padding: no density outside the training range; the output has one value per bin even
    # when the window is wider than the histogram
    return convolve1d(counts, kernel_window(kernel, kernel_size, sigma), mode="constant", cval=0.0)


def inverse_density_weights(y: np.ndarray, edges: np.ndarray, density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin weights 1/density, scaled so that the mean weight over ``y`` is 1; and the samples' weights."""
    bins = bin_index(y, edges)
    inv = np.zeros_like(density)
    inv[density > 0] = 1.0 / density[density > 0]
    per_sample = inv[bins]
    scale = len(per_sample) / per_sample.sum()
    return inv * scale, per_sample * scale


def bin_index(y, edges: np.ndarray) -> np.ndarray:
    """Bin of each label; labels beyond the training range fall into the end bins."""
    return np.clip(np.searchsorted(edges, np.asarray(y), side="right") - 1, 0, len(edges) - 2)


class BinLookup:
    """Per-bin values looked up by label on the labels' own device (no host round trip)."""

    def __init__(self, edges: np.ndarray, values: np.ndarray, device):
        self.inner = torch.as_tensor(edges[1:-1], dtype=torch.float32, device=device)
        self.values = torch.as_tensor(values, dtype=torch.float32, device=device)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.values[torch.bucketize(y.detach(), self.inner, right=True)]


def input_space(model, x) -> Optional[tuple[torch.Tensor, Callable]]:
    """``(xs, forward)`` when the batch is one float feature tensor, else None.

    ``xs`` is the batch in the space the network sees (standardised features
    where the module exposes ``normalise``/``embed_normalised``, as IR-net
    does) and ``forward(xs)`` the predictions from it. Crystal-graph batches
    cannot be mixed or decomposed; methods then work on ``model.embed(x)``.
    """
    if not (torch.is_tensor(x) and x.is_floating_point() and x.dim() == 2):
        return None
    if hasattr(model, "normalise") and hasattr(model, "embed_normalised"):
        return model.normalise(x), lambda xs: model.head(model.embed_normalised(xs))
    return x, model


def check_space(method: str, space: str, inputs) -> None:
    """Fail before training when ``space='input'`` meets inputs that are not one feature tensor."""
    check_choice(method, "space", space, SPACES)
    if space == "input" and getattr(inputs, "tensor", None) is None:
        raise ValueError(f"{method}: space='input' needs a backbone whose inputs are one feature tensor "
                         f"(e.g. irnet); these are {type(inputs).__name__}. Use space='auto' or 'embedding'")


def resolve_space(method: str, space: str, model, x):
    """The input-space view of the batch (or None for embedding space), honouring ``space``."""
    check_choice(method, "space", space, SPACES)
    if space == "embedding":
        return None
    view = input_space(model, x)
    if view is None and space == "input":
        raise ValueError(f"{method}: space='input' needs a backbone whose batch is one feature tensor "
                         f"(e.g. irnet); this backbone's batch is {type(x).__name__}. Use space='auto' "
                         f"or 'embedding'")
    return view
