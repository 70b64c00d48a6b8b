"""Which weights of a Keras model are compressed.

A *compressible kernel* is the weight matrix of a Dense, convolution (1/2/3-D,
transposed, depthwise, separable), EinsumDense (attention included) or
Embedding layer, or the input and recurrent kernels of an LSTM, GRU,
SimpleRNN or ConvLSTM cell. Biases, normalization parameters and other small
tensors stay float32 and are not counted in the size budget (docs/ALGORITHM.md
section 1); :func:`left_out_weights` lists them. A ``predicate`` can add any
weight of two or more dimensions, or remove a built-in kernel.

Each kernel also knows its *output units* (:attr:`CompressibleKernel.unit_axes`):
a layer the sparse projection would starve keeps at least one weight per unit,
so no layer is ever pruned to zero.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Tuple

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
    "Embedding": ("embeddings",),
    "LSTMCell": ("kernel", "recurrent_kernel"),
    "GRUCell": ("kernel", "recurrent_kernel"),
    "SimpleRNNCell": ("kernel", "recurrent_kernel"),
    "ConvLSTMCell": ("kernel", "recurrent_kernel"),
}

# Axes of a kernel that index the layer's output units, where not the last one.
_TRANSPOSED = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")  # (..., out, in)
_DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")

# f(layer, variable) -> True (compress it), False (leave it float32) or None (the default).
LayerPredicate = Callable[[keras.layers.Layer, keras.Variable], Optional[bool]]


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
    def unit_axes(self) -> Tuple[int, ...]:
        """The axes (non-negative) of the kernel that index its layer's output units.

        The last axis for Dense, convolutions, Embedding (its feature axis) and
        RNN cells; the output-channel axis for transposed convolutions; the
        channel and multiplier axes of a depthwise kernel; for EinsumDense, the
        kernel axes whose subscripts appear in the output.
        """
        rank = len(self.variable.shape)
        if rank <= 1:
            return tuple(range(rank))
        attr = self.name.split("/")[-1].split(":")[0]
        names = [cls.__name__ for cls in type(self.layer).__mro__]
        if any(n in _TRANSPOSED for n in names) and attr == "kernel":
            return (rank - 2,)
        if any(n in _DEPTHWISE for n in names) and attr in ("depthwise_kernel", "kernel"):
            return (rank - 2, rank - 1)
        equation = getattr(self.layer, "equation", None)
        if "EinsumDense" in names and isinstance(equation, str) and "->" in equation:
            inputs, output = equation.split("->")
            kernel_subscripts = inputs.split(",")[-1].strip()
            axes = tuple(i for i, c in enumerate(kernel_subscripts) if c in output)
            if axes and len(kernel_subscripts) == rank:
                return axes
        return (rank - 1,)

    @property
    def num_units(self) -> int:
        """How many output units the kernel feeds (the product of ``unit_axes``)."""
        n = 1
        for a in self.unit_axes:
            n *= int(self.variable.shape[a])
        return n

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


def _candidates(layer: keras.layers.Layer):
    """The layer's own weights of two or more dimensions (what a predicate may add)."""
    own = getattr(layer, "_trainable_variables", None)
    if own is None:
        return []
    return [v for v in list(own) + list(getattr(layer, "_non_trainable_variables", []))
            if len(v.shape) >= 2]


def compressible_kernels(
    model: keras.layers.Layer, predicate: Optional[LayerPredicate] = None
) -> List[CompressibleKernel]:
    """Lists the kernels of ``model`` that the size budget covers, in model order.

    Args:
        model: a Keras model or layer whose weights exist (built, or traced by
            ``fit``); nested models are walked, a shared layer counts once.
        predicate: optional ``f(layer, variable)`` asked about every weight of
            two or more dimensions: True compresses it (so a custom layer's
            matrix can be added), False leaves it in float32, None keeps the
            default (the built-in kernels of the module docstring).

    Returns:
        A list of :class:`CompressibleKernel`, one per kernel variable.

    Raises:
        ValueError: if the model has no weights yet.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> [k.name for k in compressible_kernels(model)]
        ['dense/kernel']
    """
    if not model.built and not model.weights:
        raise ValueError(
            "Invalid value for argument `model`. Received: an unbuilt model "
            f"{model.name!r}. Expected a model whose weights exist: call it on data, give it "
            "an Input, or let fit() build it before the callback starts."
        )
    found = []
    seen = set()
    for layer in _iter_layers(model):
        defaults = _default_kernels(layer)
        default_ids = {id(v) for v in defaults}
        candidates = defaults + [v for v in _candidates(layer) if id(v) not in default_ids]
        for var in candidates:
            if id(var) in seen:
                continue
            seen.add(id(var))
            chosen = predicate(layer, var) if predicate is not None else None
            if chosen is None:
                chosen = id(var) in default_ids
            if chosen:
                found.append(CompressibleKernel(name=var.path, layer=layer, variable=var))
    return found


def left_out_weights(model: keras.layers.Layer, predicate: Optional[LayerPredicate] = None):
    """The weights of ``model`` outside the size budget: ``[(path, size), ...]``.

    Biases, normalization parameters and statistics, and any weight neither a
    built-in kernel nor added by ``predicate``; they are stored in float32.
    """
    chosen = {id(k.variable) for k in compressible_kernels(model, predicate)}
    out, seen = [], set()
    for w in model.weights:
        if id(w) in chosen or id(w) in seen:
            continue
        seen.add(id(w))
        size = 1
        for d in w.shape:
            size *= int(d)
        out.append((getattr(w, "path", w.name), size))
    return out
