"""A PyTorch training script that survives a killed or stopped rank (trident.torch).

    build/bin/trident-run --nproc 4 --spares 1 -- .venv/bin/python \
        examples/torch_trainer/train.py --steps 30 --ckpt-dir /tmp/ckpt --ckpt-every 5

A small MLP regressor trained with DDP and AdamW on data the script makes (fixed seeds), by
``trident.torch.run_resilient``: the script gives it the model and the optimizer (their
state_dict/load_state_dict) and a step function; Trident's loop does the rest. When a rank
dies (SIGKILL) or hangs (SIGSTOP), the spare takes its place, the process group is rebuilt
for the new epoch, the spare's model and optimizer state come from a peer's memory (or the
last checkpoint), and the losses from the resumed step on equal an unbroken run's.

Every rank prints ``step N loss L`` (the global mean loss, exact repr) after each step; rank
0 prints one ``recovery ...`` line per replaced rank. ``--fault RANK:STEP:KILL|STOP`` makes
that rank send itself the signal before that step (or the first step after it once a
checkpoint has committed, when saving; epoch 1 only), for tests and demos.
"""

import argparse
import os
import signal
import sys
from datetime import timedelta

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Subset, TensorDataset

import trident.torch as tt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16, help="samples per rank per step")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--ckpt-dir", default="")
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds, each torch op")
    p.add_argument("--fault", default="", help="RANK:STEP:KILL|STOP (epoch 1 only)")
    return p.parse_args(argv)


class Net(torch.nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def make_data(seed, n=4096, d=8):
    """A fixed regression task: y = sin(x . w) + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = torch.sin(x @ w).unsqueeze(1) + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader_for_step(data, step, rank, world, batch):
    """The data loader of one step: the rank's slice of the step's global batch. A function
    of (step, rank), not a running iterator, so a restored rank reads what it would have."""
    global_batch = batch * world
    start = ((step - 1) * global_batch + rank * batch) % len(data)
    idx = [(start + i) % len(data) for i in range(batch)]
    return DataLoader(Subset(data, idx), batch_size=batch, shuffle=False)


def main(argv=None):
    args = parse_args(argv)
    # Everything that does not depend on the rank is built before joining, so that a spare
    # waits warm: promoted, it only restores the state.
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    data = make_data(args.seed)
    model = Net(data.tensors[0].shape[1], args.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    tt.materialize_optimizer(optimizer)  # its state exists (zeros) before the first step
    ddp = None

    rt = tt.init_runtime()  # a spare blocks here until it replaces a dead rank
    if rt is None:
        print("spare: not needed, exiting", flush=True)
        return 0

    fault = None
    if args.fault:
        r, s, sig = args.fault.split(":")
        fault = (int(r), int(s), {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}[sig])

    def on_bind(epoch):
        nonlocal ddp
        ddp = DDP(model)  # the new epoch's process group

    def step(n):
        rank, world = rt.rank, rt.world_size
        # The fault waits for a committed checkpoint (when saving: `latest` names it), so
        # that the demo restores from a peer's memory or storage, not the initial state.
        ready = not args.ckpt_dir or os.path.exists(os.path.join(args.ckpt_dir, "latest"))
        if (fault and rank == fault[0] and n >= fault[1] and ready and rt.epoch == 1
                and not rt.promoted):
            print(f"fault: rank {rank} sends itself {signal.Signals(fault[2]).name} before "
                  f"step {n}", flush=True)
            os.kill(os.getpid(), fault[2])
        optimizer.zero_grad(set_to_none=False)
        (x, y), = loader_for_step(data, n, rank, world, args.batch)
        loss = F.mse_loss(ddp(x), y)
        loss.backward()  # DDP all-reduces the gradients
        mean = loss.detach().clone()
        torch.distributed.all_reduce(mean, op=torch.distributed.ReduceOp.AVG)
        optimizer.step()  # the state changes only after the last collective
        return mean.item()

    def on_step(n, loss, since_verdict_ms):
        print(f"step {n} loss {loss!r}", flush=True)

    def on_recovery(r):
        if rt.rank == 0:
            print(f"recovery epoch={r['epoch']} dead_rank={r['rank']} cause={r['cause']} "
                  f"source={r['source']} resume_step={r['resume_step']} "
                  f"steps_redone={r['steps_redone']} detect_ms={r['detect_ms']} "
                  f"recover_ms={r['recover_ms']}", flush=True)

    done = tt.run_resilient(
        rt, {"model": model, "optim": optimizer}, step, args.steps, on_bind=on_bind,
        ckpt_dir=args.ckpt_dir, ckpt_every=args.ckpt_every,
        timeout=timedelta(seconds=args.timeout), on_step=on_step, on_recovery=on_recovery)
    if not done:
        print("spare: not needed, exiting", flush=True)
        return 0
    if rt.rank == 0:
        print(f"done: {args.steps} steps, epoch {rt.epoch}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
