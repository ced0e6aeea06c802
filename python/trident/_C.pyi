"""Trident's native module (built from python/src/trident_backend.cc). Use trident.torch."""

from datetime import timedelta

import torch.distributed

__version__: str

def create_backend(
    store: torch.distributed.Store, rank: int, size: int, timeout: timedelta
) -> torch.distributed.Backend:
    """Creates the c10d backend "trident" of one process group.

    Builds a Trident host communicator whose ranks meet through ``store``. Blocks (without
    the GIL) until every rank of the group arrived, at most ``timeout``. Raises
    ``torch.distributed.DistBackendError`` naming this rank and Trident's status (e.g. the
    ranks that never arrived) when it fails.
    """

def _cpp_allreduce_seconds(backend: torch.distributed.Backend, tensor: object, iters: int) -> float:
    """Benchmark baseline: mean seconds of ``iters`` blocking AllReduce(sum) calls made in C++
    straight on the backend's communicator. Collective: every rank of the group calls it."""
