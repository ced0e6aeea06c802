"""The c10d backend "trident": ``torch.distributed`` collectives over Trident's communicator.

Importing this module registers the backend with ``torch.distributed.Backend.register_backend``
(for CPU tensors, and CUDA tensors staged through host memory), so that::

    import torch.distributed as dist
    import trident.torch  # noqa: F401  (registers "trident")
    dist.init_process_group("trident")

works under ``torchrun`` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and under
``trident-run`` (see :func:`map_launcher_env`).

What each op does, blocks on and raises:

* Every op is issued asynchronously and returns a ``Work`` (with ``async_op=True``) whose
  ``wait()`` blocks until the op completed on this rank, and whose ``get_future()`` completes
  on the backend's completion thread. Ops of one group complete in issue order.
* Every op has a deadline: the ``timeout`` of ``init_process_group``/``new_group`` (torch's
  default: 30 minutes for non-NCCL backends; pass a shorter one).
* A failed op raises ``torch.distributed.DistBackendError`` from ``wait()`` (a blocking op
  raises it at the call) with a message naming the op, this rank and Trident's status: a dead
  peer ("aborted ... rank N ..."), a deadline ("ranks that had not arrived: N"), or an op the
  ranks disagree on. After such an error the group is aborted: later ops fail at once; build
  a new group. A bad call (a dtype Trident cannot reduce, BAND/BOR/BXOR/PREMUL_SUM, a list of
  several tensors per rank) raises ``RuntimeError`` at the call and nothing is sent.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch  # noqa: F401  (loads libtorch before the native module)
import torch.distributed as dist

from . import _C

BACKEND_NAME = "trident"

__all__ = ["BACKEND_NAME", "map_launcher_env", "create_backend"]


def map_launcher_env(environ: "os._Environ[str] | dict[str, str] | None" = None) -> dict[str, str]:
    """Sets torch's launch variables from trident-run's where torch's are absent.

    RANK <- TRIDENT_RANK, WORLD_SIZE <- TRIDENT_WORLD_SIZE, LOCAL_RANK <- TRIDENT_LOCAL_RANK
    (else TRIDENT_RANK), and, when MASTER_ADDR/MASTER_PORT are absent, MASTER_ADDR <-
    127.0.0.1 (trident-run starts every rank on this host) and MASTER_PORT <-
    TRIDENT_TORCH_PORT. Variables already set (by torchrun or by the user) are never
    changed. Returns what it set. Blocks on nothing; raises nothing.

    This is the Python side's minimum: trident-run itself setting RANK/WORLD_SIZE/
    MASTER_ADDR/MASTER_PORT is the launcher's job.
    """
    env = os.environ if environ is None else environ
    set_: dict[str, str] = {}

    def put(key: str, value: str | None) -> None:
        if value is not None and key not in env:
            env[key] = value
            set_[key] = value

    put("RANK", env.get("TRIDENT_RANK"))
    put("WORLD_SIZE", env.get("TRIDENT_WORLD_SIZE"))
    put("LOCAL_RANK", env.get("TRIDENT_LOCAL_RANK", env.get("TRIDENT_RANK")))
    if "TRIDENT_RANK" in env and "MASTER_ADDR" not in env:
        put("MASTER_ADDR", "127.0.0.1")
    put("MASTER_PORT", env.get("TRIDENT_TORCH_PORT"))
    return set_


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_backend(store: "dist.Store", rank: int, size: int, timeout: timedelta) -> "dist.ProcessGroup":
    """Creates the backend of one process group; torch.distributed calls it.

    Builds a Trident host communicator whose ranks meet through ``store`` (the group's
    store, which torch scopes to the group). Blocks until every rank of the group has
    arrived, at most ``timeout``; raises ``torch.distributed.DistBackendError`` naming
    the rank when they do not.
    """
    return _C.create_backend(store, rank, size, timeout)


map_launcher_env()
if BACKEND_NAME not in dist.Backend.backend_list:
    dist.Backend.register_backend(BACKEND_NAME, create_backend, devices=["cpu", "cuda"])

# Fault-tolerant training and async checkpoints (python/trident/resilient.py).
from .resilient import (  # noqa: E402,F401
    CheckpointEngine,
    Runtime,
    flatten_state_dict,
    init_runtime,
    materialize_optimizer,
    run_resilient,
    save_state_dict,
    unflatten_state_dict,
)

__all__ += ["CheckpointEngine", "Runtime", "flatten_state_dict", "init_runtime",
            "materialize_optimizer", "run_resilient", "save_state_dict", "unflatten_state_dict"]
