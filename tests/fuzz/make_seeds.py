#!/usr/bin/env python3
"""Writes the seed corpora of the fuzzers (tests/fuzz/corpus/<target>/): small valid inputs
that reach every branch of the happy path, from which libFuzzer mutates. Run it again after a
format change: python3 tests/fuzz/make_seeds.py"""
import base64
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ALIGN = 4096


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


SIZES = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2, "i8": 1, "u8": 1, "i32": 4, "i64": 8}


def volume(shape):
    v = 1
    for d in shape:
        v *= d
    return v


def shard_file(tensors):
    """tensors: [(name, dtype, shape, bytes)] -> (file bytes, {name: (byte_offset, length)})"""
    # As the engine writes it: torch DCP's sharding info (every piece at offset zero here).
    info = {name: {"saved_offsets": [0] * len(shape)} for name, _, shape, _ in tensors}
    header, data, at = {"__metadata__": {"format": "pt", "rank": "0",
                                         "DCP_SHARDING_INFO": json.dumps(info),
                                         "DCP_VERSION": "1.0"}}, b"", {}
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype.upper(), "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    total = (8 + len(text) + ALIGN - 1) // ALIGN * ALIGN
    text += b" " * (total - 8 - len(text))
    prefix = struct.pack("<Q", len(text)) + text
    for name, dtype, shape, raw in tensors:
        begin, end = header[name]["data_offsets"]
        at[name] = (len(prefix) + begin, end - begin)
    return prefix + data, at


def checkpoint_seed(tensors, metadata=b"rng"):
    blob, at = shard_file(tensors)
    manifest = {
        "format": "trident-checkpoint", "version": 1, "step": 1, "epoch": 0, "world_size": 1,
        "layout": "dp1", "created_unix_ms": 0,
        "files": [{"name": "shard-r00000.safetensors", "rank": 0, "bytes": len(blob)}],
        "ranks": [{"rank": 0, "metadata": base64.b64encode(metadata).decode()}],
        "tensors": {},
    }
    for name, dtype, shape, raw in tensors:
        offset, length = at[name]
        manifest["tensors"][name] = {
            "dtype": dtype, "global_shape": shape,
            "shards": [{"file": "shard-r00000.safetensors", "rank": 0, "byte_offset": offset,
                        "byte_length": length, "offset": [0] * len(shape), "shape": shape,
                        "crc32c": crc32c(raw), "replica": 1}]}
    text = json.dumps(manifest, indent=1).encode()
    return struct.pack("<I", len(text)) + text + blob, blob


def tensor(name, dtype, shape):
    n = volume(shape) * SIZES[dtype]
    return (name, dtype, shape, bytes((i * 37 + len(name)) % 251 for i in range(n)))


def frame(body):
    return struct.pack("<I", len(body)) + body


def field(b):
    return struct.pack("<I", len(b)) + b


def store_seed():
    hello = frame(b"\x01" + struct.pack("<II", 0x53445254, 1) + field(b"fuzz-token"))
    reqs = [
        b"\x02" + field(b"job/a") + field(b"1"),                        # Set
        b"\x03" + field(b"job/a") + struct.pack("<q", 0),               # Get
        b"\x04" + field(b"job/missing"),                                # TryGet
        b"\x05" + field(b"job/n") + struct.pack("<q", 5),               # Add
        b"\x06" + field(b"job/a") + field(b"1") + field(b"2"),          # CompareSet
        b"\x07" + struct.pack("<I", 2) + field(b"job/a") + field(b"job/x") + struct.pack("<q", 0),
        b"\x08" + field(b"job/a"),                                      # Delete
        b"\x09" + field(b"job/"),                                       # ListPrefix
    ]
    return hello + b"".join(frame(r) for r in reqs)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    seeds = {
        "two_tensors": [tensor("w", "f32", [4, 3]), tensor("b", "i64", [5])],
        "scalar_bf16_empty": [tensor("s", "f32", []), tensor("h", "bf16", [2, 2, 2]),
                              tensor("e", "u8", [0, 4])],
        "rows": [tensor("emb", "i8", [6, 2]), tensor("norm", "f64", [3])],
    }
    for name, tensors in seeds.items():
        ckpt, shard = checkpoint_seed(tensors)
        write("checkpoint", name, ckpt)
        write("safetensors", name, shard)
    write("store_protocol", "all_ops", store_seed())
    write("store_protocol", "hello_only", store_seed()[:26])


if __name__ == "__main__":
    main()
