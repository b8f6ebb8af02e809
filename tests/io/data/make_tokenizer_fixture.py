#!/usr/bin/env python3
"""Writes tokenizer_fixture.json: HF EsmTokenizer ids for a set of sequence strings.

Run with the project venv: `$TURBOESM_PY tests/io/data/make_tokenizer_fixture.py`.
EsmTokenizer is built from a temporary vocab.txt holding transformers' own ESM-2 vocabulary
(get_default_vocab_list), so no download is needed. Only strings on which TurboESM and HF agree by
design are listed (uppercase residues, literal special tokens, whitespace); lowercase input and
unknown characters differ on purpose (see tokenizer.h) and are tested separately.
"""
import json
import os
import tempfile

import transformers
from transformers import EsmTokenizer
from transformers.models.esm.configuration_esm import get_default_vocab_list

STRINGS = [
    "",
    "A",
    "MKTAYIAKQRQISFVKSHFSRQ",
    "LAGVSERTIDPKQNFYMHWCXBUZO.-",
    "XBUZO",
    "MK<mask>AY",
    "<mask>",
    "<mask><mask>A<mask>",
    "A<unk>C",
    "A<null_1>C<pad>D",
    "<cls>MKV<eos>",
    "M K T\tA",
    "-.-A",
    "VLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKL"
    "RVDPVNFKLLSHCLLVTLAAHLPAEFTPAVHASLDKFLASVSTVLTSKYR",
]


def main():
    vocab = get_default_vocab_list()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vocab.txt")
        with open(path, "w") as f:
            f.write("\n".join(vocab) + "\n")
        tok = EsmTokenizer(path)
        cases = [{"text": s, "ids": tok(s)["input_ids"]} for s in STRINGS]
    out = {
        "generator": "tests/io/data/make_tokenizer_fixture.py",
        "transformers_version": transformers.__version__,
        "vocab": list(vocab),
        "cases": cases,
    }
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "tokenizer_fixture.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
