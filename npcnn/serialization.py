"""Configs as plain JSON-able values: initializers, regularizers, activations, optimizers and losses.

Layers' ``get_config`` (``npcnn/layers/*.py``) and the model file (``model.save`` /
``npcnn.models.load_model``) use these helpers, so a config is plain Python data (str, numbers, bool,
None, lists, dicts) that survives ``json.dumps``/``json.loads`` and rebuilds the same object:

* an initializer by its Keras name (``'glorot_uniform'``); a custom callable cannot be saved;
* a regularizer as ``{'class_name': 'L2', 'config': {'l2': 0.01}}`` (what ``regularizers.get`` reads);
* an activation by Keras's name (``'relu'``), or, when it is a layer whose settings a name does not
  give (``LeakyReLU(negative_slope=0.1)``, ``Softmax(axis=1)``), as that layer's
  ``{'class_name', 'config'}``;
* an optimizer or a loss as ``{'class_name', 'config'}``, the config read from the object's public
  constructor arguments (``learning_rate``, ``beta_1``, ...: each argument of ``__init__`` stored
  under an attribute of the same name). This works for any optimizer or loss class of
  :mod:`npcnn.optimizers` / :mod:`npcnn.losses`, including ones added later, as long as it keeps its
  arguments as same-named attributes; an argument that is not (or holds an object that is not JSON-able
  and has no ``get_config``) is left out with a warning, so the reloaded object gets its default there.

This module imports neither :mod:`npcnn.models` nor :mod:`npcnn.layers` when it is imported.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import warnings

import numpy as np

from npcnn import initializers, regularizers
from npcnn.utils import snake_case

__all__ = ["from_keras_layer_config", "serialize_initializer", "serialize_regularizer", "serialize_activation",
           "serialize_object", "deserialize_object", "plain"]


def plain(value):
    """``value`` with tuples kept, NumPy scalars made Python numbers (for configs that compare equal
    before and after JSON, up to tuples becoming lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def serialize_initializer(fn, owner, arg):
    """Keras's name of the initializer function ``fn`` (``'glorot_uniform'``, ``'zeros'``, ...).

    Raises:
        ValueError: a custom callable (it has no name npcnn can rebuild it from).
    """
    for name, known in initializers._INITIALIZERS.items():
        if fn is known:
            return name
    raise ValueError(f"{owner}: {arg} {getattr(fn, '__name__', fn)!r} is a custom callable, which a config cannot "
                     f"hold; use one of {sorted(initializers._INITIALIZERS)} to save the architecture (the "
                     "weights themselves save with save_weights)")


def serialize_regularizer(reg, owner, arg):
    """None, or ``{'class_name': 'L2', 'config': {...}}`` (read back by ``npcnn.regularizers.get``).

    Raises:
        ValueError: a custom regularizer object (not one of L1, L2, L1L2).
    """
    if reg is None:
        return None
    cls = type(reg).__name__
    if regularizers._CLASSES.get(cls) is type(reg):
        return {"class_name": cls, "config": plain(reg.get_config())}
    raise ValueError(f"{owner}: {arg} {reg!r} is a custom regularizer, which a config cannot hold; use "
                     f"{sorted(regularizers._CLASSES)}")


def serialize_activation(act):
    """Keras's name of an activation layer (or ``'linear'`` for None), or ``{'class_name', 'config'}``
    when the name alone would rebuild it with other settings (e.g. ``LeakyReLU(negative_slope=0.1)``:
    the name 'leaky_relu' means slope 0.2)."""
    if act is None:
        return "linear"
    name = getattr(act, "activation_name", None)
    if name is not None:
        from npcnn.layers.activations import get_activation_layer  # (a function, not the package's registry)

        by_name = get_activation_layer(name)
        same = by_name is None if name == "linear" else (
            type(by_name) is type(act) and _settings(by_name) == _settings(act))
        if same:
            return name
    return {"class_name": type(act).__name__, "config": act.get_config()}


def _settings(layer):
    config = dict(layer.get_config())
    config.pop("name", None)
    config.pop("input_shape", None)
    return config


# ------------------------------------------------------------------------------ optimizers and losses
def serialize_object(obj, what):
    """``{'class_name': type name, 'config': {arg: value}}`` from ``obj``'s public constructor arguments.

    Each argument of ``type(obj).__init__`` (but ``*args``/``**kwargs``) is read from the attribute of
    the same name; a value that is an object with ``get_config`` is stored as its own
    ``{'class_name', 'config'}`` (e.g. a learning-rate schedule). Arguments with no such attribute, or
    whose value is not JSON-able, are left out with a :class:`UserWarning` naming them.
    """
    if hasattr(obj, "get_config") and callable(obj.get_config):
        try:
            config = dict(obj.get_config())
        except NotImplementedError:
            config = None
        if config is not None:
            values = {k: _value(v, what, k) for k, v in config.items()}
            return {"class_name": type(obj).__name__, "config": {k: v for k, v in values.items() if v is not _SKIP}}
    config, skipped = {}, []
    for pname, p in inspect.signature(type(obj).__init__).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not hasattr(obj, pname):
            skipped.append(pname)
            continue
        v = _value(getattr(obj, pname), what, pname)
        if v is _SKIP:
            skipped.append(pname)
        else:
            config[pname] = v
    if skipped:
        warnings.warn(f"{what} {type(obj).__name__}: the arguments {skipped} could not be read back from the "
                      "object and are not saved; a reloaded one uses their defaults", UserWarning, stacklevel=3)
    return {"class_name": type(obj).__name__, "config": config}


_SKIP = object()


def _value(v, what, name):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (numbers.Integral, np.integer)):
        return int(v)
    if isinstance(v, (numbers.Real, np.floating)):
        return float(v)
    if isinstance(v, (tuple, list)):
        items = [_value(x, what, name) for x in v]
        return _SKIP if any(x is _SKIP for x in items) else items
    if isinstance(v, dict):
        items = {str(k): _value(x, what, name) for k, x in v.items()}
        return _SKIP if any(x is _SKIP for x in items.values()) else items
    if hasattr(v, "get_config") and callable(v.get_config):
        try:
            return serialize_object(v, what)
        except Exception:
            return _SKIP
    return _SKIP


def deserialize_object(spec, modules, what, where):
    """Rebuild what :func:`serialize_object` wrote: the class ``spec['class_name']`` found in one of
    ``modules`` (module names, searched in order), called with ``spec['config']``; nested
    ``{'class_name', 'config'}`` values are rebuilt first (from the same modules and
    ``npcnn.schedules`` when it exists).

    Raises:
        ValueError: not such a dict, an unknown class, or arguments the class refuses (named).
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("class_name"), str) \
            or not isinstance(spec.get("config", {}), dict):
        raise ValueError(f"{where}: the {what} must be {{'class_name': ..., 'config': {{...}}}}, got {spec!r}")
    name = spec["class_name"]
    cls = None
    for mod_name in list(modules) + ["npcnn.schedules"]:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        cand = getattr(mod, name, None)
        if isinstance(cand, type):
            cls = cand
            break
    if cls is None:
        raise ValueError(f"{where}: unknown {what} class {name!r} (this npcnn has no such class in "
                         f"{', '.join(modules)})")
    config = {}
    for k, v in (spec.get("config") or {}).items():
        if isinstance(v, dict) and isinstance(v.get("class_name"), str) and "config" in v:
            v = deserialize_object(v, modules, f"{what} argument {k!r}", where)
        config[k] = v
    try:
        if hasattr(cls, "from_config") and callable(cls.from_config):
            return cls.from_config(config)
        return cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot rebuild the {what} {name}({config}): {e}") from None


# --------------------------------------------------------------------------- Keras 3's layer configs
#: Keras 3 layer arguments npcnn has no counterpart for, with the values that mean "not used": a Keras
#: config holding exactly these loads (the key is dropped); any other value is refused by name.
KERAS_NEUTRAL = {
    "dilation_rate": ((1, 1), 1), "groups": (1,), "activity_regularizer": (None,), "kernel_constraint": (None,),
    "bias_constraint": (None,), "beta_constraint": (None,), "gamma_constraint": (None,),
    "beta_regularizer": (None,), "gamma_regularizer": (None,), "quantization_config": (None,),
    "synchronized": (False,), "renorm": (False,), "renorm_clipping": (None,), "lora_rank": (None,),
    "lora_alpha": (None,), "max_value": (None,), "negative_slope": (0.0,), "threshold": (0.0,),  # ReLU's
}
_KERAS_ONLY_IF = {"renorm_momentum": "renorm"}  # meaningful only when that other key is true


def _keras_object(value, kind, key, owner):
    """A Keras 3 ``{'module', 'class_name', 'config', 'registered_name'}`` dict as npcnn reads it: an
    initializer by its name (Keras's ``GlorotUniform`` with no seed -> ``'glorot_uniform'``), a regularizer
    as ``{'class_name', 'config'}``, a dtype policy as its dtype name."""
    if not isinstance(value, dict) or "class_name" not in value:
        return value
    cls, cfg = value["class_name"], dict(value.get("config") or {})
    if kind == "dtype":
        return cfg.get("name", "float32") if cls in ("DTypePolicy", "Policy", "FloatDTypePolicy") else value
    if kind == "initializer":
        used = {k: v for k, v in cfg.items() if v is not None}
        if used:
            raise ValueError(f"{owner}: {key}={cls}({', '.join(f'{k}={v!r}' for k, v in used.items())}): npcnn's "
                             "initializers take no arguments (seeds come from npcnn.set_random_seed)")
        return snake_case(cls)
    return {"class_name": cls, "config": cfg}  # a regularizer (npcnn.regularizers.get reads this)


def from_keras_layer_config(cls, config):
    """``config`` (a layer's ``get_config()`` from Keras 3 or from npcnn) as ``cls.from_config`` takes it.

    Keras 3 writes more than npcnn's layers take: its dtype policy, initializer and regularizer objects
    become npcnn's plain values; the arguments in :data:`KERAS_NEUTRAL` are dropped when they hold their
    "not used" value (``dilation_rate=(1, 1)``, ``groups=1``, no constraints, ...), and refused by name
    otherwise (npcnn has no dilated or grouped convolutions, no constraints). npcnn's own configs pass
    through unchanged.

    Raises:
        ValueError: a Keras feature npcnn does not have, named with its value.
    """
    config = dict(config)
    owner = cls.__name__
    if "dtype" in config:
        config["dtype"] = _keras_object(config["dtype"], "dtype", "dtype", owner)
    for key in list(config):
        if key.endswith("_initializer"):
            config[key] = _keras_object(config[key], "initializer", key, owner)
        elif key.endswith("_regularizer") and isinstance(config[key], dict):
            config[key] = _keras_object(config[key], "regularizer", key, owner)
    accepted = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted |= set(inspect.signature(init).parameters)
    for key in list(config):
        if key in accepted:
            continue
        value = config[key]
        if key in _KERAS_ONLY_IF:
            if not config.get(_KERAS_ONLY_IF[key]):
                del config[key]
            continue
        if key in KERAS_NEUTRAL:
            neutral = KERAS_NEUTRAL[key]
            as_tuple = tuple(value) if isinstance(value, list) else value
            if as_tuple in neutral:
                del config[key]
            else:
                raise ValueError(f"{owner}: Keras's {key}={value!r} is not supported by npcnn (only "
                                 f"{neutral[0]!r} is)")
    return config
