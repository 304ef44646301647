"""Finding and reading image files: the one list of image extensions, the listing of
files and folders (recursive, sorted) that the unlabeled-folder datasets and the picture
tools share, and reading an image without letting one bad file stop a run."""
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .images import read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNREADABLE_IMAGE_ERRORS",
    "describe_skipped",
    "is_image_file",
    "list_image_files",
    "list_input_images",
    "normalize_extensions",
    "try_read_image",
    "walk_files",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# What PIL raises, through detectron2's read_image, on a file that is not an image, is cut
# short or has a broken header (SyntaxError: some plugins' header parsers).
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError)

PathLike = Union[str, os.PathLike]


def normalize_extensions(extensions: Sequence[str]) -> Tuple[str, ...]:
    """Lower case, with the leading dot: ``["JPG", ".Png"]`` -> ``(".jpg", ".png")``."""
    out = []
    for ext in extensions:
        ext = ext.lower()
        out.append(ext if ext.startswith(".") else "." + ext)
    return tuple(out)


def is_image_file(path: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether ``path`` has one of ``extensions`` (lower case, with the dot: see
    :func:`normalize_extensions`), in any case. Only the name is looked at."""
    return os.path.splitext(os.fspath(path))[1].lower() in extensions


def walk_files(folder: PathLike, recursive: bool = True) -> List[str]:
    """The non-hidden files under ``folder`` (paths joined to ``folder`` as given), sorted
    by their path relative to it, compared folder name by folder name, so the order is the
    same on every machine and a file sorts among the subfolders by name.

    Hidden folders and files (name starting with ".") are left out: they hold tool
    metadata (``.git``, macOS ``._x.jpg`` resource forks that look like images but are
    not). Symlinked folders are not followed, so a link loop cannot make the walk endless.
    """
    folder = os.fspath(folder)
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        paths += [os.path.join(dirpath, fn) for fn in filenames if not fn.startswith(".")]
    paths.sort(key=lambda p: os.path.relpath(p, folder).split(os.sep))
    return paths


def list_image_files(
    paths: Union[PathLike, Sequence[PathLike]],
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> List[str]:
    """The image files named by ``paths``: a file, a folder, or a list of files and folders.

    A folder gives its images (files with one of ``extensions``, any case), in its
    subfolders too unless ``recursive=False``, in :func:`walk_files` order. A file named
    directly is kept whatever its extension: it was asked for. The inputs keep their order;
    a file reached twice (named twice, or named and inside a folder named) is listed once.
    Nothing is opened: a listed file may still be unreadable.

    Returns an empty list when the folders hold no image.

    Raises:
        FileNotFoundError: naming the first path that is neither a file nor a folder.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    extensions = normalize_extensions(extensions)
    files, seen = [], set()
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = [p for p in walk_files(path, recursive) if is_image_file(p, extensions)]
        elif os.path.isfile(path):
            found = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
        for p in found:
            key = os.path.normcase(os.path.abspath(p))
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files


def list_input_images(paths: Sequence[PathLike], option: str = "--input") -> List[str]:
    """:func:`list_image_files` for a tool's ``option``: a missing path, or no image at
    all, is a ``SystemExit`` naming the option and the paths."""
    try:
        files = list_image_files(paths)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {option} {e}")
    if not files:
        shown = " ".join(os.fspath(p) for p in paths)
        raise SystemExit(f"error: {option} {shown}: no images found ({'/'.join(IMAGE_EXTENSIONS)})")
    return files


def try_read_image(file_name: str, format: Optional[str] = None) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """``(image, None)`` as the project's mappers read it (:func:`.images.read_image`: 16-bit
    and other modes converted as in training), or
    ``(None, reason)`` when the file cannot be read as an image (corrupt, cut short, not
    an image), so that a tool going through many files can skip it and go on."""
    try:
        return read_image(file_name, format=format), None
    except UNREADABLE_IMAGE_ERRORS as e:
        return None, f"{type(e).__name__}: {e}"


def describe_skipped(skipped: Sequence[str], shown: int = 3) -> str:
    """``": a.png, b.jpg, c.png and 2 more"``: the first ``shown`` files skipped, for the
    summary line at the end of a run (the warnings about each may have scrolled away);
    ``""`` when none was skipped."""
    if not skipped:
        return ""
    names = ", ".join(skipped[:shown])
    more = len(skipped) - shown
    return f": {names}" + (f" and {more} more" if more > 0 else "")
