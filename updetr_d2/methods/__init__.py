"""Methods built on the shared DETR parts; each adds only what it needs."""
from . import codetr, updetr  # noqa: F401  (registers CoDeformableDetr, UPDETR)
