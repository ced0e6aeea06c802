"""Trident's native module (built from python/src/trident_backend.cc). Use trident.torch."""

from datetime import timedelta
from typing import Callable

import torch

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

# --- The runtime, the resilient loop and the checkpoint engine (trident_runtime.cc) -------
# Use trident.torch's wrappers (python/trident/resilient.py).

class Runtime:
    """This process's place in a fault-tolerant job (trident/runtime.h)."""

    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def member(self) -> str: ...
    @property
    def in_job(self) -> bool: ...
    @property
    def promoted(self) -> bool: ...
    def finish(self) -> None:
        """This rank is done: stops the heartbeat and the watcher."""

def init_runtime(timeout_s: float = 0.0) -> Runtime | None:
    """Runtime::Init (without the GIL; a spare blocks until promoted). None: a spare that was
    not needed. Raises RuntimeError with Trident's status."""

def run_resilient(
    runtime: Runtime,
    adapter: object,
    steps: int,
    ckpt_dir: str = "",
    ckpt_every: int = 0,
    keep: int = 3,
    peer_replicas: bool = True,
    resume: bool = False,
    recover_timeout_s: float = 60.0,
    on_step: Callable[[int, float, int], None] | None = None,
    on_recovery: Callable[[dict], None] | None = None,
    on_save: Callable[[dict], None] | None = None,
    before_step: Callable[[int], None] | None = None,
) -> bool:
    """trident::RunResilient over a Python adapter (trident.torch.run_resilient). True: done;
    False: this process was not needed. Raises RuntimeError with Trident's status."""

class CheckpointSave:
    @property
    def step(self) -> int: ...
    @property
    def done(self) -> bool: ...
    def wait(self, timeout_s: float = 0.0) -> None:
        """Blocks until committed; raises RuntimeError (the save's status, or
        DEADLINE_EXCEEDED after timeout_s > 0) otherwise."""
    def stats(self) -> dict: ...

class CheckpointEngine:
    def __init__(
        self,
        dir: str,
        backend: torch.distributed.Backend | None = None,
        keep_last: int = 0,
        peer_replicas: bool = False,
        reserve_bytes: int = 0,
        copy_threads: int = 0,
    ) -> None:
        """Trident's async checkpoint engine: over a split of a trident group's communicator
        (collective) or this process alone. Raises RuntimeError with Trident's status."""
    def save(self, step: int, tensors: list[tuple[str, torch.Tensor]], metadata: bytes = b"") -> CheckpointSave:
        """Snapshots the tensors into staging memory and returns; the write and commit go on
        in the background. Raises ValueError for a tensor Trident cannot store."""
    def close(self) -> None:
        """Waits for the save in flight and stops the engine's threads."""
