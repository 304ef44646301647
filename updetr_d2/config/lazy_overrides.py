"""Command-line overrides of a LazyConfig that refuse keys the config does not have.

Detectron2's ``LazyConfig.apply_overrides`` creates any key it is given, so a typo
(``train.max_itr=3``) is accepted and the run goes on with the default ``max_iter``;
yaml configs already refuse unknown keys, and so does :func:`apply_lazy_overrides`.
"""
import difflib
from typing import List, Sequence

from detectron2.config import LazyConfig
from omegaconf import DictConfig, ListConfig

__all__ = ["UnknownConfigKeyError", "apply_lazy_overrides"]


class UnknownConfigKeyError(KeyError):
    """An override names a key the config does not have (or adds one it has)."""

    def __str__(self):  # KeyError quotes its message as a repr
        return str(self.args[0]) if self.args else ""


def apply_lazy_overrides(cfg, overrides: Sequence[str]):
    """Apply hydra-style ``key=value`` overrides to ``cfg`` (in place; returns it), as
    ``LazyConfig.apply_overrides`` does, after checking that every key exists.

    ``key`` is dotted (``train.max_iter=3``, ``model.transformer.num_encoder_layers=2``;
    a list element by its index, ``a.0.b=1``). A key the config does not have raises
    :class:`UnknownConfigKeyError` (a ``KeyError``) naming it and the closest existing
    keys, and no override is applied. To add a key on purpose, prefix it with ``+``
    (``+train.new_key=1``; an error if the key already exists, as in hydra) or with
    ``++`` (added, or overridden if it exists).
    """
    # Imported here, as Detectron2 does: hydra is slow to import and only needed here.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    for override in parsed:
        key = override.key_or_group
        if override.is_force_add():
            continue
        exists = _find(cfg, key)
        if override.is_add() and exists:
            raise UnknownConfigKeyError(
                f"'+{key}' adds a key, but the config already has '{key}': drop the '+' to "
                f"override it (or write '++{key}=...')")
        if not override.is_add() and not exists:
            raise UnknownConfigKeyError(_unknown_key_message(cfg, key))
    return LazyConfig.apply_overrides(cfg, list(overrides))


class _Missing(Exception):
    pass


def _children(node) -> List[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys()]
    if isinstance(node, ListConfig):
        return [str(i) for i in range(len(node))]
    return []


def _child(node, part):
    """``node[part]`` without resolving interpolations; raises :class:`_Missing`."""
    if isinstance(node, DictConfig):
        # keys(), not ``in``: a key whose value is ``???`` (MISSING) still exists.
        if part not in node.keys():
            raise _Missing
        return node._get_node(part)
    if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
        return node._get_node(int(part))
    raise _Missing


def _find(cfg, key: str) -> bool:
    """Whether ``key`` exists in ``cfg``. A missing key under an existing parent is
    False; a key under a value that is not a config is an error (as in Detectron2)."""
    node = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, (DictConfig, ListConfig)):
            value = node._value()  # a leaf: omegaconf's ValueNode
            raise UnknownConfigKeyError(f"Cannot override '{key}': '{'.'.join(parts[:depth])}' is "
                                        f"{value!r} ({type(value).__name__}), not a config")
        try:
            node = _child(node, part)
        except _Missing:
            return False
    return True


def _unknown_key_message(cfg, key: str) -> str:
    parts = key.split(".")
    node, depth = cfg, 0
    for depth, part in enumerate(parts):  # down to the deepest parent that exists
        try:
            node = _child(node, part)
        except _Missing:
            break
    prefix = ".".join(parts[:depth])
    siblings = _children(node)
    close = [".".join(filter(None, [prefix, s])) for s in difflib.get_close_matches(parts[depth], siblings)]
    if not close:  # right name, wrong place (``max_iter=3`` for ``train.max_iter=3``)
        leaf = parts[-1]
        close = [k for k in _all_keys(cfg) if k.rsplit(".", 1)[-1] == leaf][:3]
    where = f"'{prefix}'" if prefix else "the config"
    if isinstance(node, ListConfig):
        missing = f"{where} is a list of {len(node)}, with no item '{parts[depth]}'"
    else:
        missing = f"{where} has no '{parts[depth]}'"
    hint = f" Did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return (f"Unknown config key '{key}': {missing}.{hint} "
            f"To add a new key on purpose, write '+{key}=...'.")


def _all_keys(node, prefix: str = "") -> List[str]:
    keys = []
    for name in _children(node):
        path = f"{prefix}.{name}" if prefix else name
        keys.append(path)
        keys.extend(_all_keys(_child(node, name), path))
    return keys
