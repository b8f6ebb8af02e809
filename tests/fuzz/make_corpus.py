#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Regenerates the seed corpora in tests/fuzz/corpus/<target>/ (small valid inputs).

safetensors seeds are written by the reference `safetensors` package (so they are valid by
construction), config seeds come from tests/io/data/hf_config_esm2_t6_8M.json (written by HF
transformers 5.17) plus variants HF accepts, FASTA seeds from calibration/quickstart.fasta plus
the variants the reader documents (multi-line, CRLF, lowercase, literal <mask>, trailing '*').
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
    for d in sorted(CORPUS.iterdir()):
        print(d.name, sum(f.stat().st_size for f in d.iterdir()), "bytes,",
              len(list(d.iterdir())), "files")
