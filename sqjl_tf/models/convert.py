"""Load torchvision AlexNet weights into the Keras ``alexnet`` of this package.

torchvision's ``alexnet`` state dict names its layers ``features.{0,3,6,8,10}``
(convolutions) and ``classifier.{1,4,6}`` (dense). Convolution kernels go from
PyTorch's [out, in, kh, kw] to Keras's [kh, kw, in, out]; dense kernels from
[out, in] to [in, out]; and the first dense layer's inputs are re-ordered,
because PyTorch flattens the 256x6x6 feature map channels-first and Keras
flattens it channels-last.
"""

from __future__ import annotations

import os
import zipfile
from typing import Dict, Mapping, Union

import numpy as np

from sqjl_tf._npz import check_sizes

_CONVS = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
          "conv4": "features.8", "conv5": "features.10"}
_DENSE = {"fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}
# Float weights saved with np.savez_compressed unpack to ~1.1x the file; pruned ones to more.
_MAX_NPZ_RATIO = 16


def _load_state_dict(source) -> Dict[str, np.ndarray]:
    if isinstance(source, Mapping):
        return {k: np.asarray(getattr(v, "numpy", lambda: v)()) for k, v in source.items()}
    path = os.fspath(source)
    if path.endswith(".npz"):
        try:
            check_sizes(path, max_ratio=_MAX_NPZ_RATIO)
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, ValueError, EOFError) as err:
            raise ValueError(
                f"Invalid value for argument `source`. Received: '{path}' ({err}). Expected an "
                ".npz of the state dict's arrays (numpy.savez or numpy.savez_compressed)."
            ) from err
    try:
        import torch  # only here: the library never needs PyTorch otherwise
    except ImportError as err:
        raise ImportError(
            f"Reading the PyTorch file '{path}' needs torch (pip install torch), or save the "
            "state dict as .npz (numpy.savez(path, **{k: v.numpy() for k, v in sd.items()}))."
        ) from err
    # Tensors only: a pickle of arbitrary objects would run code while it loads.
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {k.replace("module.", ""): v.detach().cpu().numpy() for k, v in state.items()}


def load_torchvision_alexnet(model, source: Union[str, os.PathLike, Mapping]) -> None:
    """Sets the weights of a Keras ``alexnet`` from a torchvision AlexNet state dict.

    Args:
        model: the Keras model from ``build_model("alexnet", num_classes)``.
        source: a ``.pth``/``.pt`` file (needs torch), an ``.npz`` of the state
            dict's arrays, or a mapping name -> array.

    Raises:
        ValueError: if a tensor is missing or has the wrong shape, or an
            ``.npz`` declares arrays larger than the file can hold.

    Example:
        >>> model = build_model("alexnet", 1000)
        >>> load_torchvision_alexnet(model, "alexnet-owt-7be5be79.pth")
    """
    state = _load_state_dict(source)

    def get(name, shape):
        if name not in state:
            raise ValueError(f"Invalid value for argument `source`: no tensor '{name}' in the state dict.")
        value = np.asarray(state[name], np.float32)
        if value.shape != shape:
            raise ValueError(
                f"Invalid value for argument `source`: '{name}' has shape {value.shape}, "
                f"expected {shape}."
            )
        return value

    for keras_name, torch_name in _CONVS.items():
        layer = model.get_layer(keras_name)
        kh, kw, cin, cout = layer.kernel.shape
        kernel = get(f"{torch_name}.weight", (cout, cin, kh, kw)).transpose(2, 3, 1, 0)
        layer.set_weights([kernel, get(f"{torch_name}.bias", (cout,))])
    for keras_name, torch_name in _DENSE.items():
        layer = model.get_layer(keras_name)
        fan_in, fan_out = layer.kernel.shape
        weight = get(f"{torch_name}.weight", (fan_out, fan_in))
        if keras_name == "fc6":  # channels-first flatten (256, 6, 6) -> channels-last (6, 6, 256)
            channels = 256
            side = int(round((fan_in // channels) ** 0.5))
            weight = weight.reshape(fan_out, channels, side, side).transpose(0, 2, 3, 1)
            weight = weight.reshape(fan_out, fan_in)
        layer.set_weights([weight.T, get(f"{torch_name}.bias", (fan_out,))])
