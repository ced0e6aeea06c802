"""Recovery in PyTorch: examples/torch_trainer under ``trident-run --nproc 4 --spares 1``.

Rank 2 sends itself SIGKILL (or SIGSTOP) before step 6, or before the first step after that
once a checkpoint is committed (the steps take milliseconds, a commit longer; the save of
step 8 waits for step 4's commit, so the fault comes by step 9 at the latest); the spare
takes its slot, the process group is rebuilt for epoch 2, the spare's model and AdamW state
come from a peer's memory (or that checkpoint, when the replica's exchange had not ended),
the survivors roll back to the last committed step, and every loss the job
prints, from the resumed step on and before, equals the unbroken run's for that step, bit
for bit (same seeds, same world size). Needs torch, the trident package and
build/bin/trident-run (skipped with the reason otherwise).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trident.torch")

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "torch_trainer" / "train.py"
BIN = Path(os.environ.get("TRIDENT_BIN_DIR", Path(os.environ.get("TRIDENT_BUILD_DIR", ROOT / "build")) / "bin"))
STEPS = 12
STEP_LINE = re.compile(r"^\[(rank \d+|spare s\d+)\] step (\d+) loss (\S+)$", re.M)


def run_trainer(tmp_path, *, spares=0, fault="", extra_env=None, timeout=150):
    launcher = BIN / "trident-run"
    if not launcher.exists():
        pytest.skip(f"{launcher} is not built (ninja -C build trident-run)")
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update({"FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    cmd = [str(launcher), "--nproc", "4", "--spares", str(spares), "--",
           sys.executable, str(TRAIN), "--steps", str(STEPS), "--ckpt-dir",
           str(tmp_path / "ckpt"), "--ckpt-every", "4", "--timeout", "60"]
    if fault:
        cmd += ["--fault", fault]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"trident-run exited {p.returncode}:\n{p.stdout[-8000:]}"
    return p.stdout


def losses(output):
    """step -> the set of losses printed for it (by any rank, in any epoch)."""
    out = {}
    for _, step, loss in STEP_LINE.findall(output):
        out.setdefault(int(step), set()).add(float(loss))
    return out


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    output = run_trainer(tmp_path_factory.mktemp("unbroken"))
    by_step = losses(output)
    assert sorted(by_step) == list(range(1, STEPS + 1)), output[-4000:]
    for step, values in by_step.items():
        assert len(values) == 1, f"ranks disagree on step {step}'s loss: {values}"
    return {step: values.pop() for step, values in by_step.items()}


def check_recovered(output, unbroken, signal_name):
    fault = re.search(rf"fault: rank 2 sends itself {signal_name} before step (\d+)", output)
    assert fault, output[-8000:]
    fault_step = int(fault.group(1))
    assert fault_step >= 6
    rec = re.search(r"^\[rank 0\] recovery epoch=2 dead_rank=2 cause=(\S+) source=(\S+) "
                    r"resume_step=(\d+) steps_redone=(\d+)", output, re.M)
    assert rec, f"no recovery line:\n{output[-8000:]}"
    assert rec.group(1) == signal_name
    # The save of step 4 committed before the fault (the trainer waits for it): the spare's
    # state comes from its replica in a buddy's memory (or from the checkpoint when the
    # replica's exchange had not finished), and the survivors roll back to step 4.
    assert rec.group(2) in ("peer", "checkpoint"), rec.group(0)
    resume = int(rec.group(3))
    assert resume in (5, 9) and resume <= fault_step, rec.group(0)
    assert int(rec.group(4)) == fault_step - resume, rec.group(0)
    assert "trident-run: epoch 2: spare s0 takes rank 2" in output
    assert f"[rank 0] done: {STEPS} steps, epoch 2" in output
    # Every loss printed, before the failure, redone, and by the promoted spare, is the
    # unbroken run's for its step.
    seen = losses(output)
    assert sorted(seen) == list(range(1, STEPS + 1))
    for step, values in seen.items():
        assert values == {unbroken[step]}, f"step {step}: {values} != {unbroken[step]}"
    # After the recovery, rank 0 and the promoted spare ran steps 5..9.
    after = output[rec.end():]
    for who in ("rank 0", "spare s0"):
        steps = [int(s) for w, s, _ in STEP_LINE.findall(after) if w == who]
        assert steps == list(range(resume, STEPS + 1)), f"{who} after the recovery: {steps}"


def test_sigkill_rank_is_replaced_by_the_spare_and_losses_match(tmp_path, unbroken):
    output = run_trainer(tmp_path, spares=1, fault="2:6:KILL")
    assert "trident-run: rank 2 killed by signal 9 (SIGKILL)" in output
    check_recovered(output, unbroken, "SIGKILL")


def test_sigstop_rank_is_replaced_by_the_spare_and_losses_match(tmp_path, unbroken):
    output = run_trainer(tmp_path, spares=1, fault="2:6:STOP",
                         extra_env={"TRIDENT_HEARTBEAT_TIMEOUT_MS": "2000"})
    assert "its process is stopped (SIGSTOP?); killed" in output
    check_recovered(output, unbroken, "SIGSTOP")
