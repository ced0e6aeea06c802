"""Benchmark: what saving a torch state_dict through Trident's async engine costs the loop.

    PYTHONPATH=... .venv/bin/python tests/perf/torch_ckpt_stall.py [--mib 256] [--rounds 7]

A model + AdamW state dict of about --mib MiB (parameters and two moments). Each round, in
alternating order: (a) memcpy: ctypes.memmove of every tensor into preallocated memory (the
bytes a snapshot must copy, one thread), and (b) stall: ``trident.torch.save_state_dict``'s
return time (the snapshot into staging memory; persisting goes on in the background, and is
waited for, untimed, before the next round). Prints each round and the median ratio
stall/memcpy and the ratio of the best of each (goal: at most 1.2). Not a test: timings never decide pass/fail.
"""

import argparse
import ctypes
import statistics
import tempfile
import time

import torch

import trident.torch as tt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--copy-threads", type=int, default=0, help="0: TRIDENT_CKPT_THREADS")
    args = ap.parse_args()

    # A stack of 1024-wide linear layers: 3 copies of the parameters (weights, exp_avg,
    # exp_avg_sq) make --mib MiB.
    per_layer = 1024 * 1024 * 4 * 3
    layers = max(1, args.mib * 2**20 // per_layer)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024, bias=False) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tt.materialize_optimizer(opt)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    flat = list(tt.flatten_state_dict(state).values())
    nbytes = sum(t.numel() * t.element_size() for t in flat)
    dst = [torch.empty_like(t) for t in flat]
    for d in dst:
        d.fill_(1)  # fault the pages in, as the engine's reserve_bytes does for its staging

    with tempfile.TemporaryDirectory() as d:
        engine = tt.CheckpointEngine(d, keep_last=1, reserve_bytes=nbytes,
                                     copy_threads=args.copy_threads)
        tt.save_state_dict(engine, 0, state).wait()  # warm-up (staging faulted in)
        ratios = []
        rows = []
        print(f"state: {nbytes / 2**20:.1f} MiB in {len(flat)} tensors")
        for r in range(args.rounds):
            order = ["memcpy", "save"] if r % 2 == 0 else ["save", "memcpy"]
            t = {}
            for what in order:
                if what == "memcpy":
                    t0 = time.perf_counter()
                    for s, dd in zip(flat, dst):
                        ctypes.memmove(dd.data_ptr(), s.data_ptr(), s.numel() * s.element_size())
                    t["memcpy"] = time.perf_counter() - t0
                else:
                    t0 = time.perf_counter()
                    save = tt.save_state_dict(engine, r + 1, state)
                    t["save"] = time.perf_counter() - t0
                    save.wait()
            ratios.append(t["save"] / t["memcpy"])
            rows.append((t["memcpy"], t["save"]))
            print(f"round {r}: memcpy {t['memcpy'] * 1e3:.1f} ms ({nbytes / t['memcpy'] / 1e9:.2f} GB/s)"
                  f"  save stall {t['save'] * 1e3:.1f} ms  ratio {ratios[-1]:.2f}")
        engine.close()
        best = min(r[1] for r in rows) / min(r[0] for r in rows)
    print(f"median stall/memcpy: {statistics.median(ratios):.2f}; best stall / best memcpy: "
          f"{best:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
