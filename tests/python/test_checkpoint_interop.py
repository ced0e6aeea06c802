"""Trident checkpoints read by other projects' readers, the real clients from PyPI.

A checkpoint saved by Trident's engine at tp2 x dp2 (ckpt_interop_writer: four ranks, every
tensor cut into real slices: by rows or columns over tp, halves written by the dp replicas,
ZeRO-like over all four ranks, scalars) is loaded:

- shard by shard with ``safetensors.torch.load_file``: each piece equals its slice of the
  tensor the writer saved, at the offset its ``DCP_SHARDING_INFO`` gives, and the pieces cover
  every element once;
- whole with torch's own distributed checkpoint reader (``torch.distributed.checkpoint.load``
  with ``HuggingFaceStorageReader``, no process group);
- from ``trident-ckpt export``'s consolidated copy, with ``load_file`` and through its
  ``model.safetensors.index.json``, and with torch's reader again.

Values are compared byte for byte with what the writer wrote, independently of the checkpoint,
to expected/<name>.bin. Needs torch and safetensors (skipped with the reason otherwise) and the
built ckpt_interop_writer and trident-ckpt (in $TRIDENT_BIN_DIR, else build/bin of this
repository; skipped with the reason when absent).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
safetensors_torch = pytest.importorskip(
    "safetensors.torch", reason="safetensors is not installed (pip install safetensors)"
)
from safetensors import safe_open  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TRIDENT_BIN_DIR", REPO / "build" / "bin"))

DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I32": torch.int32,
    "I64": torch.int64,
}


def tool(name):
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{path} is not built (ninja -C build {name}; or set TRIDENT_BIN_DIR)")
    return str(path)


def raw(t):
    """The bytes of a tensor (bit patterns: NaNs compare equal to themselves)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("interop")
    run = subprocess.run([tool("ckpt_interop_writer"), str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    spec = json.loads((out / "expected.json").read_text())
    expected = {}
    for name, t in spec["tensors"].items():
        data = bytearray((out / "expected" / f"{name}.bin").read_bytes())
        dtype = DTYPES[t["dtype"]]
        expected[name] = torch.frombuffer(data, dtype=dtype).reshape(t["shape"]) if data else \
            torch.empty(t["shape"], dtype=dtype)
    step_dir = out / "ckpt" / f"step-{spec['step']:09d}"
    assert step_dir.is_dir(), f"no {step_dir}"
    return {"out": out, "dir": out / "ckpt", "step": spec["step"], "step_dir": step_dir,
            "expected": expected}


def empty_like_expected(expected):
    return {name: torch.zeros(t.shape, dtype=t.dtype) for name, t in expected.items()}


def test_each_shard_loads_with_safetensors_and_holds_its_slice(written):
    expected = written["expected"]
    shards = sorted(written["step_dir"].glob("*.safetensors"))
    assert len(shards) == 4, shards
    covered = {name: 0 for name in expected}
    sliced = 0
    for path in shards:
        pieces = safetensors_torch.load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        assert metadata["format"] == "pt"
        info = json.loads(metadata["DCP_SHARDING_INFO"])
        assert set(info) == set(pieces), path
        for name, piece in pieces.items():
            whole = expected[name]
            assert piece.dtype == whole.dtype, name
            offsets = info[name]["saved_offsets"]
            assert len(offsets) == whole.dim(), name
            index = tuple(slice(o, o + n) for o, n in zip(offsets, piece.shape))
            assert raw(piece) == raw(whole[index]), f"{name} in {path.name} at {offsets}"
            covered[name] += piece.numel()
            if tuple(piece.shape) != tuple(whole.shape):
                sliced += 1
    # Every element stored exactly once (the pieces tile; DCP's reader does not check this).
    assert covered == {name: max(t.numel(), 1) for name, t in expected.items()}
    assert sliced >= 20, "the shards should hold real slices of the tensors"


def test_index_maps_every_tensor_to_a_file_that_holds_it(written):
    index = json.loads((written["step_dir"] / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(written["expected"])
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in written["expected"].values())
    for name, file in index["weight_map"].items():
        with safe_open(str(written["step_dir"] / file), framework="pt") as f:
            assert name in f.keys(), (name, file)


def test_torch_distributed_checkpoint_reader_loads_the_whole_state(written):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    reader_cls = getattr(dcp, "HuggingFaceStorageReader", None)
    if reader_cls is None:
        pytest.skip(f"torch {torch.__version__} has no HuggingFaceStorageReader")
    expected = written["expected"]
    state = empty_like_expected(expected)
    dcp.load(state, storage_reader=reader_cls(str(written["step_dir"])), no_dist=True)
    for name, t in expected.items():
        assert state[name].shape == t.shape, name
        assert raw(state[name]) == raw(t), name
    # The metadata torch builds from DCP_SHARDING_INFO: each tensor's global size and chunks.
    md = reader_cls(str(written["step_dir"])).read_metadata()
    assert md.state_dict_metadata["layers.0.attn.qkv.weight"].size == torch.Size([12, 8])
    assert len(md.state_dict_metadata["layers.0.attn.qkv.weight"].chunks) == 4
    assert md.state_dict_metadata["embed.weight"].size == torch.Size([16, 4])


def test_a_subset_loads_with_torchs_reader(written):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    reader_cls = getattr(dcp, "HuggingFaceStorageReader", None)
    if reader_cls is None:
        pytest.skip(f"torch {torch.__version__} has no HuggingFaceStorageReader")
    want = {"layers.0.mlp.w2.weight": torch.zeros(8, 10, dtype=torch.bfloat16)}
    dcp.load(want, storage_reader=reader_cls(str(written["step_dir"])), no_dist=True)
    assert raw(want["layers.0.mlp.w2.weight"]) == raw(written["expected"]["layers.0.mlp.w2.weight"])


def test_export_is_whole_tensors_loadable_by_load_file_and_its_index(written, tmp_path):
    out = tmp_path / "export"
    # 1 KiB per file: the tensors spread over several files, as a large model's would.
    run = subprocess.run([tool("trident-ckpt"), "export", str(written["dir"]), "latest", str(out),
                          "--max-file-size", "1K"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"exported step {written['step']}: 11 tensors" in run.stdout
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 2 and all(f.startswith("model-") for f in files), files
    assert sorted(p.name for p in out.glob("*.safetensors")) == files
    # As Hugging Face loaders do: every file named by the index, merged.
    loaded = {}
    for file in files:
        with safe_open(str(out / file), framework="pt") as f:
            assert f.metadata()["format"] == "pt"
        part = safetensors_torch.load_file(str(out / file))
        assert not set(part) & set(loaded)
        for name in part:
            assert index["weight_map"][name] == file
        loaded.update(part)
    expected = written["expected"]
    assert set(loaded) == set(expected)
    for name, t in expected.items():
        assert loaded[name].shape == t.shape and loaded[name].dtype == t.dtype, name
        assert raw(loaded[name]) == raw(t), name
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in expected.values())

    dcp = pytest.importorskip("torch.distributed.checkpoint")
    reader_cls = getattr(dcp, "HuggingFaceStorageReader", None)
    if reader_cls is not None:
        state = empty_like_expected(expected)
        dcp.load(state, storage_reader=reader_cls(str(out)), no_dist=True)
        for name, t in expected.items():
            assert raw(state[name]) == raw(t), name
