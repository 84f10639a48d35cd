"""Shard-group initialisation and named collectives (deepspeed.comm over NCCL / gloo):
tensor-parallel all-reduce/gather and Ulysses sequence-parallel all-to-all."""

from helios.parallel.comm import (
    barrier,
    gather_from_tp_region,
    gather_uneven,
    heads_to_seq,
    reduce_from_tp_region,
    seq_to_heads,
    split_sizes,
    tp_rank,
    tp_size,
)
from helios.parallel.group import GroupLike, TPGroup, as_tp_group, disable_deepspeed_shm, init_tp_group

__all__ = [
    "GroupLike",
    "TPGroup",
    "as_tp_group",
    "barrier",
    "disable_deepspeed_shm",
    "gather_from_tp_region",
    "gather_uneven",
    "heads_to_seq",
    "init_tp_group",
    "reduce_from_tp_region",
    "seq_to_heads",
    "split_sizes",
    "tp_rank",
    "tp_size",
]
