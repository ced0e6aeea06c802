"""One rank of the multi-rank tests of trident.torch (launched by test_torch_backend.py as
torchrun or trident-run would: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).

    python trident_worker.py SCENARIO OUT_DIR

Writes OUT_DIR/rank<r>.json with what the scenario measured; exits non-zero on a failed check.
"""

import json
import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import trident.torch  # noqa: F401  (registers the backend "trident")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64,
          torch.int8, torch.uint8]
MOVE_ONLY_DTYPES = [torch.bool, torch.complex64, torch.int16]


def check_equal(got, want, what):
    if not torch.equal(got, want):
        raise AssertionError(f"{what}: trident gave {got.tolist()}, gloo {want.tolist()}")


def data(dtype, n, rank, salt=0):
    g = torch.Generator().manual_seed(1000 * salt + 17 * rank + 3)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    if dtype.is_complex:
        return torch.randn(n, 2, generator=g).view(torch.complex64).reshape(n)
    if dtype.is_floating_point:
        # Small integers: sums are exact in every float type, so both backends must agree
        # bit for bit whatever their reduction order.
        return torch.randint(-4, 5, (n,), generator=g).to(dtype)
    if dtype == torch.uint8:
        return torch.randint(0, 5, (n,), generator=g).to(dtype)
    return torch.randint(-4, 5, (n,), generator=g).to(dtype)


def run_ops(rank, world, tri, gloo):
    """Every op on both backends, compared element for element."""
    checked = []

    def both(name, fn, groups=(tri, gloo)):
        outs = [fn(g) for g in groups]
        for i, (a, b) in enumerate(zip(outs[0], outs[1])):
            check_equal(a, b, f"{name} output {i}")
        checked.append(name)

    n = 12 * world
    for dtype in DTYPES:
        tag = str(dtype).replace("torch.", "")
        ops = [dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.MIN]
        if dtype.is_floating_point:
            ops.append(dist.ReduceOp.AVG)
        for op in ops:
            def ar(g, op=op):
                t = data(dtype, n, rank)
                dist.all_reduce(t, op=op, group=g)
                return [t]
            both(f"all_reduce {tag} {op}", ar)

        def ar_nc(g):  # non-contiguous tensor: staged and copied back
            t = data(dtype, 2 * n, rank).view(2, n).t()
            dist.all_reduce(t, group=g)
            return [t.contiguous()]
        both(f"all_reduce non-contiguous {tag}", ar_nc)

        def coalesced(g):
            ts = [data(dtype, 5, rank, 1), data(dtype, 7, rank, 2)]
            dist.all_reduce_coalesced(ts, group=g)
            return ts
        both(f"all_reduce_coalesced {tag}", coalesced)

        def reduce(g):
            t = data(dtype, n, rank)
            dist.reduce(t, dst=world - 1, group=g)
            return [t] if rank == world - 1 else []
        both(f"reduce {tag}", reduce)

        def rs_tensor(g):
            out = torch.zeros(n // world, dtype=dtype)
            dist.reduce_scatter_tensor(out, data(dtype, n, rank), group=g)
            return [out]
        both(f"reduce_scatter_tensor {tag}", rs_tensor)

        def rs_list(g):
            out = torch.zeros(3, dtype=dtype)
            dist.reduce_scatter(out, [data(dtype, 3, rank, r) for r in range(world)], group=g)
            return [out]
        both(f"reduce_scatter {tag}", rs_list)

    for dtype in DTYPES:
        tag = str(dtype).replace("torch.", "")

        def bcast(g):
            t = data(dtype, 9, rank)
            dist.broadcast(t, src=1 % world, group=g)
            return [t]
        both(f"broadcast {tag}", bcast)

        def ag(g):
            outs = [torch.zeros(5, dtype=dtype) for _ in range(world)]
            dist.all_gather(outs, data(dtype, 5, rank), group=g)
            return outs
        both(f"all_gather {tag}", ag)

        def ag_tensor(g):
            out = torch.zeros(world * 6, dtype=dtype)
            dist.all_gather_into_tensor(out, data(dtype, 6, rank), group=g)
            return [out]
        both(f"all_gather_into_tensor {tag}", ag_tensor)

        def a2a(g):
            out = torch.zeros(world * 4, dtype=dtype)
            dist.all_to_all_single(out, data(dtype, world * 4, rank), group=g)
            return [out]
        both(f"all_to_all_single {tag}", a2a)

    # dtypes that gloo cannot carry but ops that only move data can: checked against the
    # result computed here.
    for dtype in MOVE_ONLY_DTYPES:
        tag = str(dtype).replace("torch.", "")
        t = data(dtype, 9, rank)
        dist.broadcast(t, src=1 % world, group=tri)
        check_equal(t, data(dtype, 9, 1 % world), f"broadcast {tag}")
        outs = [torch.zeros(5, dtype=dtype) for _ in range(world)]
        dist.all_gather(outs, data(dtype, 5, rank), group=tri)
        for r in range(world):
            check_equal(outs[r], data(dtype, 5, r), f"all_gather {tag} block {r}")
        out = torch.zeros(world * 4, dtype=dtype)
        dist.all_to_all_single(out, data(dtype, world * 4, rank), group=tri)
        for r in range(world):
            check_equal(out[4 * r:4 * r + 4], data(dtype, world * 4, r)[4 * rank:4 * rank + 4],
                        f"all_to_all_single {tag} block {r}")
        checked.append(f"move-only {tag}")

    def a2a_uneven(g):
        in_splits = [(rank + r) % 3 + 1 for r in range(world)]
        out_splits = [(r + rank) % 3 + 1 for r in range(world)]
        out = torch.zeros(sum(out_splits), 2)
        inp = data(torch.float32, 2 * sum(in_splits), rank).view(-1, 2)
        dist.all_to_all_single(out, inp, out_splits, in_splits, group=g)
        return [out]
    both("all_to_all_single uneven", a2a_uneven)

    def a2a_list(g):
        outs = [torch.zeros(3) for _ in range(world)]
        dist.all_to_all(outs, [data(torch.float32, 3, rank, r) for r in range(world)], group=g)
        return outs
    both("all_to_all", a2a_list)

    def gather(g):
        outs = [torch.zeros(4) for _ in range(world)] if rank == 0 else None
        dist.gather(data(torch.float32, 4, rank), outs, dst=0, group=g)
        return outs or []
    both("gather", gather)

    def scatter(g):
        out = torch.zeros(4)
        ins = [data(torch.float32, 4, 0, r) for r in range(world)] if rank == 0 else None
        dist.scatter(out, ins, src=0, group=g)
        return [out]
    both("scatter", scatter)

    def p2p(g):  # a ring: each rank sends to the next, receives from the previous
        t = data(torch.float64, 8, rank)
        r = torch.zeros(8, dtype=torch.float64)
        nxt, prv = (rank + 1) % world, (rank - 1) % world
        ops = [dist.P2POp(dist.isend, t, nxt, group=g), dist.P2POp(dist.irecv, r, prv, group=g)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        return [r]
    both("isend/irecv ring", p2p)

    def sendrecv(g):
        t = data(torch.int64, 6, rank)
        if rank == 0:
            dist.send(t, dst=1, group=g, tag=7)
            return []
        if rank == 1:
            dist.recv(t, src=0, group=g, tag=7)
        return [t] if rank == 1 else []
    both("send/recv", sendrecv)

    def async_future(g):
        t = data(torch.float32, n, rank)
        work = dist.all_reduce(t, group=g, async_op=True)
        fut = work.get_future().then(lambda f: f.value()[0] * 2)
        return [fut.wait()]
    both("all_reduce async future", async_future)

    dist.barrier()

    # new_group of a subset (every rank calls new_group; members do the op).
    sub_ranks = list(range(0, world, 2)) if world >= 4 else list(range(world))
    tri_sub = dist.new_group(sub_ranks, backend="trident")
    gloo_sub = dist.new_group(sub_ranks, backend="gloo")
    if rank in sub_ranks:
        def sub_ar(g):
            t = data(torch.float32, 10, rank)
            dist.all_reduce(t, group=g)
            return [t]
        both("new_group all_reduce", sub_ar, (tri_sub, gloo_sub))

        def sub_bcast(g):
            t = data(torch.int64, 10, rank)
            dist.broadcast(t, src=sub_ranks[-1], group=g)
            return [t]
        both("new_group broadcast", sub_bcast, (tri_sub, gloo_sub))
    # Errors of a bad call: raised at the call, nothing sent.
    try:
        dist.all_reduce(torch.ones(3, dtype=torch.int16), group=tri)
        raise AssertionError("all_reduce of int16 did not raise")
    except (RuntimeError, ValueError) as e:
        if "int16" not in str(e) and "Short" not in str(e):
            raise AssertionError(f"int16 error does not name the dtype: {e}")
    try:
        dist.all_reduce(torch.ones(3, dtype=torch.int32), op=dist.ReduceOp.BXOR, group=tri)
        raise AssertionError("all_reduce BXOR did not raise")
    except (RuntimeError, ValueError) as e:
        if "BXOR" not in str(e):
            raise AssertionError(f"BXOR error does not name the op: {e}")
    dist.barrier()
    return {"checked": len(checked)}


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(),
                                       torch.nn.Linear(64, 64), torch.nn.GELU(),
                                       torch.nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)


def batches(rank, steps):
    g = torch.Generator().manual_seed(1234 + rank)
    w = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    for _ in range(steps):
        x = torch.randn(32, 16, generator=g)
        yield x, x @ w + 0.1 * torch.randn(32, 4, generator=g)


def train_ddp(rank, group, steps):
    torch.manual_seed(0)
    model = Mlp()
    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group,
                                                    bucket_cap_mb=0.01)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, y in batches(rank, steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
        avg = loss.detach().clone()
        dist.all_reduce(avg, op=dist.ReduceOp.AVG, group=group)
        losses.append(avg.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def train_fsdp2(rank, mesh, steps):
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = Mlp()
    for layer in model.net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for x, y in batches(rank, steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    scenario, out_dir = sys.argv[1], sys.argv[2]
    timeout = timedelta(seconds=float(os.environ.get("TEST_TIMEOUT_S", "60")))
    # The short timeouts of the failure scenarios apply to their own group, not to the
    # rendezvous (processes of a loaded machine may take seconds to import torch).
    dist.init_process_group("trident", timeout=max(timeout, timedelta(seconds=60)))
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"rank": rank, "world": world}
    if scenario == "ops":
        gloo = dist.new_group(backend="gloo")
        result.update(run_ops(rank, world, dist.group.WORLD, gloo))
    elif scenario == "ddp":
        gloo = dist.new_group(backend="gloo")
        steps = int(os.environ.get("TEST_STEPS", "20"))
        result["trident"], p_tri = train_ddp(rank, dist.group.WORLD, steps)
        result["gloo"], p_gloo = train_ddp(rank, gloo, steps)
        result["params_equal"] = all(torch.equal(a, b) for a, b in zip(p_tri, p_gloo))
    elif scenario == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh, DeviceMesh
        steps = int(os.environ.get("TEST_STEPS", "8"))
        mesh = DeviceMesh.from_group(dist.group.WORLD, "cpu")
        result["trident"] = train_fsdp2(rank, mesh, steps)
        gloo = dist.new_group(backend="gloo")
        result["gloo"] = train_fsdp2(rank, DeviceMesh.from_group(gloo, "cpu"), steps)
    elif scenario in ("kill", "deadline"):
        victim = world - 1
        t = torch.ones(1000)
        group = dist.new_group(backend="trident", timeout=timeout)
        dist.all_reduce(t, group=group)  # everybody is connected
        if rank == victim:
            if scenario == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(float(os.environ.get("TEST_VICTIM_SLEEP_S", "8")))
            os._exit(0)
        start = time.monotonic()
        try:
            dist.all_reduce(t, group=group)
            result["error"] = None
        except Exception as e:  # what the user sees
            result["error"] = str(e)
            result["error_type"] = type(e).__name__
        result["seconds"] = time.monotonic() - start
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        if rank == 0:
            # Rank 0 hosts torch's TCPStore, through which the others name the absent rank:
            # it stays until every survivor has written its result (bounded).
            end = time.monotonic() + 60
            while time.monotonic() < end and not all(
                    os.path.exists(os.path.join(out_dir, f"rank{r}.json"))
                    for r in range(world - 1)):
                time.sleep(0.05)
        os._exit(0)  # the group is aborted; skip the destroy handshake with a dead rank
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
