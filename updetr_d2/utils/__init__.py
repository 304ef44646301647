"""Small helpers every part of the package may use (no Detectron2 registration here)."""
from .files import atomic_write, write_json_atomic

__all__ = ["atomic_write", "write_json_atomic"]
