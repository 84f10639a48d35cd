"""Shard-group initialisation and named collectives (deepspeed.comm over NCCL / gloo)."""

from helios.parallel.comm import barrier, gather_from_tp_region, reduce_from_tp_region, tp_rank, tp_size
from helios.parallel.group import TPGroup, disable_deepspeed_shm, init_tp_group

__all__ = [
    "TPGroup",
    "barrier",
    "disable_deepspeed_shm",
    "gather_from_tp_region",
    "init_tp_group",
    "reduce_from_tp_region",
    "tp_rank",
    "tp_size",
]
