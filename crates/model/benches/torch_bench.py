#!/usr/bin/env python3
"""PyTorch side of the model benchmark: the same measurement as
`pretrain bench eval|train` (default GPT-2, random weights, batch [1, 1024],
fp32, CPU), printing the same JSON: {"tokens_per_s": f, "peak_rss_bytes": n}.
On a GPU (`--device cuda`, `--dtype bf16` for autocast to bf16 with f32
weights and AdamW state, as ours) it adds "peak_gpu_bytes" (torch's own
peak of reserved memory).

    python3 crates/model/benches/torch_bench.py eval --threads 2
    python3 crates/model/benches/torch_bench.py train --threads 2
    python3 crates/model/benches/torch_bench.py train --device cuda --dtype bf16

Needs torch and transformers (e.g. transformers 4.34.1, torch 2.x CPU).
"""
import argparse
import json
import resource
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["eval", "train"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    autocast = torch.autocast(
        "cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"
    )
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_head=10, n_layer=12, n_embd=760)).to(a.device)
    ids = torch.randint(0, 50257, (a.batch_size, a.seq_len), device=a.device)
    if a.what == "eval":
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                return model(ids, labels=ids).loss.item()
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)

        def step():
            with autocast:
                loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.item()

    step()  # warm-up, as the Rust benchmark
    start = time.perf_counter()
    for _ in range(a.iters):
        step()
    secs = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out = {"tokens_per_s": a.iters * a.batch_size * a.seq_len / secs, "peak_rss_bytes": peak}
    if cuda:
        out["peak_gpu_bytes"] = torch.cuda.max_memory_reserved()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
