#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Builds the broken inputs of tests/programs/bad_inputs.tsv from a good model directory.

Usage: make_bad_inputs.py GOOD_MODEL_DIR OUT_DIR   (python3 standard library only)
       make_bad_inputs.py --break-rotation CKPT OUT   (a checkpoint whose first K rotation is
                                                       no longer orthogonal: one entry x1.01)

Writes into OUT_DIR, each a copy of GOOD_MODEL_DIR with one defect (names are the table's):
  m_truncated/      model.safetensors cut 64 bytes short
  m_wrong_dtype/    one tensor's header dtype F32 -> I32 (same byte size, so only the dtype is wrong)
  m_misshaped/      one tensor's header shape transposed (same element count)
  m_nan/            one weight element overwritten with NaN
  m_no_weights/     config.json only
  m_pickle_only/    config.json + pytorch_model.bin (fair-esm / old HF pickle)
  m_config_overflow/ config.json with a number that overflows a double (1e999)
  m_not_rotary/     config.json with position_embedding_type "absolute" (ESM-1b style)
and FASTA files: good.fasta, empty.fasta, junk.fasta (binary bytes), dup.fasta, unknown.fasta,
long50k.fasta (one sequence of 50,000 residues).
The tensors it breaks are printed as NAME=VALUE lines, which run_bad_inputs.sh turns into
placeholders ({nan_tensor}, ...), so the table does not hard-code layer names.
"""
import json
import math
import pathlib
import shutil
import struct
import sys

# Tensors to break, in order of preference (HF names with and without the "esm." prefix).
NAN_TENSOR = "encoder.layer.1.attention.self.key.weight"
DTYPE_TENSOR = "encoder.layer.0.attention.self.query.bias"
SHAPE_TENSOR = "encoder.layer.0.intermediate.dense.weight"  # [intermediate, hidden], not square


def read_st(path: pathlib.Path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path: pathlib.Path, header: dict, data: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format's alignment padding
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def find(header: dict, base: str) -> str:
    for name in ("esm." + base, base):
        if name in header:
            return name
    sys.exit(f"make_bad_inputs.py: tensor '{base}' not in the good model (names changed?)")


def copy_model(good: pathlib.Path, out: pathlib.Path, name: str, weights=True) -> pathlib.Path:
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    shutil.copy(good / "config.json", d / "config.json")
    if weights:
        shutil.copy(good / "model.safetensors", d / "model.safetensors")
    return d


def main() -> None:
    good, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    header, data = read_st(good / "model.safetensors")

    d = copy_model(good, out, "m_truncated")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[:-64])

    d = copy_model(good, out, "m_wrong_dtype")
    h = json.loads(json.dumps(header))
    dtype_name = find(h, DTYPE_TENSOR)
    assert h[dtype_name]["dtype"] == "F32", "the good model must be fp32"
    h[dtype_name]["dtype"] = "I32"
    write_st(d / "model.safetensors", h, data)

    d = copy_model(good, out, "m_misshaped")
    h = json.loads(json.dumps(header))
    shape_name = find(h, SHAPE_TENSOR)
    shape = h[shape_name]["shape"]
    h[shape_name]["shape"] = shape[::-1]
    write_st(d / "model.safetensors", h, data)

    d = copy_model(good, out, "m_nan")
    nan_name = find(header, NAN_TENSOR)
    begin = header[nan_name]["data_offsets"][0]
    patched = bytearray(data)
    patched[begin + 4:begin + 8] = struct.pack("<f", math.nan)  # element 1
    write_st(d / "model.safetensors", header, bytes(patched))

    copy_model(good, out, "m_no_weights", weights=False)
    d = copy_model(good, out, "m_pickle_only", weights=False)
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not a real pickle")

    cfg_text = (good / "config.json").read_text()
    cfg = json.loads(cfg_text)
    d = copy_model(good, out, "m_config_overflow")
    (d / "config.json").write_text(cfg_text.replace(
        f'"hidden_size": {cfg["hidden_size"]}', '"hidden_size": 1e999', 1))
    assert "1e999" in (d / "config.json").read_text(), "config.json layout changed"
    d = copy_model(good, out, "m_not_rotary")
    (d / "config.json").write_text(json.dumps(dict(cfg, position_embedding_type="absolute")))

    (out / "good.fasta").write_text(">p1 first\nMKTAYIAKQRQISFVKSHFSRQ\n>p2\nGLSDGEWQQVLNVWGKVEAD\n")
    (out / "empty.fasta").write_bytes(b"")
    (out / "junk.fasta").write_bytes(b">x\nMKV\x00\x01\x02\x7fELF\xff\xfe junk\n")
    (out / "dup.fasta").write_text(">p1\nMKTAYIAK\n>p2\nGLSDGEWQ\n>p1 again\nMKV\n")
    (out / "unknown.fasta").write_text(">p1\nMKTAYIAK\n>bad_one\nMKV@TAY\n")
    (out / "long50k.fasta").write_text(">long\n" + "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ" * 1515
                                       + "MKTAY\n")
    assert len((out / "long50k.fasta").read_text().split("\n")[1]) == 50000

    print(f"nan_tensor={nan_name}")
    print(f"dtype_tensor={dtype_name}")
    print(f"shape_tensor={shape_name}")
    print(f"shape_stored={shape[::-1]}")  # "[128, 256]", as the programs print shapes
    print(f"shape_expected={shape}")


def break_rotation(src: pathlib.Path, dst: pathlib.Path) -> None:
    header, data = read_st(src)
    name = "layers.0.k.rotation"
    assert name in header and header[name]["dtype"] == "F32", f"{src}: no F32 '{name}'"
    begin = header[name]["data_offsets"][0]
    patched = bytearray(data)
    (v,) = struct.unpack("<f", patched[begin:begin + 4])
    patched[begin:begin + 4] = struct.pack("<f", v * 1.01 + 0.01)  # +0.01: v may be 0
    write_st(dst, header, bytes(patched))
    print(f"rotation_tensor={name}")


if __name__ == "__main__":
    if sys.argv[1] == "--break-rotation":
        break_rotation(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
    else:
        main()
