"""sqjl_tf: automatic neural-network compression for Keras 3.

Sparsity-quantization joint learning under a size budget, by ADMM
(Yang et al., CVPR 2020), as Keras callbacks and an optimizer wrapper.
"""

from sqjl_tf.layers import CompressibleKernel, compressible_kernels

__all__ = [
    "CompressibleKernel",
    "compressible_kernels",
]

__version__ = "0.1.0"
