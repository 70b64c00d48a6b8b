"""ResNet-20 on 28x28x1: its kernels, the size budget, and the TFMOT variants' allocations.

Shared by ``benchmark.py`` (Keras 3) and ``tfmot_resnet20.py`` (legacy ``tf_keras``);
pure Python, no TensorFlow, so that flags are checked before any import of it.

The kernels are those ``sqjl_tf.compressible_kernels`` finds in
``sqjl_tf.build_model("resnet20", 10, (28, 28, 1))``, in its order: the stem conv,
18 block convs, 2 projection shortcuts (1x1) and the classifier (270,608 weights).
"""

import math

# name -> number of kernel weights, in the model's (and compressible_kernels') order.
KERNEL_SIZES = {"conv1": 3 * 3 * 1 * 16}
for _stage, (_cin, _cout) in enumerate(((16, 16), (16, 32), (32, 64)), start=1):
    for _block in range(3):
        _first_in = _cin if _block == 0 else _cout
        KERNEL_SIZES[f"layer{_stage}_block{_block}_conv1"] = 3 * 3 * _first_in * _cout
        KERNEL_SIZES[f"layer{_stage}_block{_block}_conv2"] = 3 * 3 * _cout * _cout
        if _block == 0 and _cin != _cout:
            KERNEL_SIZES[f"layer{_stage}_block{_block}_shortcut_conv"] = _cin * _cout
KERNEL_SIZES["fc"] = 64 * 10
LAYERS = tuple(KERNEL_SIZES)
TOTAL_KERNEL = sum(KERNEL_SIZES.values())  # 270,608

VARIANTS = ("uniform", "practitioner")
FIRST, LAST = "conv1", "fc"  # kept dense at 8 bits by the practitioner
PRACTITIONER_BITS = 8
CLUSTER_LR = 1e-5  # Adam's learning rate in TFMOT's clustering stage (its tutorial's)


def budget_bits(nnz_budget, bit_budget):
    """The size budget S in bits: ``bit_budget * sum ceil(nnz_budget * n_l)`` (sqjl_tf's)."""
    return bit_budget * sum(math.ceil(nnz_budget * n) for n in KERNEL_SIZES.values())


def allocation(variant, nnz_budget, bit_budget):
    """Per-layer (density, bits) of a TFMOT variant within the budget.

    ``uniform``: TFMOT's default, one density and one width for every kernel.
    ``practitioner``: the first conv and the classifier dense at 8 bits; the other
    kernels share what is left of ``S`` at one density and ``bit_budget`` bits.
    Pruning to a density keeps ``round(n * density)`` weights per layer, so the
    shared density leaves one weight per layer of slack: the total
    ``sum(bits * nnz)`` never exceeds ``S``.

    Args:
        variant: one of :data:`VARIANTS`.
        nnz_budget: kept fraction of the kernel weights, in (0, 1].
        bit_budget: bits per kept weight (an integer in [1, 8]).

    Returns:
        ``{layer: (density, bits)}`` for every layer of :data:`LAYERS`.

    Raises:
        ValueError: if ``variant`` is unknown, or the budget cannot hold the
            practitioner's dense layers and one weight per other layer.
    """
    if variant == "uniform":
        return {name: (nnz_budget, bit_budget) for name in LAYERS}
    if variant != "practitioner":
        raise ValueError(f"Invalid value for argument `variant`. Received: {variant!r}. "
                         f"Expected one of {VARIANTS}.")
    dense = (FIRST, LAST)
    rest = [name for name in LAYERS if name not in dense]
    left = budget_bits(nnz_budget, bit_budget) - PRACTITIONER_BITS * sum(
        KERNEL_SIZES[name] for name in dense)
    density = (left / bit_budget - len(rest)) / sum(KERNEL_SIZES[name] for name in rest)
    if density <= 0:
        raise ValueError(f"Invalid value for argument `nnz_budget`. Received: {nnz_budget} "
                         f"with bit_budget={bit_budget}. Expected a budget that holds {FIRST} "
                         f"and {LAST} dense at {PRACTITIONER_BITS} bits and some weights of "
                         "every other layer (the practitioner variant).")
    out = {name: (min(1.0, density), bit_budget) for name in rest}
    out.update({name: (1.0, PRACTITIONER_BITS) for name in dense})
    return {name: out[name] for name in LAYERS}


def epoch_split(epochs):
    """TFMOT's (pruning, clustering) epochs of a total: two thirds pruning, as for LeNet."""
    prune = max(1, 2 * epochs // 3)
    return prune, epochs - prune
