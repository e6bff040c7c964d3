"""The math of npcnn as pure functions (the cs231n kernel contract).

Each op is a pair ``forward(...) -> (out, cache)`` and ``backward(dout, cache)``.
Every op file holds its readable NumPy twin (``*_numpy``) and, beside it, its
compiled Numba version (``*_numba``); the public names below dispatch to the
backend chosen by :mod:`npcnn.backend`. Nothing here
imports from ``npcnn.layers`` or ``npcnn.models``.
"""

from __future__ import annotations

from npcnn.backend import get_backend
from npcnn.kernels import activations, conv, dense, fused, im2col, optim, pool, softmax_ce
from npcnn.kernels.im2col import conv_geometry, normalize_padding, output_size

# name -> {"numpy": fn, "numba": fn}. A numba entry missing falls back to numpy.
_REGISTRY = {
    "im2col": {"numpy": im2col.im2col_numpy, "numba": im2col.im2col_numba},
    "col2im": {"numpy": im2col.col2im_numpy, "numba": im2col.col2im_numba},
    "conv2d_forward": {"numpy": conv.conv2d_forward_numpy, "numba": conv.conv2d_forward_numba},
    "conv2d_backward": {"numpy": conv.conv2d_backward_numpy, "numba": conv.conv2d_backward_numba},
    "maxpool2d_forward": {"numpy": pool.maxpool2d_forward_numpy, "numba": pool.maxpool2d_forward_numba},
    "maxpool2d_backward": {"numpy": pool.maxpool2d_backward_numpy, "numba": pool.maxpool2d_backward_numba},
    "relu_forward": {"numpy": activations.relu_forward_numpy, "numba": activations.relu_forward_numba},
    "relu_backward": {"numpy": activations.relu_backward_numpy, "numba": activations.relu_backward_numba},
    "sparse_softmax_ce": {"numpy": softmax_ce.sparse_softmax_ce_numpy,
                          "numba": softmax_ce.sparse_softmax_ce_numba},
    "adam_update": {"numpy": optim.adam_update_numpy, "numba": optim.adam_update_numba},
    "add_arrays": {"numpy": optim.add_arrays_numpy, "numba": optim.add_arrays_numba},
    "all_finite": {"numpy": optim.all_finite_numpy, "numba": optim.all_finite_numba},
    "conv2d_relu_maxpool_forward": {"numpy": fused.conv2d_relu_maxpool_forward_numpy,
                                    "numba": fused.conv2d_relu_maxpool_forward_numba},
    "conv2d_relu_maxpool_backward": {"numpy": fused.conv2d_relu_maxpool_backward_numpy,
                                     "numba": fused.conv2d_relu_maxpool_backward_numba},
}


def register(name, backend, fn):
    """Register ``fn`` as the ``backend`` implementation of kernel ``name``."""
    _REGISTRY[name][backend] = fn


def get_kernel(name, backend=None):
    """Return the implementation of kernel ``name`` for ``backend`` (default: the active one)."""
    impls = _REGISTRY[name]
    return impls.get(backend or get_backend(), impls["numpy"])


def _dispatcher(name):
    def call(*args, **kwargs):
        return get_kernel(name)(*args, **kwargs)

    call.__name__ = name
    call.__doc__ = f"Dispatch to the active backend's ``{name}`` (see ``{name}_numpy``)."
    return call


conv2d_forward = _dispatcher("conv2d_forward")
conv2d_backward = _dispatcher("conv2d_backward")
maxpool2d_forward = _dispatcher("maxpool2d_forward")
maxpool2d_backward = _dispatcher("maxpool2d_backward")
relu_forward = _dispatcher("relu_forward")
relu_backward = _dispatcher("relu_backward")
sparse_softmax_ce = _dispatcher("sparse_softmax_ce")
adam_update = _dispatcher("adam_update")
add_arrays = _dispatcher("add_arrays")
all_finite = _dispatcher("all_finite")
conv2d_relu_maxpool_forward = _dispatcher("conv2d_relu_maxpool_forward")
conv2d_relu_maxpool_backward = _dispatcher("conv2d_relu_maxpool_backward")
dense_forward = dense.dense_forward
dense_backward = dense.dense_backward
softmax = activations.softmax_numpy
softmax_backward = activations.softmax_backward_numpy
sparse_ce_from_probs = softmax_ce.sparse_ce_from_probs_numpy

__all__ = [
    "register", "get_kernel", "conv_geometry", "output_size", "normalize_padding",
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward",
    "maxpool2d_backward", "relu_forward", "relu_backward", "sparse_softmax_ce",
    "adam_update", "add_arrays", "all_finite",
    "conv2d_relu_maxpool_forward", "conv2d_relu_maxpool_backward",
    "dense_forward", "dense_backward", "softmax", "softmax_backward", "sparse_ce_from_probs",
]
