"""sqjl_tf: automatic neural-network compression for Keras 3.

Sparsity-quantization joint learning under a size budget, by ADMM
(Yang et al., CVPR 2020), as a Keras callback and an optimizer wrapper.

Example:
    >>> cb = sqjl_tf.ADMMCallback(nnz_budget=0.02, bit_budget=3, rho=0.05)
    >>> model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01), cb),
    ...               loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> model.fit(train, validation_data=val, epochs=30, callbacks=[cb])
    >>> compressed = cb.finalize()
    >>> print(sqjl_tf.compression_report(compressed))
"""

from sqjl_tf import projections
from sqjl_tf.admm import ADMMConfig, ADMMState
from sqjl_tf.budget import (
    CompressionReport,
    LayerStats,
    budget_bits,
    compression_report,
    nnz_budget_for_rate,
    nominal_rate,
)
from sqjl_tf.callback import ADMMCallback, finalize_model
from sqjl_tf.data import DatasetInfo, available_datasets, load_dataset
from sqjl_tf.distill import Distiller
from sqjl_tf.export import FileSizeBreakdown, file_size_breakdown, load_compressed, save_compressed
from sqjl_tf.finetune import QuantizedFinetuneCallback, finetune_finalize
from sqjl_tf.layers import CompressibleKernel, compressible_kernels
from sqjl_tf.models import available_models, build_model
from sqjl_tf.loop import train_loop
from sqjl_tf.optimizer import ADMMOptimizer
from sqjl_tf.pipeline import CompressionResult, Recipe, compress, split_budget
from sqjl_tf.schedules import parse_lr_schedule

__all__ = [
    "ADMMCallback",
    "ADMMConfig",
    "ADMMOptimizer",
    "ADMMState",
    "CompressibleKernel",
    "CompressionReport",
    "CompressionResult",
    "DatasetInfo",
    "Distiller",
    "FileSizeBreakdown",
    "LayerStats",
    "QuantizedFinetuneCallback",
    "Recipe",
    "available_datasets",
    "available_models",
    "budget_bits",
    "build_model",
    "compress",
    "compressible_kernels",
    "compression_report",
    "file_size_breakdown",
    "finalize_model",
    "finetune_finalize",
    "load_compressed",
    "load_dataset",
    "nnz_budget_for_rate",
    "nominal_rate",
    "parse_lr_schedule",
    "projections",
    "save_compressed",
    "split_budget",
    "train_loop",
]

__version__ = "0.1.0"
