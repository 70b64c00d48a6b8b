"""Keras 3 model builders with the layouts of the reference (PyTorch) models.

Architectures, by the name given to :func:`build_model`:

* ``caffelenet``: Caffe LeNet-5, 28x28x1 (MNIST).
* ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``: CIFAR
  ResNets with basic blocks, 32x32x3.
* ``resnet50``: CIFAR ResNet-50 (bottlenecks ``[3, 4, 6, 3]``, CIFAR stem),
  32x32x3.
* ``alexnet``: torchvision AlexNet, 224x224x3.
* ``mobilenetv1``: MobileNet v1, 224x224x3.
* ``resnet18``: torchvision ResNet-18, 224x224x3.
* ``keras.<Application>``: any ``keras.applications`` model by its class-like
  name, e.g. ``keras.MobileNetV2`` or ``keras.ResNet50`` (the ImageNet
  ResNet-50). Built with ``weights=None`` unless ``pretrained=True`` is passed,
  which downloads the ImageNet weights.

Every model is a built functional ``keras.Model``, channels_last, with named
layers, and outputs logits (no softmax).
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Optional, Sequence

import keras
from absl import logging

from sqjl_tf.models.alexnet import alexnet
from sqjl_tf.models.lenet import caffelenet
from sqjl_tf.models.mobilenet import mobilenetv1
from sqjl_tf.models.resnet_cifar import resnet20, resnet50_cifar, resnet_cifar
from sqjl_tf.models.resnet_imagenet import resnet18

__all__ = [
    "alexnet",
    "available_models",
    "build_model",
    "caffelenet",
    "mobilenetv1",
    "resnet18",
    "resnet20",
    "resnet50_cifar",
    "resnet_cifar",
]

KERAS_APPLICATION_PREFIX = "keras."


def _cifar_resnet_builder(depth: int) -> Callable[..., keras.Model]:
    def builder(num_classes, input_shape=None, dropout=0.0, **kw):
        kw.setdefault("name", f"resnet{depth}")
        return resnet_cifar(depth, num_classes, input_shape, dropout, **kw)

    return builder


_REGISTRY: Dict[str, Callable[..., keras.Model]] = {
    "caffelenet": caffelenet,
    "resnet20": resnet20,
    "resnet32": _cifar_resnet_builder(32),
    "resnet44": _cifar_resnet_builder(44),
    "resnet56": _cifar_resnet_builder(56),
    "resnet110": _cifar_resnet_builder(110),
    "resnet50": resnet50_cifar,
    "alexnet": alexnet,
    "mobilenetv1": mobilenetv1,
    "resnet18": resnet18,
}


def _keras_applications() -> Dict[str, Callable[..., keras.Model]]:
    """Maps the names of the ``keras.applications`` model functions to them."""
    apps = {}
    for attr in dir(keras.applications):
        fn = getattr(keras.applications, attr)
        if attr[:1].isupper() and callable(fn):
            apps[attr] = fn
    return apps


def available_models() -> List[str]:
    """Lists the architecture names accepted by :func:`build_model`.

    Returns:
        The built-in names, sorted, followed by ``"keras.<Application>"`` for
        every ``keras.applications`` model.

    Example:

    >>> "resnet20" in available_models()
    True
    """
    return sorted(_REGISTRY) + [
        KERAS_APPLICATION_PREFIX + name for name in sorted(_keras_applications())
    ]


def _build_keras_application(
    app_name: str,
    num_classes: int,
    input_shape: Optional[Sequence[int]],
    dropout: float,
    pretrained: bool = False,
    **kw,
) -> keras.Model:
    """Builds ``keras.applications.<app_name>`` with a logits top."""
    apps = _keras_applications()
    fn = apps.get(app_name)
    if fn is None:
        lower = {name.lower(): name for name in apps}
        if app_name.lower() in lower:
            fn = apps[lower[app_name.lower()]]
    if fn is None:
        raise ValueError(
            f"Invalid value for argument `arch`. Received: "
            f"'{KERAS_APPLICATION_PREFIX}{app_name}'. Expected one of: "
            f"{', '.join(KERAS_APPLICATION_PREFIX + n for n in sorted(apps))}."
        )
    params = inspect.signature(fn).parameters
    args = dict(
        include_top=True,
        weights="imagenet" if pretrained else None,
        classes=int(num_classes),
    )
    if input_shape is not None:
        args["input_shape"] = tuple(input_shape)
    if "classifier_activation" in params:
        args["classifier_activation"] = None
    else:
        logging.warning("keras.applications.%s cannot output logits; it ends with a softmax.",
                        fn.__name__)
    if dropout:
        if "dropout" in params:
            args["dropout"] = float(dropout)
        elif "dropout_rate" in params:
            args["dropout_rate"] = float(dropout)
        else:
            raise ValueError(
                f"Invalid value for argument `dropout`. Received: {dropout!r}. "
                f"Expected 0: keras.applications.{fn.__name__} has no dropout argument."
            )
    args.update(kw)
    logging.info("Building keras.applications.%s (weights=%s).", fn.__name__, args["weights"])
    return fn(**args)


def build_model(
    arch: str,
    num_classes: int,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.0,
    **kw,
) -> keras.Model:
    """Builds a model by architecture name.

    Args:
        arch: Architecture name, case-insensitive for the built-in ones; see
            :func:`available_models`. ``"keras.<Application>"`` builds a
            ``keras.applications`` model (e.g. ``"keras.MobileNetV2"``).
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)`` without the batch dimension;
            None takes the architecture's default (e.g. ``(28, 28, 1)`` for
            ``caffelenet``, ``(32, 32, 3)`` for the CIFAR ResNets,
            ``(224, 224, 3)`` for the ImageNet models).
        dropout: Dropout rate of the classifier (the reference's ``dp``). 0
            adds no Dropout layer. Note that ``alexnet`` called directly
            defaults to torchvision's 0.5, but here to 0.
        **kw: Further arguments of the builder, e.g. ``name``,
            ``width_multiplier`` for ``mobilenetv1``; for ``keras.*``
            models ``pretrained=True`` (download ImageNet weights) and any
            argument of the application function.

    Returns:
        A built ``keras.Model`` that outputs logits.

    Raises:
        ValueError: If ``arch`` is unknown or another argument is invalid.

    Example:

    >>> model = build_model("caffelenet", num_classes=10)
    >>> model.input_shape, model.output_shape
    ((None, 28, 28, 1), (None, 10))
    """
    if not isinstance(arch, str):
        raise ValueError(
            f"Invalid value for argument `arch`. Received: {arch!r}. "
            f"Expected a string, one of: {', '.join(sorted(_REGISTRY))}, "
            f"or '{KERAS_APPLICATION_PREFIX}<Application>'."
        )
    if arch.lower().startswith(KERAS_APPLICATION_PREFIX):
        return _build_keras_application(
            arch[len(KERAS_APPLICATION_PREFIX):], num_classes, input_shape, dropout, **kw
        )
    builder = _REGISTRY.get(arch.lower())
    if builder is None:
        raise ValueError(
            f"Invalid value for argument `arch`. Received: {arch!r}. "
            f"Expected one of: {', '.join(sorted(_REGISTRY))}, "
            f"or '{KERAS_APPLICATION_PREFIX}<Application>' for a keras.applications model."
        )
    logging.info("Building %s (num_classes=%d).", arch.lower(), num_classes)
    return builder(num_classes=num_classes, input_shape=input_shape, dropout=dropout, **kw)
