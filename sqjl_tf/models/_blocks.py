"""Private building blocks shared by the model builders.

The helpers reproduce PyTorch layer semantics in Keras 3 (channels_last):
explicit zero padding followed by a ``"valid"`` convolution, so that strided
convolutions pad symmetrically as ``torch.nn.Conv2d(padding=p)`` does, and
BatchNorm with PyTorch's defaults (``momentum=0.1`` in PyTorch terms, i.e.
``momentum=0.9`` in Keras terms, ``epsilon=1e-5``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras

# PyTorch BatchNorm2d defaults, expressed in Keras terms.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _input_shape(input_shape: Optional[Sequence[int]], default: Tuple[int, ...]) -> Tuple[int, ...]:
    """Returns ``input_shape`` as a tuple of ints, or ``default`` when None."""
    if input_shape is None:
        return tuple(default)
    shape = tuple(int(d) if d is not None else None for d in input_shape)
    if len(shape) != len(default):
        raise ValueError(
            f"Invalid value for argument `input_shape`. Received: {input_shape!r}. "
            f"Expected a shape of rank {len(default)} (channels_last, without the batch "
            f"dimension), e.g. {tuple(default)!r}."
        )
    return shape


def _check_dropout(dropout: float) -> float:
    """Validates a dropout rate and returns it as a float."""
    rate = float(dropout)
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"Invalid value for argument `dropout`. Received: {dropout!r}. "
            "Expected a float in [0, 1)."
        )
    return rate


def _check_num_classes(num_classes: int) -> int:
    """Validates the number of classes and returns it as an int."""
    if int(num_classes) != num_classes or int(num_classes) < 1:
        raise ValueError(
            f"Invalid value for argument `num_classes`. Received: {num_classes!r}. "
            "Expected a positive integer."
        )
    return int(num_classes)


def _prologue(num_classes, dropout, input_shape, default_shape):
    """Checks a builder's common arguments and makes its input.

    Returns:
        (num_classes, dropout, inputs): the checked values and a
        ``keras.Input`` named "input" of ``input_shape`` (or the default).
    """
    num_classes = _check_num_classes(num_classes)
    dropout = _check_dropout(dropout)
    shape = _input_shape(input_shape, default_shape)
    return num_classes, dropout, keras.Input(shape=shape, name="input")


def _conv(
    x,
    filters: int,
    kernel_size: int,
    *,
    strides: int = 1,
    padding: int = 0,
    use_bias: bool = False,
    name: str,
    kernel_initializer="he_normal",
):
    """``torch.nn.Conv2d(..., padding=padding)``: ZeroPadding2D + valid Conv2D."""
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


def _bn(x, *, name: str):
    """BatchNorm over the channel axis with PyTorch's default hyper-parameters."""
    return keras.layers.BatchNormalization(
        axis=-1, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
    )(x)


def _max_pool(x, pool_size: int, strides: int, *, padding: int = 0, name: str):
    """``torch.nn.MaxPool2d(pool_size, strides, padding)`` for non-negative inputs.

    Zero padding equals PyTorch's ``-inf`` padding here because every use in the
    builders follows a ReLU.
    """
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(pool_size, strides=strides, padding="valid", name=name)(x)


def _basic_block(x, filters: int, strides: int, name: str):
    """Two 3x3 conv-BN layers with a residual connection."""
    in_filters = x.shape[-1]
    shortcut = x
    y = _conv(x, filters, 3, strides=strides, padding=1, name=f"{name}_conv1")
    y = _bn(y, name=f"{name}_bn1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, filters, 3, strides=1, padding=1, name=f"{name}_conv2")
    y = _bn(y, name=f"{name}_bn2")
    if strides != 1 or in_filters != filters:
        shortcut = _conv(x, filters, 1, strides=strides, name=f"{name}_shortcut_conv")
        shortcut = _bn(shortcut, name=f"{name}_shortcut_bn")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, planes: int, strides: int, name: str, expansion: int = 4):
    """1x1 -> 3x3 (strided) -> 1x1 conv-BN layers with a residual connection."""
    in_filters = x.shape[-1]
    out_filters = planes * expansion
    shortcut = x
    y = _conv(x, planes, 1, name=f"{name}_conv1")
    y = _bn(y, name=f"{name}_bn1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, planes, 3, strides=strides, padding=1, name=f"{name}_conv2")
    y = _bn(y, name=f"{name}_bn2")
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(y, out_filters, 1, name=f"{name}_conv3")
    y = _bn(y, name=f"{name}_bn3")
    if strides != 1 or in_filters != out_filters:
        shortcut = _conv(x, out_filters, 1, strides=strides, name=f"{name}_shortcut_conv")
        shortcut = _bn(shortcut, name=f"{name}_shortcut_bn")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _classifier(x, num_classes: int, dropout: float):
    """Global average pooling, optional dropout and the logits layer."""
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, name="fc")(x)
