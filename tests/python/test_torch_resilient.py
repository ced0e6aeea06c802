"""trident.torch.run_resilient in one process (no launcher: a job of one rank).

The loop trains like a plain loop over the same state and step (the optimizer's state made up
front changes nothing), saves checkpoints that resume, and a step that raises something other
than a failed op ends the run with that exception named (no recovery can cure a bug).
Each test runs in a fresh interpreter, since torch.distributed's default group is global.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("trident.torch")

PRELUDE = textwrap.dedent("""
    import sys, torch
    import torch.distributed as dist
    import trident.torch as tt

    def build():
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=0.05)
        return model, opt

    def make_step(model, opt):
        def step(n):
            g = torch.Generator().manual_seed(n)
            x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            t = loss.detach().clone()
            dist.all_reduce(t)  # through the loop's trident group (a world of one)
            opt.step()
            return t.item()
        return step
""")


def run(body, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIDENT_")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update({"FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo", "OMP_NUM_THREADS": "1"})
    p = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body), str(tmp_path)],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    return p.returncode, p.stdout


def test_losses_equal_a_plain_loop_and_checkpoints_resume(tmp_path):
    rc, out = run("""
        model, opt = build()
        step = make_step(model, opt)
        # The plain loop (a gloo group of one for its all_reduce).
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        plain = [step(n) for n in range(1, 9)]
        dist.destroy_process_group()

        model, opt = build()
        rt = tt.init_runtime()
        assert rt.world_size == 1 and not rt.in_job and not rt.promoted
        got, saves = {}, []
        done = tt.run_resilient(rt, {"model": model, "optim": opt}, make_step(model, opt), 8,
                                ckpt_dir=sys.argv[1], ckpt_every=4,
                                on_step=lambda n, loss, _: got.__setitem__(n, loss),
                                on_save=lambda e: saves.append(e))
        assert done and not dist.is_initialized()
        assert [got[n] for n in range(1, 9)] == plain, (got, plain)
        assert any(e["committed"] and e["step"] == 8 and e["status"] == "OK" for e in saves), saves

        # Resume from step 8's checkpoint into fresh objects: 4 more steps equal the plain
        # loop's steps 9..12.
        model2, opt2 = build()
        step2 = make_step(model2, opt2)
        resumed = {}
        tt.run_resilient(rt, {"model": model2, "optim": opt2}, step2, 12, ckpt_dir=sys.argv[1],
                         ckpt_every=4, resume=True,
                         on_step=lambda n, loss, _: resumed.__setitem__(n, loss))
        assert sorted(resumed) == [9, 10, 11, 12], resumed
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        more = [step(n) for n in range(9, 13)]
        assert [resumed[n] for n in range(9, 13)] == more, (resumed, more)
        print("OK")
    """, tmp_path)
    assert rc == 0 and "OK" in out, out[-6000:]


def test_a_step_that_raises_ends_the_run_naming_the_exception(tmp_path):
    rc, out = run("""
        model, opt = build()
        rt = tt.init_runtime()
        def step(n):
            if n == 3:
                raise ValueError("bad batch 3")
            return 0.0
        try:
            tt.run_resilient(rt, {"model": model, "optim": opt}, step, 5)
        except RuntimeError as e:
            print("raised:", e)
        assert not dist.is_initialized()
    """, tmp_path)
    assert rc == 0, out[-6000:]
    assert "raised: trident: run_resilient: INTERNAL: the training script's step raised " \
           "ValueError: bad batch 3" in out, out[-6000:]
