#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""HF transformers eager baseline for tools/bench_embed.sh.

Embeds the sequences of a FASTA with EsmForMaskedLM (attn_implementation="eager", CPU, fp32)
exactly as turboesm-embed batches them (fair-esm: sort by length, fill up to
--max-tokens-per-batch padded tokens), computing last_hidden_state and the per-sequence mean,
and prints one line: "hf_eager records=R residues=N seconds=S residues_per_s=X".
Model loading is not timed (turboesm-embed's summary excludes it too); one warm-up batch runs
first.
"""
import argparse
import time

ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D",
             "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
             "<null_1>", "<mask>"]


def read_fasta(path):
    recs, name, seq = [], None, []
    for line in open(path):
        line = line.strip()
        if line.startswith(">"):
            if name is not None:
                recs.append((name, "".join(seq)))
            name, seq = line[1:].split()[0], []
        elif line:
            seq.append(line.upper())
    if name is not None:
        recs.append((name, "".join(seq)))
    return recs


def batches(lengths, max_tokens):
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, buf, max_len = [], [], 0
    for i in order:
        if buf and max(lengths[i], max_len) * (len(buf) + 1) > max_tokens:
            out.append(buf)
            buf, max_len = [], 0
        max_len = max(max_len, lengths[i])
        buf.append(i)
    if buf:
        out.append(buf)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--fasta", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--max-tokens-per-batch", type=int, default=4096)
    args = ap.parse_args()

    import torch
    from transformers import EsmForMaskedLM
    torch.set_num_threads(args.threads)
    model = EsmForMaskedLM.from_pretrained(args.model, attn_implementation="eager",
                                           dtype=torch.float32).eval()
    idx = {t: i for i, t in enumerate(ESM_VOCAB)}
    recs = read_fasta(args.fasta)
    toks = [[0] + [idx[c] for c in s] + [2] for _, s in recs]
    plan = batches([len(t) for t in toks], args.max_tokens_per_batch)

    def run(batch):
        T = max(len(toks[i]) for i in batch)
        ids = torch.full((len(batch), T), 1, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, : len(toks[i])] = torch.tensor(toks[i])
            mask[r, : len(toks[i])] = 1
        h = model.esm(ids, attention_mask=mask).last_hidden_state
        for r, i in enumerate(batch):
            L = len(toks[i]) - 2
            h[r, :L + 2].float().numpy().copy()
            h[r, 1:L + 1].mean(0).numpy().copy()

    with torch.inference_mode():
        run(plan[0])  # warm-up
        t0 = time.perf_counter()
        for b in plan:
            run(b)
        dt = time.perf_counter() - t0
    residues = sum(len(t) - 2 for t in toks)
    print(f"hf_eager records={len(toks)} residues={residues} seconds={dt:.3f} "
          f"residues_per_s={residues / dt:.1f}")


if __name__ == "__main__":
    main()
