"""Fault-tolerant PyTorch training under ``trident-run --spares``, and async checkpoints.

A training loop gives Trident its state (objects with ``state_dict``/``load_state_dict``: the
model, the optimizer) and a step function; Trident's resilient loop (the C++
``trident::RunResilient``, the same one C++ trainers use) owns the rest::

    import trident.torch as tt

    rt = tt.init_runtime()            # a spare blocks here until it replaces a dead rank
    if rt is None:
        sys.exit(0)                   # a spare that was not needed
    model, opt = Net(), torch.optim.AdamW(...)   # the same seed on every rank
    ddp = None

    def on_bind(epoch):               # a new process group: rebuild what holds the old one
        global ddp
        ddp = DDP(model)

    def step(n):                      # step n (1, 2, ...): a function of the state and n only
        opt.zero_grad()
        loss = loss_fn(ddp(batch(n)))
        loss.backward()               # DDP's allreduce
        opt.step()                    # changes the state after the last collective
        return loss.item()

    tt.run_resilient(rt, {"model": model, "optim": opt}, step, steps=100,
                     on_bind=on_bind, ckpt_dir="/ckpt", ckpt_every=10)

When a rank dies or hangs, every survivor's op in flight fails at once (the runtime aborts
the group), the launcher gives the dead rank's slot to a spare, and the loop: waits for the
new epoch, builds a new default process group (``torch.distributed`` is re-initialised; the
old group is destroyed), calls ``on_bind``, restores every rank to the newest step that all
can load (the replaced rank from a peer's memory, else the newest checkpoint, else the
initial state; survivors ahead of it roll back) and goes on. The losses from the resumed step
on equal an unbroken run's.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist

from . import _C

__all__ = [
    "Runtime",
    "init_runtime",
    "run_resilient",
    "materialize_optimizer",
    "flatten_state_dict",
    "unflatten_state_dict",
    "CheckpointEngine",
    "save_state_dict",
]

Runtime = _C.Runtime


def init_runtime(timeout: timedelta | None = None) -> "_C.Runtime | None":
    """Joins the job that trident-run started (``trident::Runtime::Init``).

    A worker returns at once with its rank; a spare (``--spares``) blocks, without the GIL,
    until it is promoted into a dead rank's slot, and then returns as that rank
    (``runtime.promoted`` is True). Returns None when this process was a spare that the job
    did not need (exit 0). Without trident-run: a job of one process. ``timeout``: the default
    deadline of the runtime's own ops (None: ``TRIDENT_TIMEOUT_MS``). Raises RuntimeError
    with Trident's status (e.g. a malformed ``TRIDENT_*`` variable).
    """
    return _C.init_runtime(timeout.total_seconds() if timeout else 0.0)


def flatten_state_dict(sd: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a nested state dict, by dotted name (``optim.state.0.exp_avg``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(flatten_state_dict(value, name + "."))
    return out


def unflatten_state_dict(skeleton: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                         prefix: str = "") -> dict[str, Any]:
    """``skeleton`` (a state dict) with each tensor replaced by ``tensors[dotted name]``."""
    out: dict[Any, Any] = {}
    for key, value in skeleton.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[key] = tensors[name]
        elif isinstance(value, Mapping):
            out[key] = unflatten_state_dict(value, tensors, name + ".")
        else:
            out[key] = value
    return out


def materialize_optimizer(opt: torch.optim.Optimizer) -> None:
    """Creates the optimizer's per-parameter state now, as zeros, instead of at its first step.

    A replaced rank's fresh optimizer must have every state tensor to restore into. For SGD
    (momentum, dampening 0), Adam and AdamW, a zeroed state (step 0, zero moments) is what
    their first step would create lazily, so the training is unchanged. Parameters and their
    gradients are left as they were.
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    if all(len(opt.state.get(p, {})) > 0 for p in params):
        return
    saved = [(p, p.detach().clone(), p.grad) for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    with torch.no_grad():
        for p, data, grad in saved:
            p.copy_(data)
            p.grad = grad
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                value.zero_()


class _Adapter:
    """The Trainable's Python half (python/src/trident_runtime.cc calls the _methods)."""

    def __init__(self, state: Mapping[str, Any], step: Callable[[int], float],
                 on_bind: Callable[[int], None] | None, timeout: timedelta,
                 replicated: bool):
        self.state = dict(state)
        self.replicated = replicated
        self.step_fn = step
        self.on_bind = on_bind
        self.timeout = timeout
        for obj in self.state.values():
            if isinstance(obj, torch.optim.Optimizer):
                materialize_optimizer(obj)
        self._check(self._flat())
        self.initial = {k: v.detach().clone() for k, v in self._flat().items()}
        self.buffers: dict[str, torch.Tensor] = {}

    def _skeleton(self) -> dict[str, Any]:
        return {key: obj.state_dict() for key, obj in self.state.items()}

    def _flat(self) -> dict[str, torch.Tensor]:
        return flatten_state_dict(self._skeleton())

    @staticmethod
    def _check(flat: Mapping[str, torch.Tensor]) -> None:
        for name, t in flat.items():
            if t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError(f"trident: state tensor {name!r} must be a contiguous CPU tensor "
                                 f"(is {t.device}, contiguous={t.is_contiguous()})")

    def _load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        sd = unflatten_state_dict(self._skeleton(), tensors)
        for key, obj in self.state.items():
            obj.load_state_dict(sd[key])

    # --- called by the C++ loop --------------------------------------------------------
    def _bind(self, epoch: int, fresh: bool, rank: int, size: int) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        # The backend adopts the group the loop split from the runtime's world; the store is
        # not used by it (the ranks already met), so a process-local one is enough.
        dist.init_process_group("trident", store=dist.HashStore(), rank=rank,
                                world_size=size, timeout=self.timeout)
        if self.on_bind is not None:
            self.on_bind(epoch)

    def _step(self, n: int) -> float:
        return float(self.step_fn(n))

    def _placed(self, flat: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor, int, int]]:
        if self.replicated:
            # Data parallel: every rank holds the same state; a checkpoint writes it once.
            return [(k, v, dist.get_rank(), dist.get_world_size()) for k, v in flat.items()]
        # Each rank its own state (sharded): names carry the rank.
        return [(f"rank{dist.get_rank()}.{k}", v, 0, 1) for k, v in flat.items()]

    def _tensors(self) -> list[tuple[str, torch.Tensor, int, int]]:
        return self._placed(self._flat())

    def _restore_buffers(self) -> list[tuple[str, torch.Tensor, int, int]]:
        self.buffers = {k: torch.empty_like(v) for k, v in self._flat().items()}
        return self._placed(self.buffers)

    def _restored(self, step: int) -> None:
        self._load(self.buffers)
        self.buffers = {}

    def _reset(self) -> None:
        self._load({k: v.clone() for k, v in self.initial.items()})


def run_resilient(runtime: "_C.Runtime", state: Mapping[str, Any], step: Callable[[int], float],
                  steps: int, *, on_bind: Callable[[int], None] | None = None,
                  ckpt_dir: str = "", ckpt_every: int = 0, keep: int = 3,
                  peer_replicas: bool = True, resume: bool = False, replicated: bool = True,
                  timeout: timedelta = timedelta(seconds=60),
                  recover_timeout: timedelta = timedelta(seconds=60),
                  on_step: Callable[[int, float, int], None] | None = None,
                  on_recovery: Callable[[dict], None] | None = None,
                  on_save: Callable[[dict], None] | None = None,
                  before_step: Callable[[int], None] | None = None) -> bool:
    """Trains ``steps`` steps through failures; returns True when done, False when this
    process was not needed (a spare at the end of the job: exit 0).

    What the training script provides:

    - ``state``: name -> object with ``state_dict()``/``load_state_dict()`` whose state dicts
      hold contiguous CPU tensors of Trident's dtypes (a model, an optimizer: an optimizer's
      state is created up front, zeroed, see ``materialize_optimizer``). Every rank builds it
      the same way (same seed). Non-tensor entries (hyper-parameters) are not saved: derive
      them from the step number.
    - ``step(n)``: runs step n (n = 1, 2, ...) and returns its loss. It must be a function of
      the state and n only (its batch is chosen by n and the rank, not by a running
      iterator), and change the state only after its last collective (``optimizer.step()``
      last), so that a step that fails half-way can be redone.
    - ``on_bind(epoch)`` (optional): called after each new default process group, at the
      start and after every recovery; rebuild what holds the old group (``DDP(model)``).

    ``replicated`` (default): the state is the same on every rank (data parallel: DDP), so
    a checkpoint writes each tensor once, its rows spread over the ranks; False: each rank
    has its own state (stored as ``rank<R>.<name>``). ``ckpt_dir``/``ckpt_every``: async
    checkpoints every that many steps (each rank's last one also kept in a buddy's memory
    when ``peer_replicas``); ``resume``: start from the newest checkpoint there.

    Blocks (without the GIL) for the whole run; ``on_step(step, loss, since_verdict_ms)``,
    ``on_recovery(report)``, ``on_save(event)`` and ``before_step(n)`` are called on this
    thread. ``timeout`` is the deadline of each torch op (a backstop: a dead rank fails the
    ops at once). Raises RuntimeError with Trident's status when no recovery can go on (no
    spare left, a step that raised something other than a failed op: that exception's text).
    """
    adapter = _Adapter(state, step, on_bind, timeout, replicated)
    try:
        return _C.run_resilient(runtime, adapter, steps, ckpt_dir=ckpt_dir,
                                ckpt_every=ckpt_every, keep=keep, peer_replicas=peer_replicas,
                                resume=resume,
                                recover_timeout_s=recover_timeout.total_seconds(),
                                on_step=on_step, on_recovery=on_recovery, on_save=on_save,
                                before_step=before_step)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


CheckpointEngine = _C.CheckpointEngine


def save_state_dict(engine: "_C.CheckpointEngine", step: int,
                    state_dict: Mapping[str, Any]) -> "_C.CheckpointSave":
    """Saves a (nested) torch state dict, e.g. ``{"model": m.state_dict(), "optim":
    opt.state_dict()}``, through the async engine; returns once its tensors are copied.

    Each tensor is stored under its dotted name (``flatten_state_dict``); the non-tensor
    entries (``param_groups``) go, as JSON, into the checkpoint's metadata. Tensors must be
    contiguous CPU tensors of Trident's dtypes (float32/64, float16, bfloat16, int8, uint8,
    int32, int64). ``CheckpointSave.wait()`` blocks until the commit. The files are
    safetensors: ``safetensors.torch.load_file(shard)`` reads them.
    """
    flat = flatten_state_dict(state_dict)

    def skeleton(sd: Mapping[str, Any]) -> Any:
        return {str(k): (None if isinstance(v, torch.Tensor) else
                         skeleton(v) if isinstance(v, Mapping) else v)
                for k, v in sd.items()}

    meta = json.dumps(skeleton(state_dict), default=str).encode()
    return engine.save(step, list(flat.items()), meta)
