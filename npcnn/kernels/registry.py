"""The kernel registry: every kernel's NumPy twin and Numba version, looked up by name at call time.

``_REGISTRY`` maps a kernel name to ``{"numpy": fn, "numba": fn}``. Each kernel module ends with
a ``KERNELS`` dict, ``{"name": (numpy_fn, numba_fn)}``, and :mod:`npcnn.kernels` registers every
module in its module tuple with :func:`register_module`; so adding a kernel is its file (with its
KERNELS dict) plus one entry in that tuple.

Everything that calls a kernel, the layers through the dispatchers ``npcnn.kernels.<name>`` and
the composite kernels themselves (conv calls im2col and col2im, the fused op calls conv and
pool), looks it up here *at call time*, for a given backend: the convolution's Numba version
asks for ``get_kernel("col2im", "numba")``, its twin for ``get_kernel("col2im", "numpy")``. So
:func:`override` replaces a kernel everywhere it is used::

    def broken_col2im(cols, x_shape, kernel_size, strides, pads, out_hw, ws=None):
        return np.zeros(x_shape, cols.dtype)        # forgets to scatter the gradient back

    with npcnn.kernels.override("col2im", broken_col2im):
        npcnn.gradcheck.check_layer(Conv2D(4, 3), (7, 6, 2))   # d input now fails the check

A replacement takes the kernel's full signature, ``ws=None`` included (see docs/kernels.md).
Nothing here imports from ``npcnn.layers`` or ``npcnn.models``.
"""

from __future__ import annotations

import contextlib

from npcnn.backend import BACKENDS, get_backend

# name -> {"numpy": fn, "numba": fn}
_REGISTRY: dict = {}


class UnknownKernelError(KeyError, ValueError):
    """A kernel name that is not registered (a KeyError and a ValueError, with a readable message)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _impls(name):
    """The {backend: fn} dict of a registered kernel, or UnknownKernelError naming the valid names."""
    impls = _REGISTRY.get(name)
    if impls is None:
        from npcnn.utils import did_you_mean

        names = sorted(_REGISTRY)
        hint = did_you_mean(name, names)
        if not hint.startswith(". Valid"):
            hint += f" Registered kernels: {', '.join(names)}"
        raise UnknownKernelError(f"unknown kernel {name!r}{hint}")
    return impls


def register(name, backend, fn):
    """Register ``fn`` as the ``backend`` ('numpy' or 'numba') implementation of kernel ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a kernel name is a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"kernel {name!r}: {fn!r} is not callable")
    _check_backend(backend)
    _REGISTRY.setdefault(name, {})[backend] = fn


def register_module(module):
    """Register every entry of ``module.KERNELS``, a dict ``{"name": (numpy_fn, numba_fn)}``."""
    for name, (numpy_fn, numba_fn) in module.KERNELS.items():
        register(name, "numpy", numpy_fn)
        register(name, "numba", numba_fn)


def get_kernel(name, backend=None):
    """The implementation of kernel ``name`` for ``backend`` (None: the active one, see npcnn.backend).

    Raises:
        UnknownKernelError (a KeyError and a ValueError): ``name`` is not registered; the message
            names the registered kernels.
        ValueError: ``backend`` is neither 'numpy' nor 'numba'.
    """
    impls = _REGISTRY.get(name)
    if impls is None:
        impls = _impls(name)  # raises
    be = backend or get_backend()
    fn = impls.get(be)
    if fn is None:  # a backend without its own version (registered with register()) runs the twin
        _check_backend(be)
        fn = impls.get("numpy")
        if fn is None:
            raise UnknownKernelError(f"kernel {name!r} has no {be!r} implementation (registered: {sorted(impls)})")
    return fn


def kernel_names():
    """The registered kernel names, sorted."""
    return sorted(_REGISTRY)


_MISSING = object()


@contextlib.contextmanager
def override(name, fn, backend=None):
    """Context manager: run a block with ``fn`` as kernel ``name`` (for ``backend``; None: both).

    Every caller that looks the kernel up at call time sees ``fn``: the dispatchers
    ``npcnn.kernels.<name>`` and therefore the layers, and the composite kernels (conv's
    backward calls col2im through the registry, the fused op calls conv and pool). The previous
    implementations come back on exit, also when the block raises; overrides nest.

    Example::

        with npcnn.kernels.override("col2im", broken_col2im):
            ...  # Conv2D's input gradient now goes through broken_col2im; gradcheck fails

    Yields:
        fn.
    """
    impls = _impls(name)
    backends = BACKENDS if backend is None else (_check_backend(backend),)
    if not callable(fn):
        raise TypeError(f"override({name!r}, ...): {fn!r} is not callable")
    saved = {b: impls.get(b, _MISSING) for b in backends}
    try:
        for b in backends:
            impls[b] = fn
        yield fn
    finally:
        for b, old in saved.items():
            if old is _MISSING:
                impls.pop(b, None)
            else:
                impls[b] = old
