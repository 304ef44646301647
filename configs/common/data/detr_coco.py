"""COCO-style data with DETR's augmentation (DetrDatasetMapper), RGB input."""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator

from updetr_d2.data.mappers import DetrDatasetMapper, detr_train_augmentations

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=False),
        mapper=L(DetrDatasetMapper)(
            is_train=True,
            augmentations=L(detr_train_augmentations)(
                min_sizes=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
                max_size=1333,
                crop_pre_resize=(400, 500, 600),
                crop_size=(384, 600),
            ),
            image_format="RGB",
        ),
        total_batch_size=64,
        num_workers=4,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
        mapper=L(DetrDatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
            image_format="RGB",
        ),
        num_workers=4,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="${..test.dataset.names}"),
)
