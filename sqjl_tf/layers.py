"""Which weights of a Keras model are compressed.

A *compressible kernel* is the weight matrix of a Dense, convolution (1/2/3-D,
transposed, depthwise, separable) or EinsumDense layer. Biases, BatchNorm
parameters and other small tensors stay float32 and are not counted in the
size budget (ALGORITHM.md section 1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional

import keras

# Attribute names of the kernels of the built-in compressible layers.
_KERNEL_ATTRIBUTES = {
    "Dense": ("kernel",),
    "EinsumDense": ("kernel",),
    "Conv1D": ("kernel",),
    "Conv2D": ("kernel",),
    "Conv3D": ("kernel",),
    "Conv1DTranspose": ("kernel",),
    "Conv2DTranspose": ("kernel",),
    "Conv3DTranspose": ("kernel",),
    "DepthwiseConv1D": ("kernel", "depthwise_kernel"),
    "DepthwiseConv2D": ("kernel", "depthwise_kernel"),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}

LayerPredicate = Callable[[keras.layers.Layer, keras.Variable], bool]


@dataclasses.dataclass(frozen=True)
class CompressibleKernel:
    """One compressible weight tensor of a model.

    Attributes:
        name: unique path of the variable in the model (e.g. ``"conv2d/kernel"``).
        layer: the layer that owns it.
        variable: the kernel ``keras.Variable``.
    """

    name: str
    layer: keras.layers.Layer
    variable: keras.Variable

    @property
    def size(self) -> int:
        """Number of weights in the kernel."""
        n = 1
        for d in self.variable.shape:
            n *= int(d)
        return n


def _iter_layers(layer: keras.layers.Layer, seen=None):
    """Depth-first, pre-order walk over a layer and its sublayers."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    children = getattr(layer, "layers", None)
    if children is None:
        children = getattr(layer, "_layers", None) or []
    for child in children:
        yield from _iter_layers(child, seen)


def _default_kernels(layer: keras.layers.Layer):
    for cls in type(layer).__mro__:
        attrs = _KERNEL_ATTRIBUTES.get(cls.__name__)
        if attrs is not None:
            return [getattr(layer, a) for a in attrs if getattr(layer, a, None) is not None]
    return []


def compressible_kernels(
    model: keras.layers.Layer, predicate: Optional[LayerPredicate] = None
) -> List[CompressibleKernel]:
    """Lists the kernels of ``model`` that the size budget covers, in model order.

    Args:
        model: a built Keras model or layer (nested models are walked).
        predicate: optional ``f(layer, variable) -> bool``; when given, only the
            default-compressible kernels for which it returns True are kept.

    Returns:
        A list of :class:`CompressibleKernel`, one per kernel variable.

    Raises:
        ValueError: if the model is not built (its weights do not exist yet).

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> [k.name for k in compressible_kernels(model)]
        ['dense/kernel']
    """
    if not model.built:
        raise ValueError(
            "Invalid value for argument `model`. Received: an unbuilt model "
            f"{model.name!r}. Expected a built model: call it on data or give it an Input."
        )
    found = []
    seen = set()
    for layer in _iter_layers(model):
        for var in _default_kernels(layer):
            if id(var) in seen:
                continue
            seen.add(id(var))
            if predicate is not None and not predicate(layer, var):
                continue
            found.append(CompressibleKernel(name=var.path, layer=layer, variable=var))
    return found
