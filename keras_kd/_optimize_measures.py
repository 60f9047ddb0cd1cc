"""What pruning buys, measured in both flavours: `sparsity`, `gzipped_size`.

Users import these from `keras_kd.optimize`.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from keras_kd._utils import check_model, unwrap_layer, walk_layers

_GZIP_CHUNK = 1 << 20


_KERNEL_NAMES = ("kernel", "depthwise_kernel")


def _kernels(model):
    """`(layer name, kernel variable)` of each Dense / Conv-like layer.

    Wrappers (tfmot's) and nested models are looked through: the kernel is
    counted once, under the name of the layer that owns it.
    """
    found, seen = [], set()
    for layer in walk_layers(model):
        if unwrap_layer(layer) is not layer or getattr(layer, "layers", None):
            continue  # a wrapper or a nested model: its layers come next
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in _KERNEL_NAMES and id(weight) not in seen:
                seen.add(id(weight))
                found.append((layer.name, weight))
    return found


def sparsity(model, per_layer: bool = False):
    """The share of exactly-zero weights in a model's kernels.

    Counts the kernels of Dense and convolution layers (what pruning acts
    on; biases are not pruned), through pruning and quantization wrappers.

    Args:
        model: a `keras.Model` (either flavour).
        per_layer: return `{layer name: sparsity}` instead of the overall
            share.

    Returns:
        A float in [0, 1], or a dict of them.
    """
    check_model(model, "model")
    kernels = _kernels(model)
    if not kernels:
        raise ValueError(
            f"Model {model.name!r} has no Dense or convolution kernels to "
            "measure the sparsity of."
        )
    counts = {}
    for name, kernel in kernels:
        values = np.asarray(kernel.numpy())
        zeros, size = counts.get(name, (0, 0))
        counts[name] = (zeros + int(np.sum(values == 0)), size + int(values.size))
    if per_layer:
        return {name: zeros / size for name, (zeros, size) in counts.items()}
    zeros = sum(z for z, _ in counts.values())
    size = sum(s for _, s in counts.values())
    return zeros / size


class _Counter:
    def __init__(self):
        self.size = 0

    def write(self, data):
        self.size += len(data)
        return len(data)

    def flush(self):
        pass


def gzipped_size(path) -> int:
    """The size in bytes of a file once gzipped (level 9).

    Pruned weights are zeros, which a `.tflite` stores as they are; the app
    download (APK, IPA, web bundle) compresses them. This is the size that
    compression gives.

    Args:
        path: a file, e.g. a `.tflite`.

    Returns:
        The number of bytes of the gzipped file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "Argument `path` must be a file path. Received: "
            f"path={path!r} of type {type(path).__name__}."
        )
    if not os.path.isfile(path):
        raise ValueError(
            f"Argument `path` must be an existing file. Received: path={path!r}."
        )
    counter = _Counter()
    with (
        open(path, "rb") as source,
        gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=9, mtime=0) as target,
    ):
        while True:
            chunk = source.read(_GZIP_CHUNK)
            if not chunk:
                break
            target.write(chunk)
    return counter.size
