#!/usr/bin/env python3
"""Hugging Face side of the tokenizer benchmark: the same measurement as
`pretrain bench tokenize` (every document of the sample corpus, a page of
100 documents at a time, `<|endoftext|>` as the special id), with the
original's tokenizer, `GPT2TokenizerFast` built from the reference files.
Prints the same JSON: {"mb_per_s": f, "tokens_per_s": f, "threads": n}.

    python3 crates/data/benches/hf_tokenize_bench.py --threads 1
    python3 crates/data/benches/hf_tokenize_bench.py --threads 2   # encode_batch

Needs `transformers` (4.34.1 pins tokenizers 0.14) and `pyarrow`.
"""
import argparse
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
from transformers import GPT2TokenizerFast

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "corpus"
REF = HERE.parents[2] / "testdata" / "tokenizer" / "gpt2"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    # tokenizers reads this once, when it first parallelises.
    os.environ["RAYON_RS_NUM_CPUS"] = str(a.threads)
    docs = []
    for f in sorted(CORPUS.glob("*.parquet")):
        docs.extend(pq.read_table(f, columns=["content"]).column("content").to_pylist())
    tok = GPT2TokenizerFast(str(REF / "vocab.json"), str(REF / "merges.txt"), model_max_length=1024)
    nbytes = sum(len(d.encode()) for d in docs)
    tokens = 0
    start = time.perf_counter()
    for _ in range(a.repeat):
        for i in range(0, len(docs), 100):
            page = docs[i : i + 100]
            if a.threads == 1:
                ids = [tok(d, truncation=True).input_ids + [50256] for d in page]
            else:
                ids = [x + [50256] for x in tok(page, truncation=True).input_ids]  # encode_batch: all cores
            tokens += sum(len(x) for x in ids)
    secs = time.perf_counter() - start
    print(json.dumps({
        "mb_per_s": a.repeat * nbytes / secs / 1e6,
        "tokens_per_s": tokens / secs,
        "threads": a.threads,
        "documents": len(docs),
        "bytes": nbytes,
    }))


if __name__ == "__main__":
    main()
