"""The tensor-parallel Helios transformer and its parallel layers."""

from helios.model.layers import ColumnParallelLinear, DistributedRMSNorm, RowParallelLinear, divide
from helios.model.transformer import HeliosTransformer, HeliosTransformerOutput

__all__ = [
    "ColumnParallelLinear",
    "DistributedRMSNorm",
    "HeliosTransformer",
    "HeliosTransformerOutput",
    "RowParallelLinear",
    "divide",
]
