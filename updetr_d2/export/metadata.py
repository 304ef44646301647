"""The metadata an exported file carries (:class:`ExportMetadata`, stored as JSON under
:data:`METADATA_KEY`): the input shape and channel order, the output names, and
Detectron2's ``outputs_schema``, which rebuilds ``Instances`` from the flattened outputs."""
import dataclasses
import json
from typing import Dict, List, Optional

from detectron2.export.flatten import (
    DictSchema,
    IdentitySchema,
    InstancesSchema,
    ListSchema,
    Schema,
    TensorWrapSchema,
    TupleSchema,
)

__all__ = ["METADATA_KEY", "ExportError", "ExportMetadata", "import_optional", "output_names"]

METADATA_KEY = "updetr_d2_export"


class ExportError(ValueError):
    """A model or input that cannot be exported, or an exported file that cannot run."""


@dataclasses.dataclass
class ExportMetadata:
    """What an exported file needs besides its graph to give the model's outputs."""

    format: str
    model: str  # the detector's class name
    input_shape: List[int]  # C, H, W
    input_format: str  # the channel order the model expects (cfg.INPUT.FORMAT), as told
    output_names: List[str]
    outputs_schema: Schema
    opset: Optional[int] = None

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["outputs_schema"] = _schema_to_dict(self.outputs_schema)
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text, source: str) -> "ExportMetadata":
        try:
            fields = json.loads(text)
            fields["outputs_schema"] = _schema_from_dict(fields["outputs_schema"])
            return cls(**fields)
        except (ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{source}: unreadable {METADATA_KEY} metadata ({e})") from e


# Detectron2's schema classes are dataclasses; as JSON each is its fields plus its name.
# Only these classes (and structures of detectron2.structures) are rebuilt from a file.
_SCHEMAS = {c.__name__: c for c in (ListSchema, TupleSchema, IdentitySchema, DictSchema, InstancesSchema,
                                    TensorWrapSchema)}


def _schema_to_dict(schema: Schema) -> Dict:
    out = {"schema": type(schema).__name__}
    for f in dataclasses.fields(schema):
        value = getattr(schema, f.name)
        out[f.name] = [_schema_to_dict(s) for s in value] if f.name == "schemas" else value
    return out


def _schema_from_dict(fields: Dict) -> Schema:
    fields = dict(fields)
    name = fields.pop("schema")
    if name not in _SCHEMAS:
        raise ValueError(f"unknown schema {name!r}")
    if "schemas" in fields:
        fields["schemas"] = [_schema_from_dict(s) for s in fields["schemas"]]
    if name == "TensorWrapSchema" and not fields["class_name"].startswith("detectron2.structures."):
        raise ValueError(f"{fields['class_name']!r} is not a Detectron2 structure")
    return _SCHEMAS[name](**fields)


def output_names(schema: Schema, prefix: str = "") -> List[str]:
    """One name per flattened output, by where it sits: ``0.instances.pred_boxes``,
    ``0.instances.image_size``, ... (ONNX output names)."""
    join = (lambda key: f"{prefix}.{key}") if prefix else str
    if isinstance(schema, InstancesSchema):
        names = [n for key, s in zip(schema.keys, schema.schemas) for n in output_names(s, join(key))]
        return names + [join("image_size")]
    if isinstance(schema, DictSchema):
        return [n for key, s in zip(schema.keys, schema.schemas) for n in output_names(s, join(key))]
    if isinstance(schema, ListSchema):  # and TupleSchema
        return [n for i, s in enumerate(schema.schemas) for n in output_names(s, join(i))]
    return [prefix or "output"]


def import_optional(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ExportError(f"{name} is not installed: pip install 'updetr_d2[export]' (onnx, onnxruntime)") from e
