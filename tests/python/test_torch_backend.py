"""trident.torch against torch's own gloo backend, on 2 and 4 real processes.

Each test launches the ranks of tests/python/trident_worker.py as torchrun would (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or through build/bin/trident-run, and reads what each
rank wrote. Needs torch and the trident package in the Python running pytest.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trident.torch")

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("trident_worker.py")
BUILD = Path(os.environ.get("TRIDENT_BUILD_DIR", ROOT / "build"))


def _env(extra=None):
    env = dict(os.environ)
    env.update({"FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def run_ranks(scenario, world, tmp_path, extra_env=None, timeout=240, expect_ok=True):
    """Starts `world` ranks as torchrun would and returns each rank's JSON (None if absent)."""
    from trident.torch import free_port
    port = free_port()
    procs = []
    for rank in range(world):
        env = _env({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **(extra_env or {})})
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, str(tmp_path)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if expect_ok:
        for rank, (p, out) in enumerate(zip(procs, outputs)):
            assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out[-6000:]}"
    results = []
    for rank in range(world):
        f = tmp_path / f"rank{rank}.json"
        results.append(json.loads(f.read_text()) if f.exists() else None)
    return results, outputs


@pytest.mark.parametrize("world", [2, 4])
def test_every_op_matches_gloo(world, tmp_path):
    results, _ = run_ranks("ops", world, tmp_path)
    # Every rank compared every op's result with gloo's, element for element.
    assert all(r["checked"] > 100 for r in results), results


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_losses_equal_gloo(world, tmp_path):
    results, _ = run_ranks("ddp", world, tmp_path, {"TEST_STEPS": "20"})
    for r in results:
        assert len(r["trident"]) == 20
        for step, (a, b) in enumerate(zip(r["trident"], r["gloo"])):
            assert _rel(a, b) <= 1e-6, f"rank {r['rank']} step {step}: trident {a}, gloo {b}"
    # The loss went down: the model really trained.
    assert results[0]["trident"][-1] < 0.5 * results[0]["trident"][0]


def test_fsdp2_losses_equal_gloo(tmp_path):
    from torch.distributed import fsdp
    if not hasattr(fsdp, "fully_shard"):
        pytest.skip(f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard")
    results, _ = run_ranks("fsdp2", 2, tmp_path, {"TEST_STEPS": "8"})
    for r in results:
        for step, (a, b) in enumerate(zip(r["trident"], r["gloo"])):
            assert _rel(a, b) <= 1e-6, f"rank {r['rank']} step {step}: trident {a}, gloo {b}"


def test_killed_rank_is_named(tmp_path):
    world = 3
    # A bare process group (no trident-run runtime watching the job) learns of a SIGKILLed
    # peer at the op's deadline at the latest (the shm transport sees no broken connection):
    # the error names the dead rank as the one that never arrived, and comes within the
    # deadline plus the store's grace, never a hang.
    timeout_s = 5
    results, outputs = run_ranks("kill", world, tmp_path, {"TEST_TIMEOUT_S": str(timeout_s)},
                                 expect_ok=False)
    for rank in range(world - 1):
        r = results[rank]
        assert r is not None, f"rank {rank} wrote nothing:\n{outputs[rank][-4000:]}"
        assert r["error_type"] == "DistBackendError", r
        assert f"allreduce on rank {rank} of 3" in r["error"], r["error"]
        assert "rank 2" in r["error"] or "had not arrived: 2" in r["error"], r["error"]
        assert r["seconds"] < timeout_s + 10, r


def test_deadline_names_absent_rank(tmp_path):
    world = 3
    results, outputs = run_ranks("deadline", world, tmp_path,
                                 {"TEST_TIMEOUT_S": "3", "TEST_VICTIM_SLEEP_S": "10"},
                                 expect_ok=False)
    for rank in range(world - 1):
        r = results[rank]
        assert r is not None, f"rank {rank} wrote nothing:\n{outputs[rank][-4000:]}"
        assert r["error_type"] == "DistBackendError", r
        assert "DEADLINE_EXCEEDED" in r["error"] or "timed out" in r["error"], r["error"]
        assert "had not arrived: 2" in r["error"], r["error"]


def test_under_trident_run(tmp_path):
    launcher = BUILD / "bin" / "trident-run"
    if not launcher.exists():
        pytest.skip(f"{launcher} is not built")
    from trident.torch import free_port
    env = _env({"MASTER_PORT": str(free_port())})
    p = subprocess.run([str(launcher), "--nproc", "2", "--", sys.executable, str(WORKER), "ops",
                        str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["world"] == 2 and r["checked"] > 100
