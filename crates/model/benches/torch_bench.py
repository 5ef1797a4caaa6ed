#!/usr/bin/env python3
"""PyTorch side of the model benchmark: the same measurement as
`pretrain bench eval|train` (default GPT-2, random weights, batch [1, 1024],
fp32, CPU), printing the same JSON: {"tokens_per_s": f, "peak_rss_bytes": n}.

    python3 crates/model/benches/torch_bench.py eval --threads 2
    python3 crates/model/benches/torch_bench.py train --threads 2

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
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_head=10, n_layer=12, n_embd=760))
    ids = torch.randint(0, 50257, (a.batch_size, a.seq_len))
    if a.what == "eval":
        model.eval()

        def step():
            with torch.no_grad():
                return model(ids, labels=ids).loss.item()
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)

        def step():
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
    print(json.dumps({"tokens_per_s": a.iters * a.batch_size * a.seq_len / secs, "peak_rss_bytes": peak}))


if __name__ == "__main__":
    main()
