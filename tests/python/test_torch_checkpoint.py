"""A torch state_dict (model + optimizer) through Trident's async checkpoint engine, read
back with PyPI's safetensors (``safetensors.torch.load_file``), restores the state exactly.

Needs torch, safetensors and the trident package (skipped with the reason otherwise).
"""

import base64
import json

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
safetensors_torch = pytest.importorskip("safetensors.torch",
                                        reason="safetensors is not installed (pip install safetensors)")
tt = pytest.importorskip("trident.torch")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 4)
        # Buffers of other dtypes Trident stores.
        self.register_buffer("scale", torch.linspace(0, 1, 32).to(torch.bfloat16))
        self.register_buffer("seen", torch.arange(5, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([1, 0, 1], dtype=torch.uint8))

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)) * self.scale.float())


def trained(seed=7, steps=3):
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 16)).square().mean().backward()
        opt.step()
    return model, opt


def raw(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def load_shards(step_dir):
    shards = sorted(step_dir.glob("*.safetensors"))
    assert shards, f"no shard in {step_dir}"
    tensors = {}
    for shard in shards:
        loaded = safetensors_torch.load_file(str(shard))
        assert not set(loaded) & set(tensors), "a tensor in two shards of a 1-rank save"
        tensors.update(loaded)
    return tensors


def test_state_dict_round_trips_exactly_through_safetensors(tmp_path):
    model, opt = trained()
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    expected = {k: raw(v) for k, v in tt.flatten_state_dict(state).items()}
    assert "optim.state.0.exp_avg" in expected and "optim.state.0.step" in expected

    engine = tt.CheckpointEngine(str(tmp_path))
    save = tt.save_state_dict(engine, 3, state)
    # Save returned after the snapshot: the training may change the state at once.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save.wait(timeout_s=60)
    assert save.done and save.stats()["staged_bytes"] == sum(len(b) for b in expected.values())
    engine.close()

    step_dir = tmp_path / "step-000000003"
    loaded = load_shards(step_dir)
    assert set(loaded) == set(expected)
    for name, t in loaded.items():
        assert raw(t) == expected[name], f"{name} differs"

    # The state restores: a fresh model and optimizer (state created up front) take it.
    torch.manual_seed(99)
    model2 = Net()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    tt.materialize_optimizer(opt2)
    skeleton = {"model": model2.state_dict(), "optim": opt2.state_dict()}
    restored = tt.unflatten_state_dict(skeleton, loaded)
    model2.load_state_dict(restored["model"])
    opt2.load_state_dict(restored["optim"])
    again = tt.flatten_state_dict({"model": model2.state_dict(), "optim": opt2.state_dict()})
    for name, t in again.items():
        assert raw(t) == expected[name], f"{name} differs after load_state_dict"

    # The non-tensor entries (param_groups) are in the manifest's metadata, as JSON.
    manifest = json.loads((step_dir / "manifest.json").read_text())
    meta = json.loads(base64.b64decode(manifest["ranks"][0]["metadata"]))
    assert meta["optim"]["param_groups"][0]["lr"] == 1e-2
    assert meta["model"]["fc.weight"] is None  # tensors are in the shards
    assert (tmp_path / "latest").read_text().strip() == "step-000000003"


def test_save_rejects_what_trident_cannot_store(tmp_path):
    engine = tt.CheckpointEngine(str(tmp_path))
    with pytest.raises(ValueError, match="state tensor 'x' must be a contiguous CPU tensor"):
        engine.save(1, [("x", torch.zeros(4, 4).t())])
    with pytest.raises(ValueError, match="state tensor 'b'.*dtype Bool"):
        engine.save(1, [("b", torch.zeros(3, dtype=torch.bool))])
    engine.close()
    with pytest.raises(RuntimeError, match="the CheckpointEngine was closed"):
        engine.save(2, [("y", torch.zeros(2))])


SAVER = """
import sys, torch, torch.distributed as dist
import trident.torch as tt
dist.init_process_group("trident")
rank = dist.get_rank()
backend = dist.group.WORLD._get_backend(torch.device("cpu"))
engine = tt.CheckpointEngine(sys.argv[1], backend=backend)
torch.manual_seed(rank)
state = {f"rank{rank}": {"w": torch.randn(64, 8), "n": torch.arange(rank + 3)}}
tt.save_state_dict(engine, 5, state).wait(timeout_s=60)
engine.close()
torch.save(state, f"{sys.argv[1]}/expected{rank}.pt")
dist.destroy_process_group()
"""


def test_a_trident_group_saves_one_shard_per_rank(tmp_path):
    import os
    import subprocess
    import sys

    from trident.torch import free_port

    port = free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIDENT_")}
        env.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                    "FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo", "OMP_NUM_THREADS": "1"})
        procs.append(subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank}:\n{out[-4000:]}"
    step_dir = tmp_path / "step-000000005"
    shards = sorted(step_dir.glob("*.safetensors"))
    assert len(shards) == 2, shards
    loaded = load_shards(step_dir)
    for rank in range(2):
        expected = torch.load(tmp_path / f"expected{rank}.pt")
        for name, t in tt.flatten_state_dict(expected).items():
            assert raw(loaded[name]) == raw(t), name
