#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Regenerates the seed corpora in tests/fuzz/corpus/<target>/ (small valid inputs).

safetensors seeds are written by the reference `safetensors` package (so they are valid by
construction), config seeds come from tests/io/data/hf_config_esm2_t6_8M.json (written by HF
transformers 5.17) plus variants HF accepts, FASTA seeds from calibration/quickstart.fasta plus
the variants the reader documents (multi-line, CRLF, lowercase, literal <mask>, trailing '*'),
calibration-checkpoint seeds are small valid checkpoints in the layout of
include/turboesm/calibration/checkpoint.h (1-2 layers, head dim 8, each mode combination once);
two full-size tiny-preset checkpoints written by turboesm-calibrate sit next to them
(tiny_*.turbo.safetensors, see tests/fuzz/corpus/fuzz_checkpoint/README.md).
Usage: $TURBOESM_PY tests/fuzz/make_corpus.py   (needs numpy + safetensors; idempotent)
"""
import json
import pathlib

import numpy as np
from safetensors.numpy import save

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"


def put(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def safetensors_seeds() -> None:
    rng = np.random.default_rng(0)
    put("fuzz_safetensors", "two_tensors.safetensors",
        save({"a": np.arange(2, dtype=np.float32),
              "b": rng.standard_normal((2, 3)).astype(np.float16)}))
    put("fuzz_safetensors", "dtypes_scalar_empty.safetensors",
        save({"i64": np.array([1, -2], dtype=np.int64), "i32": np.array(7, dtype=np.int32),
              "u8": np.arange(3, dtype=np.uint8), "empty": np.zeros((0, 4), dtype=np.float32)}))
    put("fuzz_safetensors", "metadata.safetensors",
        save({"layers.0.k.rotation": np.eye(2, dtype=np.float32)[None]},
             metadata={"turboesm": json.dumps({"format_version": 1, "bits_k": 3})}))
    put("fuzz_safetensors", "esm_names.safetensors",
        save({"esm.embeddings.word_embeddings.weight":
              rng.standard_normal((4, 2)).astype(np.float32),
              "esm.encoder.layer.0.attention.self.query.bias": np.zeros(2, dtype=np.float32),
              "lm_head.bias": np.zeros(4, dtype=np.float16)}))
    put("fuzz_safetensors", "empty.safetensors", save({}))
    # BF16 has no numpy dtype: header by hand, in the format's exact layout (8-byte LE length,
    # JSON padded with spaces to a multiple of 8, data).
    header = b'{"x":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
    header += b" " * (-len(header) % 8)
    put("fuzz_safetensors", "bf16.safetensors",
        len(header).to_bytes(8, "little") + header + b"\x80\x3f\x00\x40")


def config_seeds() -> None:
    hf = (ROOT / "tests" / "io" / "data" / "hf_config_esm2_t6_8M.json").read_bytes()
    put("fuzz_config", "hf_esm2_t6_8M.json", hf)
    cfg = json.loads(hf)
    tiny = dict(cfg, hidden_size=128, num_attention_heads=4, num_hidden_layers=2,
                intermediate_size=256)
    put("fuzz_config", "tiny.json", json.dumps(tiny, indent=1).encode())
    # transformers 4.x spelling, float-valued integers, minimal required keys.
    v4 = {k: v for k, v in cfg.items() if k != "transformers_version"}
    v4["torch_dtype"] = "float16"
    v4["hidden_size"] = 320.0
    put("fuzz_config", "v4_float_ints.json", json.dumps(v4).encode())
    minimal = {"vocab_size": 33, "hidden_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 128,
               "position_embedding_type": "rotary"}
    put("fuzz_config", "minimal.json", json.dumps(minimal).encode())


def checkpoint(layers, heads, d, bits_k, bits_v, rotation, svd_scales, norm, center, qjl,
               qjl_dim=0, codebook="data", seed=0):
    rng = np.random.default_rng(seed)
    meta = {"format_version": 1, "bits_k": bits_k, "bits_v": bits_v, "rotation": rotation,
            "svd_scales": svd_scales, "norm": norm, "centering": center, "qjl": qjl,
            "qjl_dim": qjl_dim, "codebook": codebook, "seed": seed, "num_layers": layers,
            "num_heads": heads, "head_dim": d, "calibration_sha256": "0" * 64,
            "calibration_tokens": 64, "calibration_records": 2, "tool_version": "turboesm 0.1.0",
            "model_fingerprint": "f" * 64,
            "model_config": json.dumps({"hidden_size": heads * d}, separators=(",", ":")),
            "k_rel_mse": [0.05] * layers, "v_rel_mse": [0.06] * layers}
    tensors = {}
    for layer in range(layers):
        for kv, bits in (("k", bits_k), ("v", bits_v)):
            p = f"layers.{layer}.{kv}."
            q = np.stack([np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(heads)])
            tensors[p + "rotation"] = q.astype(np.float32)
            cb = np.sort(rng.standard_normal((heads, 2 ** bits)), axis=1)
            tensors[p + "codebook"] = cb.astype(np.float32)
            if rotation == "svd" and svd_scales:
                tensors[p + "scale"] = rng.uniform(0.5, 2.0, (heads, d)).astype(np.float32)
            if center:
                tensors[p + "mean"] = (0.1 * rng.standard_normal((heads, d))).astype(np.float32)
            if kv == "k" and qjl == "sign":
                tensors[p + "qjl_scale"] = rng.uniform(0.0, 0.1, heads).astype(np.float32)
            if kv == "k" and qjl == "prod":
                m = qjl_dim or d
                tensors[p + "qjl_projection"] = rng.standard_normal((heads, m, d)).astype(
                    np.float32)
    return save(tensors, metadata={"turboesm": json.dumps(meta, separators=(",", ":"))})


def checkpoint_seeds() -> None:
    t = "fuzz_checkpoint"
    put(t, "svd_scales_sign.turbo.safetensors",
        checkpoint(1, 1, 8, 3, 3, "svd", True, "none", True, "sign"))
    put(t, "random_token_prod.turbo.safetensors",
        checkpoint(1, 2, 8, 2, 4, "random", False, "token", False, "prod", qjl_dim=16, seed=1))
    put(t, "hadamard_analytic.turbo.safetensors",
        checkpoint(2, 1, 8, 1, 2, "hadamard", False, "token", False, "none",
                   codebook="analytic", seed=2))
    put(t, "identity_centered.turbo.safetensors",
        checkpoint(1, 1, 16, 4, 3, "identity", False, "none", True, "none", seed=3))


def fasta_seeds() -> None:
    put("fuzz_fasta", "quickstart.fasta", (ROOT / "calibration" / "quickstart.fasta").read_bytes())
    put("fuzz_fasta", "variants.fasta",
        b"\n>sp|P69905|HBA_HUMAN/1-142 Hemoglobin subunit alpha  \r\n"
        b"mvlspadktn\r\nVKAAwgkv*\r\n\r\n>seq2\n  M K <mask> V  \nXBUZO.-<unk>\n")
    put("fuzz_fasta", "one_residue.fasta", b">x\nA")


if __name__ == "__main__":
    safetensors_seeds()
    config_seeds()
    fasta_seeds()
    checkpoint_seeds()
    for d in sorted(CORPUS.iterdir()):
        print(d.name, sum(f.stat().st_size for f in d.iterdir()), "bytes,",
              len(list(d.iterdir())), "files")
