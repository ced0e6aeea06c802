"""dist.all_reduce with backend "trident" against backend "gloo" (torch's own), and DDP steps/s.

One rank of the benchmark; tests/perf/torch_allreduce.sh starts N of them as torchrun would
and also runs the C++ trident-bench at the same sizes, so the three are compared in one
sitting. Both process groups live in the same processes (trident is the default group, gloo a
new_group over the same ranks), and each size alternates rounds between them, so noise from
the shared machine falls on both alike.

    python tests/perf/torch_allreduce.py --json out.json [--min-bytes 4096]
                                         [--max-bytes 67108864] [--rounds 3] [--ddp-steps 30]

Rank 0 prints, per size, the mean time of one blocking dist.all_reduce (float32, sum) with
each backend (the minimum over rounds of each round's mean), and the DDP steps/s of a small
MLP with each backend.
"""

import argparse
import json
import time

import torch
import torch.distributed as dist

import trident.torch  # noqa: F401


def time_allreduce(t, group, iters):
    dist.barrier(group=group)
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(t, group=group)
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
    return elapsed.item() / iters


def ddp_steps_per_s(group, steps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(),
                                torch.nn.Linear(1024, 1024), torch.nn.GELU(),
                                torch.nn.Linear(1024, 16))
    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    x, y = torch.randn(64, 256), torch.randn(64, 16)

    def step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    dist.barrier(group=group)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
    return steps / elapsed.item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", default="")
    p.add_argument("--min-bytes", type=int, default=4096)
    p.add_argument("--max-bytes", type=int, default=64 << 20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ddp-steps", type=int, default=30)
    a = p.parse_args()
    dist.init_process_group("trident")
    groups = {"trident": dist.group.WORLD, "gloo": dist.new_group(backend="gloo")}
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    size = a.min_bytes
    while size <= a.max_bytes:
        t = torch.ones(size // 4)
        iters = max(3, min(200, int(32e6 / size)))
        best = {k: float("inf") for k in groups}
        for _ in range(a.rounds):
            for name, g in groups.items():
                time_allreduce(t, g, 2)  # warm-up
                best[name] = min(best[name], time_allreduce(t, g, iters))
        row = {"bytes": size, "iters": iters,
               **{f"{k}_us": v * 1e6 for k, v in best.items()}}
        row["gloo_over_trident"] = best["gloo"] / best["trident"]
        rows.append(row)
        if rank == 0:
            print(f"{size:>10} B  trident {row['trident_us']:10.1f} us  gloo "
                  f"{row['gloo_us']:10.1f} us  gloo/trident {row['gloo_over_trident']:.2f}",
                  flush=True)
        size *= 2
    # The per-op cost of the c10d/Python layer: the same blocking all_reduce through
    # dist.all_reduce and straight on the communicator in C++, alternating, same processes.
    from trident import _C
    backend = dist.group.WORLD._get_backend(torch.device("cpu"))
    overhead = []
    for nbytes in (4, 4096):
        t = torch.ones(nbytes // 4)
        py_s, cpp_s = float("inf"), float("inf")
        for _ in range(5):
            time_allreduce(t, dist.group.WORLD, 20)
            py_s = min(py_s, time_allreduce(t, dist.group.WORLD, 500))
            dist.barrier()
            cpp_s = min(cpp_s, _C._cpp_allreduce_seconds(backend, t, 500))
        overhead.append({"bytes": nbytes, "torch_us": py_s * 1e6, "cpp_us": cpp_s * 1e6,
                         "overhead_us": (py_s - cpp_s) * 1e6})
        if rank == 0:
            print(f"{nbytes:>10} B  dist.all_reduce {py_s * 1e6:8.1f} us  C++ call "
                  f"{cpp_s * 1e6:8.1f} us  overhead {(py_s - cpp_s) * 1e6:6.1f} us", flush=True)
    ddp = {}
    for _ in range(2):  # alternate
        for name, g in groups.items():
            ddp[name] = max(ddp.get(name, 0.0), ddp_steps_per_s(g, a.ddp_steps))
    if rank == 0:
        print(f"DDP steps/s: trident {ddp['trident']:.1f}  gloo {ddp['gloo']:.1f}", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"world": world, "allreduce": rows, "overhead": overhead,
                           "ddp_steps_per_s": ddp}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
