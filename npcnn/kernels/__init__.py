"""The math of npcnn as pure functions (the cs231n kernel contract).

Each op is a pair ``forward(...) -> (out, cache)`` and ``backward(dout, cache) -> grads``. Every
op file holds its readable NumPy twin (``*_numpy``) and, beside it, its compiled Numba version
(``*_numba``), with identical signatures, and ends with a ``KERNELS`` dict
``{"name": (numpy_fn, numba_fn)}``; the modules listed in :data:`MODULES` are registered in
:mod:`npcnn.kernels.registry`. The contract, in short (docs/kernels.md has it in full):

* every kernel takes the keyword ``ws=None``: a :class:`~npcnn.kernels.workspace.Workspace` of
  named scratch buffers ("<kernel>.<array>") reused from call to call; with a ``ws`` a kernel's
  outputs are buffers overwritten by the next call with the same ``ws``, with None they are fresh;
* caches are named tuples shared by both twins (ConvCache, PoolCache, DenseCache, FusedCache,
  WinogradCache);
  the activations' cache is their output array;
* ``npcnn.kernels.<name>(...)`` dispatches to the active backend's implementation, looked up at
  call time, so :func:`override` and :func:`npcnn.set_backend` apply at once; composite kernels
  look their parts up the same way (conv -> im2col, col2im, or on the Numba backend for a qualifying
  3x3 stride-1 layer winograd_forward/backward, which call neither; fused -> conv, pool).

Nothing here imports from ``npcnn.layers`` or ``npcnn.models``.
"""

from __future__ import annotations

import types

from npcnn.kernels import (
    activations,
    augment,
    avgpool,
    batchnorm,
    conv,
    dense,
    dropout,
    fused,
    globalpool,
    im2col,
    optim,
    pool,
    softmax_ce,
    winograd,
)
from npcnn.kernels.conv import ConvCache
from npcnn.kernels.dense import DenseCache
from npcnn.kernels.fused import FusedCache
from npcnn.kernels.im2col import conv_geometry, normalize_padding, output_size
from npcnn.kernels.pool import PoolCache
from npcnn.kernels.registry import (
    _REGISTRY,
    UnknownKernelError,
    get_kernel,
    kernel_names,
    override,
    register,
    register_module,
)
from npcnn.kernels.winograd import WinogradCache
from npcnn.kernels.workspace import Workspace

# The kernel modules; each defines KERNELS = {"name": (numpy_fn, numba_fn)}. Adding a kernel file
# is the file plus one entry here.
MODULES = (
    im2col,
    conv,
    pool,
    activations,
    dense,
    softmax_ce,
    optim,
    fused,
    batchnorm,
    dropout,
    avgpool,
    globalpool,
    augment,
    winograd,
)

for _module in MODULES:
    register_module(_module)


def _dispatcher(name):
    def call(*args, **kwargs):
        return get_kernel(name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = (f"Dispatch to the active backend's ``{name}`` (looked up at call time; "
                    f"see its NumPy twin ``{name}_numpy`` for the arguments).")
    return call


class _KernelModule(types.ModuleType):
    """A kernel module named like one of its kernels (``im2col``): calling the module dispatches,
    so ``npcnn.kernels.im2col(...)`` runs the kernel and ``npcnn.kernels.im2col.im2col_numpy`` is
    still the module's function."""

    def __call__(self, *args, **kwargs):
        return get_kernel(self.__name__.rpartition(".")[2])(*args, **kwargs)


# One dispatcher per registered kernel, e.g. npcnn.kernels.conv2d_forward(...).
_DISPATCHERS = sorted(_REGISTRY)
for _name in _DISPATCHERS:
    if isinstance(globals().get(_name), types.ModuleType):
        globals()[_name].__class__ = _KernelModule
    else:
        globals()[_name] = _dispatcher(_name)
del _module, _name


def __getattr__(name):
    """A dispatcher for a kernel registered after import (``register`` of a new name)."""
    if name in _REGISTRY:
        fn = _dispatcher(name)
        globals()[name] = fn
        return fn
    raise AttributeError(f"module 'npcnn.kernels' has no attribute {name!r}")


def softmax(z, ws=None):
    """The softmax's output p only (N, K): an alias kept for older callers of ``K.softmax``.

    Layers call ``softmax_forward(z, ws) -> (p, cache)``.
    """
    return get_kernel("softmax_forward")(z, ws=ws)[0]


__all__ = [
    "register", "get_kernel", "conv_geometry", "output_size", "normalize_padding",
    "override", "register_module", "kernel_names", "UnknownKernelError", "Workspace",
    "ConvCache", "DenseCache", "FusedCache", "PoolCache", "WinogradCache",
    *_DISPATCHERS, "softmax",
]
