"""Folders of unlabeled images, for unsupervised (UP-DETR) pretraining.

``register_unlabeled_folder(name, folder)`` registers a Detectron2 dataset whose
records are ``{"file_name", "image_id", "height", "width"}``, one per readable
image found recursively under ``folder``. The folder is scanned when the dataset
is first loaded (``DatasetCatalog.get(name)``), not when it is registered.

The scan is meant for folders of 100k+ images, so it avoids decoding whole
images where the format allows:

- every file is opened with PIL, which parses only the header (size, EXIF);
- JPEG: the file must end with the end-of-image marker ``FFD9`` (trailing zero
  or whitespace padding allowed). Only when it does not is the image decoded,
  so that JPEGs with data appended after the marker (e.g. "motion photos")
  are not rejected while truncated ones are;
- PNG: the chunk headers are walked (seeks only) and must reach an ``IEND``;
- any other format is fully decoded with ``Image.load()``.

``height``/``width`` are those of the image as
:func:`detectron2.data.detection_utils.read_image` returns it, i.e. with the
EXIF orientation applied (orientations 5-8 swap height and width).
"""
import dataclasses
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from ..image_files import IMAGE_EXTENSIONS, is_image_file, normalize_extensions, walk_files

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ScanResult",
    "UnreadableImageError",
    "probe_image",
    "scan_image_folder",
    "load_unlabeled_folder",
    "register_unlabeled_folder",
]

# Images more elongated than this (long side / short side) are skipped: resized for
# training (long side at most MAX_SIZE_TRAIN, e.g. 1333) their short side would be about
# 13 px or, for a 2x4000 strip, below one pixel, which fails in the data loader.
MAX_ASPECT_RATIO = 100.0
_EXIF_ORIENTATION = 274  # EXIF tag "Orientation", as in detectron2.data.detection_utils
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_JPEG_EOI = b"\xff\xd9"
_JPEG_PADDING = b"\x00 \t\r\n\x0b\x0c"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# chunks that PIL turns into ``info`` entries read by ``Image.getexif``
_PNG_METADATA_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")


class UnreadableImageError(Exception):
    """A file with an image extension that cannot be used as an image.
    ``str(err)`` is the reason."""


@dataclasses.dataclass
class ScanResult:
    """What :func:`scan_image_folder` found.

    Attributes:
        records: Detectron2 dataset dicts of the readable images, sorted by path:
            ``{"file_name": absolute path, "image_id": path relative to the
            folder ("/"-separated), "height": int, "width": int}``.
        non_images: absolute paths of files skipped because their extension is
            not an image extension, sorted.
        unreadable: ``(absolute path, reason)`` for files with an image
            extension that cannot be used, sorted by path.
    """

    records: List[Dict] = dataclasses.field(default_factory=list)
    non_images: List[str] = dataclasses.field(default_factory=list)
    unreadable: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.records)} images, {len(self.non_images)} non-image files skipped, "
            f"{len(self.unreadable)} unreadable"
        )


def _jpeg_ends_with_eoi(f) -> bool:
    """Whether the file ends with FFD9, ignoring trailing zero/whitespace padding.
    Reads only the end of the file."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    tail = b""
    block = 4096
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        tail = f.read(end - start) + tail
        end = start
        stripped = tail.rstrip(_JPEG_PADDING)
        if len(stripped) >= 2 or end == 0:
            return stripped.endswith(_JPEG_EOI)
        block = min(block * 4, 1 << 20)
    return False


def _walk_png_chunks(f) -> Tuple[bool, bool]:
    """Walks the PNG chunk headers, seeking over chunk data.

    Returns ``(has_iend, metadata_after_idat)``: whether an ``IEND`` chunk is
    reached, and whether a chunk that may carry EXIF/XMP follows the first IDAT
    (PIL only reads those when the image is decoded).
    """
    f.seek(0)
    if f.read(8) != _PNG_SIGNATURE:
        return False, False
    seen_idat = False
    metadata_after_idat = False
    while True:
        header = f.read(8)
        if len(header) < 8:
            return False, metadata_after_idat
        length, ctype = struct.unpack(">I4s", header)
        if ctype == b"IEND":
            return True, metadata_after_idat
        if ctype == b"IDAT":
            seen_idat = True
        elif seen_idat and ctype in _PNG_METADATA_CHUNKS:
            metadata_after_idat = True
        f.seek(length + 4, os.SEEK_CUR)  # chunk data and CRC


def _exif_orientation(img: Image.Image, full_getexif: bool = True) -> Optional[int]:
    """The EXIF orientation as ``detection_utils._apply_exif_orientation`` sees it.

    ``full_getexif=False`` (PNG only) reads EXIF from what the header parse put in
    ``img.info``, without the decode that ``PngImageFile.getexif`` triggers.
    """
    try:
        if full_getexif:
            exif = img.getexif()
        else:
            exif = Image.Image.getexif(img)
    except Exception:  # detectron2 ignores broken EXIF too
        return None
    if exif is None:
        return None
    return exif.get(_EXIF_ORIENTATION)


def probe_image(path: str, min_size: int = 1, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> Tuple[int, int]:
    """Checks that ``path`` is a usable image, without decoding it where possible.

    Returns:
        ``(height, width)`` after EXIF orientation.

    Raises:
        UnreadableImageError: with the reason as message.
    """
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError("empty file (0 bytes)")
        with open(path, "rb") as f:
            try:
                img = Image.open(f)
            except UnidentifiedImageError:
                raise UnreadableImageError("not an image file PIL can identify") from None
            with img:
                fmt = img.format
                full_getexif = True
                if fmt in ("JPEG", "MPO"):
                    if not _jpeg_ends_with_eoi(f):
                        # No end-of-image marker: truncated, unless data follows
                        # a complete image. Only a decode can tell.
                        try:
                            img.load()
                        except Exception as e:
                            raise UnreadableImageError(
                                "truncated: no JPEG end-of-image marker (FFD9) at the end of "
                                f"the file, and decoding fails ({e})"
                            ) from None
                elif fmt == "PNG":
                    has_iend, metadata_after_idat = _walk_png_chunks(f)
                    if not has_iend:
                        raise UnreadableImageError("truncated: PNG has no IEND chunk")
                    full_getexif = metadata_after_idat
                else:
                    img.load()
                width, height = img.size
                if _exif_orientation(img, full_getexif) in _TRANSPOSING_ORIENTATIONS:
                    width, height = height, width
    except UnreadableImageError:
        raise
    except Exception as e:  # OSError, DecompressionBombError, broken plugins, ...
        raise UnreadableImageError(f"{type(e).__name__}: {e}") from None
    if width <= 0 or height <= 0:
        raise UnreadableImageError(f"zero-size image ({width}x{height} px)")
    if min(width, height) < min_size:
        raise UnreadableImageError(
            f"image is {width}x{height} px, smaller than min_size={min_size} px"
        )
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise UnreadableImageError(
            f"image is {width}x{height} px, more elongated than max_aspect_ratio={max_aspect_ratio:g} "
            "(resized for training its short side would vanish)"
        )
    return height, width


def scan_image_folder(
    folder: str,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    min_size: int = 1,
    num_workers: int = 8,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> ScanResult:
    """Finds the images under ``folder``, recursively, and checks each one.

    Args:
        folder: the folder to scan.
        extensions: file extensions (case-insensitive) treated as images; files
            with other extensions are listed in ``non_images``.
        min_size: images whose height or width is below this many pixels are
            reported unreadable.
        max_aspect_ratio: images whose long side exceeds this many times their short
            side are reported unreadable (too thin to resize).
        num_workers: threads used to check files (the checks are I/O bound);
            the result does not depend on it.

    Raises:
        FileNotFoundError: if ``folder`` does not exist.
        NotADirectoryError: if ``folder`` is not a directory.
    """
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if not os.path.exists(folder):
        raise FileNotFoundError(f"Image folder '{folder}' does not exist.")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"'{folder}' is not a folder.")
    extensions = normalize_extensions(extensions)

    result = ScanResult()
    candidates = []
    # Not list_image_files: the same walk also gives the non-image files to report.
    for path in walk_files(folder):
        if is_image_file(path, extensions):
            candidates.append(path)
        else:
            result.non_images.append(path)

    def check(path):
        try:
            return probe_image(path, min_size, max_aspect_ratio), None
        except UnreadableImageError as e:
            return None, str(e)

    if num_workers > 1 and len(candidates) > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            outcomes = list(pool.map(check, candidates))
    else:
        outcomes = [check(p) for p in candidates]

    for path, (size, reason) in zip(candidates, outcomes):
        if reason is not None:
            result.unreadable.append((path, reason))
            continue
        height, width = size
        result.records.append(
            {
                "file_name": path,
                "image_id": os.path.relpath(path, folder).replace(os.sep, "/"),
                "height": height,
                "width": width,
            }
        )
    return result


def load_unlabeled_folder(folder: str, min_size: int = 1, name: Optional[str] = None) -> List[Dict]:
    """Scans ``folder`` and returns the records of its readable images, logging a
    summary and one warning per unreadable file.

    Raises:
        FileNotFoundError: if ``folder`` does not exist.
        ValueError: if it holds no readable image.
    """
    result = scan_image_folder(folder, min_size=min_size)
    where = f"Dataset '{name}' ({folder})" if name else f"Image folder {folder}"
    logger.info(f"{where}: {result.summary()}")
    for path, reason in result.unreadable:
        logger.warning(f"Skipping unreadable image {path}: {reason}")
    if not result.records:
        raise ValueError(
            f"Image folder '{os.path.abspath(folder)}' contains no readable image "
            f"({result.summary()}; image extensions: {', '.join(IMAGE_EXTENSIONS)})."
        )
    return result.records


def register_unlabeled_folder(name: str, folder: str, min_size: int = 1) -> None:
    """Registers ``name`` as a dataset of the images under ``folder``.

    Nothing is read now: the folder is scanned when ``DatasetCatalog.get(name)``
    is called, which raises ``FileNotFoundError`` if the folder does not exist and
    ``ValueError`` if it holds no readable image. The metadata gets
    ``image_root`` (the folder, made absolute) and ``thing_classes=[]``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    DatasetCatalog.register(
        name, lambda: load_unlabeled_folder(folder, min_size=min_size, name=name)
    )
    MetadataCatalog.get(name).set(image_root=folder, thing_classes=[])
