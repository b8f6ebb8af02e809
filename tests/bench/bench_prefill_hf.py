#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""HF transformers prefill baseline for bench_model_cuda (issue 6): the same ESM-2 config,
random-init, FP16 on the GPU, `attn_implementation="eager"` (and "sdpa" for reference), one
sequence of <cls> + N residues + <eos>. CUDA events around each forward, warm-ups first, median.

    python3 bench_prefill_hf.py --config cfg.json --residues 1024 [--json out.json]

`cfg.json` comes from `bench_model_cuda config esm2_t33_650M`. The base model (EsmModel without
pooler) is timed, as bench_model_cuda's forward returns the last hidden states without logits.
"""
import argparse
import json
import statistics

import torch
import transformers


def time_forward(model, ids, warmup, iters):
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    ms = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            start.record()
            model(input_ids=ids)
            stop.record()
            stop.synchronize()
            if i >= warmup:
                ms.append(start.elapsed_time(stop))
    return statistics.median(ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--residues", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    with open(a.config) as f:
        cfg = transformers.EsmConfig(**json.load(f))
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 24, (1, a.residues + 2), generator=g)
    ids[0, 0], ids[0, -1] = 0, 2
    ids = ids.cuda()
    out = {"gpu": torch.cuda.get_device_name(0), "residues": a.residues,
           "transformers": transformers.__version__, "torch": torch.__version__}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = transformers.EsmModel._from_config(cfg, attn_implementation=impl,
                                                       add_pooling_layer=False)
        model = model.half().eval()
        ms = time_forward(model, ids, a.warmup, a.iters)
        out[f"hf_{impl}_ms"] = ms
        print(f"HF transformers {transformers.__version__} EsmModel {impl} fp16: {ms:.3f} ms")
        del model
        torch.cuda.empty_cache()
    print("JSON " + json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
