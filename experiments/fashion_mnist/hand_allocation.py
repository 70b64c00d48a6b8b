"""The TFMOT variants' per-layer sparsity: one density for all, or the hand-tuned one.

Shared by ``tfmot_baseline.py`` (which prunes to it) and ``allocation.py`` (which
shows it beside sqjl_tf's learned allocation). Pure Python, no TensorFlow.
"""

LAYERS = ("conv1", "conv2", "fc1", "fc2")
KERNEL_SIZES = {"conv1": 500, "conv2": 25000, "fc1": 400000, "fc2": 5000}
TOTAL_KERNEL = sum(KERNEL_SIZES.values())  # 430,500
HAND_FACTORS = {"conv1": 10.0, "conv2": 2.0, "fc2": 4.0}  # fc1 takes the rest


def target_densities(variant, nnz_budget):
    """Per-layer kept fractions of the kernels with sum(d * size) = budget * total."""
    if variant == "uniform":
        return {name: nnz_budget for name in LAYERS}
    total_nnz = nnz_budget * TOTAL_KERNEL
    dens = {name: min(1.0, f * nnz_budget) for name, f in HAND_FACTORS.items()}
    rest = total_nnz - sum(dens[n] * KERNEL_SIZES[n] for n in HAND_FACTORS)
    if rest <= 0:
        raise ValueError(f"nnz_budget={nnz_budget} too small for the hand allocation")
    dens["fc1"] = min(1.0, rest / KERNEL_SIZES["fc1"])
    return {name: dens[name] for name in LAYERS}
