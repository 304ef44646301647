"""Methods built on the shared DETR parts; each adds only what it needs."""
from . import updetr  # noqa: F401  (registers UPDETR)
