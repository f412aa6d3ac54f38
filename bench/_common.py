"""What every benchmark prints first: the machine and the software it ran on."""
from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEV_SET = SHARED / "datasets" / "imdb-posters-dev"
IMAGENET_FILE = SHARED / "weights" / "vgg16_imagenet_notop.weights.h5"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def print_machine() -> None:
    import keras
    import numpy
    import tensorflow as tf

    from core.features.extractor import cpu_has_bf16

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, bf16={'yes' if cpu_has_bf16() else 'no'}, "
          f"{platform.system()} {platform.machine()}")
    print(f"software: Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"NumPy {numpy.__version__}")


def default_weights() -> str:
    return str(IMAGENET_FILE) if IMAGENET_FILE.is_file() else "imagenet"
