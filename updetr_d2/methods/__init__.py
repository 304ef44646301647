"""Methods built on the shared DETR core, one folder each (see the README's
"Architecture" section): importing a method registers its meta-architecture, query
generators, mappers, config keys, config checks and checkpoint hand-off rules."""
from . import codetr, dn, panoptic, pretext, simdetr, updetr  # noqa: F401  (registration by import)
