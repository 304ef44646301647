"""Where methods declare their yaml keys and their config checks.

A method's folder defines ``add_<method>_config(cfg)`` and decorates it with
:func:`register_config`; ``add_updetr_config`` calls the core functions and then every
registered one, so one call still adds every key of the project. Checks registered
with :func:`register_config_check` run on every loaded config, yaml (``CfgNode``) or
LazyConfig (``DictConfig``), before anything is built, so a bad combination of keys
fails with a message naming them instead of failing mid-training.
"""
from typing import Callable, Dict, List

__all__ = ["register_config", "register_config_check", "registered_configs", "run_config_checks"]

_CONFIGS: Dict[str, Callable] = {}
_CHECKS: List[Callable] = []


def register_config(add_config: Callable) -> Callable:
    """Register ``add_<method>_config(cfg)`` (by its name); usable as a decorator."""
    _CONFIGS[add_config.__name__] = add_config
    return add_config


def registered_configs() -> Dict[str, Callable]:
    """Name -> ``add_*_config`` of every registered method, in registration order."""
    return dict(_CONFIGS)


def register_config_check(check: Callable) -> Callable:
    """Register ``check(cfg)`` (raises ``ValueError`` naming the keys); usable as a decorator."""
    if check not in _CHECKS:
        _CHECKS.append(check)
    return check


def run_config_checks(cfg) -> None:
    for check in _CHECKS:
        check(cfg)
