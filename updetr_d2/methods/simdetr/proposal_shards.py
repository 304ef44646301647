"""Stage A over a whole dataset: proposals and region embeddings written in chunk files
that a killed run resumes from and several processes fill in parallel.

The dataset's records are cut into chunks of ``chunk_size`` images in their catalog
order; chunk ``c`` belongs to shard ``c % num_shards``. A process renders its chunks
through Detectron2's test-time data loading (workers read and resize the images) and
writes each finished chunk as ``chunks/chunk_<c>.npz`` (written whole, then renamed), so
a rerun skips what is done and the result does not depend on how many processes or
restarts made it. ``manifest.json`` pins what the chunks were made with; a rerun with
other settings stops instead of mixing two kinds of proposals.
"""
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T

from .clustering import pseudo_label_coco
from ...utils.files import atomic_write, write_json_atomic
from .extractor import FeatureExtractor
from .proposals import ProposalParams, region_proposals, scale_boxes

logger = logging.getLogger(__name__)

__all__ = ["ProposalSet", "extract_proposals", "load_proposals", "write_class_agnostic_json"]

MANIFEST = "manifest.json"
IMAGES = "images.json"


def _chunk_path(output_dir: str, chunk: int) -> str:
    return os.path.join(output_dir, "chunks", f"chunk_{chunk:06d}.npz")


def _save_npz_atomic(path: str, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def _check_manifest(output_dir: str, manifest: Dict) -> None:
    path = os.path.join(output_dir, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        changed = sorted(k for k in manifest if old.get(k) != manifest[k])
        if changed:
            raise ValueError(
                f"{output_dir} holds proposals made with other settings ({', '.join(changed)} differ); "
                "use another output folder, or delete it to start over"
            )
    else:
        write_json_atomic(manifest, path)


def extract_proposals(
    extractor: FeatureExtractor,
    records: Sequence[Dict],
    output_dir: str,
    params: ProposalParams = ProposalParams(),
    *,
    min_size: int = 800,
    max_size: int = 1333,
    image_format: str = "RGB",
    chunk_size: int = 64,
    num_workers: int = 2,
    shard_index: int = 0,
    num_shards: int = 1,
    source: str = "",
    extractor_id: str = "",
    max_chunks: Optional[int] = None,
) -> Tuple[int, int]:
    """Write the chunks of shard ``shard_index`` that are not on disk yet; returns
    (chunks written now, chunks of this shard already done). Images are resized to a
    short side ``min_size`` (long side at most ``max_size``) before extraction; boxes are
    stored in the original image's pixels. ``extractor_id`` names what made the features
    (backbone, weights, normalisation) so a rerun with another extractor of the same shape
    is refused instead of mixed in. ``max_chunks`` stops early (tests; a job
    scheduler's time slices)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is outside 0..{num_shards - 1}")
    manifest = {
        "source": source, "extractor": extractor_id, "num_images": len(records), "chunk_size": chunk_size,
        "params": json.loads(json.dumps(dataclasses.asdict(params))), "feature": extractor.feature,
        "stride": extractor.stride, "channels": extractor.channels, "min_size": min_size, "max_size": max_size,
        "images_sha1": hashlib.sha1("\n".join(r["file_name"] for r in records).encode()).hexdigest(),
    }
    _check_manifest(output_dir, manifest)
    if not os.path.exists(os.path.join(output_dir, IMAGES)):
        write_json_atomic(coco_images(records), os.path.join(output_dir, IMAGES))
    num_chunks = (len(records) + chunk_size - 1) // chunk_size
    mine = [c for c in range(num_chunks) if c % num_shards == shard_index]
    missing = [c for c in mine if not os.path.exists(_chunk_path(output_dir, c))]
    done_before = len(mine) - len(missing)
    todo = missing if max_chunks is None else missing[:max_chunks]
    if not todo:
        return 0, done_before
    indices = [i for c in todo for i in range(c * chunk_size, min((c + 1) * chunk_size, len(records)))]
    mapper = DatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(min_size, max_size)],
                           image_format=image_format)
    subset = [dict(records[i], _index=i) for i in indices]
    # The sampler is sequential on purpose: shards are split here, not by Detectron2's
    # inference sampler, so that chunks complete in order.
    loader = build_detection_test_loader(
        subset, mapper=mapper, sampler=torch.utils.data.SequentialSampler(subset), num_workers=num_workers
    )
    pending: Dict[int, List] = {c: [] for c in todo}
    start, seen = time.perf_counter(), 0
    for (item,) in loader:
        index = item["_index"]
        chunk = index // chunk_size
        image = item["image"]
        resized_h, resized_w = image.shape[-2:]
        found = region_proposals(extractor(image), extractor.stride, (resized_h, resized_w), params)
        boxes = scale_boxes(found.boxes, resized_w / item["width"], resized_h / item["height"],
                            (item["height"], item["width"]))
        pending[chunk].append((index, boxes, found.levels, found.embeddings))
        seen += 1
        expected = min((chunk + 1) * chunk_size, len(records)) - chunk * chunk_size
        if len(pending[chunk]) == expected:
            _write_chunk(output_dir, chunk, pending.pop(chunk), extractor.channels)
            rate = seen / (time.perf_counter() - start)
            logger.info("Stage A: chunk %d done (%d/%d images of this run, %.1f images/s)",
                        chunk, seen, len(indices), rate)
    return len(todo), done_before


def _write_chunk(output_dir: str, chunk: int, items: List, channels: int) -> None:
    items.sort(key=lambda t: t[0])
    _save_npz_atomic(
        _chunk_path(output_dir, chunk),
        record_index=np.array([t[0] for t in items], dtype=np.int64),
        counts=np.array([len(t[1]) for t in items], dtype=np.int64),
        boxes=np.concatenate([t[1] for t in items]).astype(np.float32).reshape(-1, 4),
        levels=np.concatenate([t[2] for t in items]).astype(np.int16),
        # float16 halves the disk a million images need; clustering is insensitive to it.
        embeddings=np.concatenate([t[3] for t in items]).astype(np.float16).reshape(-1, channels),
    )


@dataclasses.dataclass
class ProposalSet:
    """Every image's proposals, in the dataset's order: ``boxes[i]`` [n_i, 4] xyxy in the
    original image's pixels, ``levels[i]`` [n_i], and all embeddings stacked [sum n_i, C]
    (image i's rows start at ``offsets[i]``)."""

    records: List[Dict]
    boxes: List[np.ndarray]
    levels: List[np.ndarray]
    embeddings: np.ndarray
    offsets: np.ndarray


def load_proposals(output_dir: str) -> ProposalSet:
    """Read every chunk; stops with the list of missing chunks if stage A is unfinished."""
    try:
        with open(os.path.join(output_dir, MANIFEST)) as f:
            manifest = json.load(f)
        with open(os.path.join(output_dir, IMAGES)) as f:
            records = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{output_dir} holds no stage A proposals (no {MANIFEST} / {IMAGES})") from None
    chunk_size = manifest["chunk_size"]
    num_chunks = (len(records) + chunk_size - 1) // chunk_size
    missing = [c for c in range(num_chunks) if not os.path.exists(_chunk_path(output_dir, c))]
    if missing:
        raise FileNotFoundError(
            f"stage A is unfinished in {output_dir}: {len(missing)} of {num_chunks} chunks missing "
            f"(first: {missing[:5]}); run the proposals step again, it resumes"
        )
    boxes, levels, embeddings = [], [], []
    for c in range(num_chunks):
        with np.load(_chunk_path(output_dir, c)) as data:
            splits = np.cumsum(data["counts"])[:-1]
            boxes += np.split(data["boxes"], splits)
            levels += np.split(data["levels"], splits)
            embeddings.append(data["embeddings"])
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in boxes])])
    return ProposalSet(list(records), boxes, levels, np.concatenate(embeddings), offsets)


def coco_images(records: Sequence[Dict]) -> List[Dict]:
    """COCO ``images`` entries (ids 1..N in the dataset's order) of Detectron2 records;
    file names absolute, so the file registers with any image root."""
    return [{"id": i + 1, "file_name": os.path.abspath(r["file_name"]), "height": r["height"], "width": r["width"]}
            for i, r in enumerate(records)]


def write_class_agnostic_json(proposals: ProposalSet, path: str) -> Dict:
    """The proposals as one COCO file with a single "object" class (for inspection, or
    for class-agnostic pretraining as DETReg)."""
    labels = [np.zeros(len(b), dtype=np.int64) for b in proposals.boxes]
    coco = pseudo_label_coco(coco_images(proposals.records), proposals.boxes, labels, 1,
                             info={"description": "SimDETR stage A proposals"})
    coco["categories"] = [{"id": 1, "name": "object"}]
    write_json_atomic(coco, path)
    return coco
