"""IR-net input standardisation: training-split statistics, and the optional clip of far-out features."""
import numpy as np
import torch

from oodbench.api import COMPOSITION, Subset, TensorInputs
from oodbench_plugins.backbones.irnet import IRNet


def _train(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[:, 2] = 0.0
    X[0, 2] = 1e-3        # nearly constant on the training split: a tiny, non-zero standard deviation
    inputs = TensorInputs(torch.from_numpy(X), kind=COMPOSITION, feature_names=["a", "b", "c"])
    return Subset(inputs, rng.normal(size=n).astype(np.float32), np.arange(n))


def test_standardisation_uses_training_statistics_and_clips_only_when_asked():
    train = _train()
    far = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)      # the rare feature at full size
    X = train.inputs.tensor
    plain = IRNet(widths=(8,)).build(train, seed=0)
    z = plain.normalise(far.float())
    expected = (1.0 - X[:, 2].mean()) / X[:, 2].std()
    assert torch.isclose(z[0, 2].double(), expected, rtol=1e-4) and z[0, 2] > 1e4
    clipped = IRNet(widths=(8,), input_clip=10).build(train, seed=0)
    zc = clipped.normalise(far.float())
    assert zc[0, 2] == 10 and torch.allclose(zc[0, :2], z[0, :2])
    inside = train.inputs.tensor[1:5].float()                            # ordinary rows are untouched
    assert torch.allclose(clipped.normalise(inside), plain.normalise(inside))
    with torch.no_grad():
        assert torch.isfinite(clipped.eval()(far.float())).all()


def test_input_clip_is_recorded_only_when_set():
    # records made before the switch existed must keep their config hash (sweeps skip them by it)
    assert "input_clip" not in IRNet().get_params()
    assert IRNet(input_clip=10).get_params()["input_clip"] == 10
    assert IRNet(**IRNet().get_params()).input_clip is None
