"""Optional: the seed model's loss and gradients agree with PyTorch autograd given the same weights.

Skipped when torch is not installed (`pip install torch==2.13.0`).
"""

import numpy as np
import pytest
from conftest import seed_model

torch = pytest.importorskip("torch")


def torch_seed_model_loss(weights, x, y):
    """The same network in PyTorch from Keras-layout weights; returns (loss, grads in Keras layouts)."""
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    k1, b1, k2, b2, k3, b3, d1, c1, d2, c2 = params
    F = torch.nn.functional

    def conv(t, k, b):  # Keras kernel (KH, KW, C, F) -> torch (F, C, KH, KW)
        return F.relu(F.conv2d(t, k.permute(3, 2, 0, 1), b))

    t = torch.tensor(x).permute(0, 3, 1, 2)  # NHWC -> NCHW
    t = F.max_pool2d(conv(t, k1, b1), 2)
    t = F.max_pool2d(conv(t, k2, b2), 2)
    t = conv(t, k3, b3)
    t = t.permute(0, 2, 3, 1).reshape(len(x), -1)  # flatten in Keras's (h, w, c) order
    t = F.relu(t @ d1 + c1)
    logits = t @ d2 + c2
    loss = F.cross_entropy(logits, torch.tensor(y, dtype=torch.long))
    loss.backward()
    return loss.item(), [p.grad.numpy() for p in params], torch.softmax(logits, 1).detach().numpy()


def test_seed_model_matches_pytorch(backend, rng):
    model = seed_model()
    x = rng.random((8, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    # The gradients the model computes for this batch (no update: read layer.grads).
    loss, _, _ = model._loss_and_grad(x, y)
    ours = model.grads
    ref_loss, ref_grads, ref_probs = torch_seed_model_loss(model.get_weights(), x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for ours_g, ref_g, w in zip(ours, ref_grads, model.get_weights()):
        assert ours_g.shape == w.shape and ours_g.dtype == np.float32
        scale = np.abs(ref_g).max()
        np.testing.assert_allclose(ours_g, ref_g, rtol=0, atol=2e-5 * scale + 1e-8)
    np.testing.assert_allclose(model.predict(x), ref_probs, atol=1e-6)
