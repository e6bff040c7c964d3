"""npcnn: a from-scratch NumPy (+ Numba) convolutional network engine with a Keras-compatible API."""

from npcnn.backend import get_backend, set_backend, use_backend
from npcnn.parallel import get_data_parallel, set_data_parallel
from npcnn.threads import get_num_threads, set_num_threads
from npcnn.utils import set_random_seed

__version__ = "0.1.0"



def __getattr__(name):  # npcnn.Input, as keras.Input (imported on first use: it pulls in the layers)
    if name == "Input":
        from npcnn.layers.input import Input

        return Input
    raise AttributeError(f"module 'npcnn' has no attribute {name!r}")


__all__ = ["get_backend", "set_backend", "use_backend", "get_num_threads", "set_num_threads", "set_random_seed",
           "get_data_parallel", "set_data_parallel",
           "__version__"]
