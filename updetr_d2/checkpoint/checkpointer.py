"""The checkpointer the training and evaluation entry points load weights with.

Detectron2's :class:`~detectron2.checkpoint.DetectionCheckpointer` reads its own
checkpoints and its model-zoo ``.pkl`` files. :class:`DetrCheckpointer` also reads users'
torchvision / SwAV / DINO / MoCo ResNet files (converted by
:mod:`updetr_d2.checkpoint.resnet_conversion`) and reads every file through
:mod:`updetr_d2.checkpoint.safe_load`, so no code runs from a file unless
``allow_unsafe=True``. Nothing here depends on the model: any detector with a Detectron2
ResNet (DETR, Deformable DETR, UP-DETR, Co-DETR ...) loads through it.

Official DETR checkpoints (facebookresearch/detr, detection and panoptic) are recognised
by their keys and converted on load (:mod:`updetr_d2.checkpoint.official_detr`), read
with the one class they pickle besides tensors (``argparse.Namespace``) allowed.

It saves through :mod:`updetr_d2.checkpoint.integrity`: whole files with a ``.sha256``
beside them, checked on load, and ``--resume`` falls back to the newest intact
checkpoint when the last one is missing, cut short or corrupt.
"""
import os
import zipfile
from typing import Mapping, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.files import atomic_write
from .integrity import folder_state, newest_intact, remove_leftovers, save_checkpoint, verify_checksum
from .official_layouts import convert_official_for_model, load_official_checkpoint
from .resnet_conversion import ConversionReport, convert_resnet_state_dict
from .safe_load import UnsafeCheckpointError, is_pickle_file, load_checkpoint_file
from .skip import check_skip_prefixes, skip_parts
from .torchvision_resnet import find_torchvision_resnet

__all__ = ["DetrCheckpointer", "UpdetrCheckpointer"]

# Entries only checkpoints written by Detectron2's checkpointer / model zoo have.
_D2_MARKERS = ("__author__", "matching_heuristics", "iteration", "scheduler", "trainer")


class DetrCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` that also reads torchvision / SwAV / DINO / MoCo
    ResNet files (converted to Detectron2 names, suffix-matched into the model) and never
    runs code from a file unless ``allow_unsafe=True``.

    Detectron2's own checkpoints load exactly as before (``torch.load(weights_only=True)``,
    the default of torch >= 2.6, which is what Detectron2 already got); model-zoo ``.pkl``
    files load as before, through a restricted unpickler. After a converted load,
    ``self.conversion_report`` holds the :class:`ConversionReport` (else None).
    """

    def __init__(self, model, save_dir="", *, allow_unsafe: bool = False, skip: Sequence[str] = (),
                 save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_unsafe = bool(allow_unsafe)
        self.skip = check_skip_prefixes(skip, self.model)  # fvcore unwrapped DDP
        self._skipping = True  # off only while a run resumes from its own checkpoint
        self.conversion_report: Optional[ConversionReport] = None
        self._resume_choice = None  # ((last_checkpoint, folder_state), chosen file)

    @classmethod
    def from_config(cls, cfg, model, save_dir="", **kwargs):
        """Reads ``MODEL.ALLOW_UNSAFE_CHECKPOINTS`` (default False) and
        ``MODEL.WEIGHTS_SKIP`` from a yaml config."""
        return cls(model, save_dir, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS,
                   skip=cfg.MODEL.WEIGHTS_SKIP, **kwargs)

    def resume_or_load(self, path, *, resume=True):
        # The skipped parts are a choice about the initial weights: a resumed run loads all
        # of its own checkpoint (the skipped parts have trained since).
        self._skipping = not (resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._skipping = True

    def _local(self) -> bool:
        # Remote stores behind PathManager (manifold://, s3://) have no atomic rename:
        # there, files are written and found as Detectron2 does.
        return "://" not in self.save_dir

    def save(self, name, **kwargs):
        # fvcore writes the file in place: a run killed mid-save left a truncated file under
        # the final name and, worse, nothing to tell it from a good one.
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        for path in remove_leftovers(self.save_dir):
            self.logger.info("Removed '%s', left by an earlier save", path)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        save_checkpoint(data, save_file)
        self.tag_last_checkpoint(basename)  # only once the file and its checksum are complete

    def tag_last_checkpoint(self, last_filename_basename):
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename))

    def has_checkpoint(self) -> bool:
        # A run whose checkpoints are all damaged starts as if it had none (resume_or_load
        # then loads the initial weights and the trainer starts at iteration 0).
        return bool(self.get_checkpoint_file())

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names or, when it is missing, cut short or fails
        its checksum, the newest intact checkpoint in ``save_dir`` (warning naming each
        bad file); "" when there is none."""
        named = super().get_checkpoint_file()
        if not named or not self._local():
            return named
        # Asked several times per resume (here, by resume_or_load, by the trainer): the
        # files are checked once while the folder is unchanged.
        key = (named, folder_state(self.save_dir or "."))
        if self._resume_choice is None or self._resume_choice[0] != key:
            self._resume_choice = (key, self._choose_checkpoint(named))
        return self._resume_choice[1]

    def _choose_checkpoint(self, named: str) -> str:
        chosen, rejected = newest_intact(named, self.save_dir or ".", self._check_intact)
        for path, reason in rejected:
            self.logger.warning("Not resuming from '%s': %s", path, reason)
        if chosen is None:
            self.logger.warning(
                "No intact checkpoint in '%s': the run starts from its initial weights, as "
                "if it had no checkpoint.", self.save_dir)
            return ""
        if rejected:
            self.logger.warning("Resuming from '%s', the newest intact checkpoint.", chosen)
        return chosen

    def _check_intact(self, path: str) -> None:
        """Raise unless ``path`` matches its checksum or, without one, loads."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"'{path}' does not exist")
        if verify_checksum(path):
            return
        try:
            load_checkpoint_file(path, allow_unsafe=self.allow_unsafe)
        except UnsafeCheckpointError:
            # torch says the same of bytes that are no checkpoint at all; a complete
            # torch.save archive was only refused, which the load itself reports, as before.
            if not zipfile.is_zipfile(path):
                raise

    def _model_uses_torchvision_names(self) -> bool:
        """True when the model itself holds torchvision ResNet names, so a torchvision
        file must load unconverted."""
        return any(k == "layer1.0.conv1.weight" or k.endswith(".layer1.0.conv1.weight")
                   for k in self.model.state_dict().keys())

    def _load_file(self, filename):
        # Detectron2's own _load_file unpickles .pkl files with pickle.load, which can run
        # code, so it is not called: its .pkl (Detectron2 / Caffe2 model zoo) and .pyth
        # (pycls) layouts are read again here from the safely loaded data.
        self.conversion_report = None
        verify_checksum(filename)  # a file saved with a checksum must still match it
        try:
            data = load_checkpoint_file(filename, allow_unsafe=self.allow_unsafe)
        except UnsafeCheckpointError as unsafe:
            # The official DETR files pickle an argparse.Namespace: read them again with
            # that one class allowed (load_official_checkpoint refuses anything else).
            try:
                official = self._official(filename, load_official_checkpoint(filename))
            except UnsafeCheckpointError:
                official = None
            if official is None:
                raise unsafe from None
            return official
        official = None if is_pickle_file(filename) else self._official(filename, data)
        if official is not None:
            return official
        if is_pickle_file(filename):
            if isinstance(data, Mapping) and "model" in data and "__author__" in data:
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            if isinstance(data, Mapping) and "blobs" not in data and self._convertible(data):
                return self._convert(data)
            if isinstance(data, Mapping) and "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            assert isinstance(data, Mapping) and "model_state" in data, (
                f"Cannot load .pyth file {filename}; pycls checkpoints must contain 'model_state'."
            )
            model_state = {k: v for k, v in data["model_state"].items()
                           if not k.endswith("num_batches_tracked")}
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        if self._convertible(data):
            return self._convert(data)
        if isinstance(data, Mapping) and "model" in data:
            return data
        return {"model": data}

    def _official(self, filename, data):
        """An official DETR file converted to the model's names (``None`` for any other
        file); a layout it cannot map onto the model is an error naming the file."""
        if isinstance(data, Mapping) and any(k in data for k in _D2_MARKERS):
            return None
        try:
            found = convert_official_for_model(data, self.model)
        except ValueError as e:
            raise ValueError(f"{filename}: {e}") from None
        if found is None:
            return None
        layout, state_dict = found
        self.logger.info(f"{filename}: an official DETR {layout} checkpoint, converted ({len(state_dict)} tensors)")
        return {"model": state_dict, "__author__": f"official DETR ({layout}), converted by updetr_d2",
                "matching_heuristics": False}

    def _convertible(self, data) -> bool:
        if not isinstance(data, Mapping) or any(k in data for k in _D2_MARKERS):
            return False
        if self._model_uses_torchvision_names():
            return False
        return find_torchvision_resnet(data) is not None

    def _convert(self, data):
        converted, report = convert_resnet_state_dict(data)
        self.conversion_report = report
        return {
            "model": converted,
            "__author__": f"updetr_d2 converted from {report.format}",
            "matching_heuristics": True,
        }

    def _load_model(self, checkpoint):
        # The model's hand-off rules see the checkpoint before fvcore drops every tensor
        # whose shape differs from the model's (a pretraining class head would otherwise
        # vanish with a generic warning before any rule could name it).
        apply_rules = getattr(self.model, "apply_checkpoint_rules", None)  # fvcore unwrapped DDP
        if callable(apply_rules) and not checkpoint.get("matching_heuristics", False):
            apply_rules(checkpoint["model"])
        if self.skip and self._skipping:
            skip_parts(checkpoint["model"], self.skip, self.logger)
        incompatible = super()._load_model(checkpoint)
        report = self.conversion_report
        if report is not None:
            self.logger.info("Converted ResNet weights: " + report.summary().replace("\n", "\n  "))
            if len(report.skipped_unknown) > len(report.converted):
                self.logger.warning(
                    "Only the ResNet backbone was converted; %d other keys were not loaded "
                    "(is this a full detector checkpoint?)", len(report.skipped_unknown))
        return incompatible


# Backwards-compatible alias: the class was named UpdetrCheckpointer while only UP-DETR
# used it. updetr_d2.engine and older user code still import that name; new code should
# use DetrCheckpointer.
UpdetrCheckpointer = DetrCheckpointer
