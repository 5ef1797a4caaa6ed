#!/usr/bin/env bash
# Ours vs PyTorch / Hugging Face, side by side in one run on this machine,
# printed as the README's performance table (Markdown) with `lscpu`'s model
# name and the exact commands. Runs are interleaved (ours, theirs, ours,
# theirs, ...) so drifting load hits both sides alike.
#
#   scripts/bench_vs_torch.sh                 # 2 threads, 2 runs each
#   THREADS=4 RUNS=3 PYTHON=/path/to/venv/bin/python scripts/bench_vs_torch.sh
#   BENCHES=eval RUNS=6 scripts/bench_vs_torch.sh   # only some of eval, train, tokenize
#   DTYPES=bf16 BENCHES="eval train" scripts/bench_vs_torch.sh   # only the bf16 rows
#   KERNELS=onednn scripts/bench_vs_torch.sh   # only ours on oneDNN (default "auto onednn")
#
# Model rows run in each of $DTYPES (default "f32 bf16"): f32 against
# PyTorch fp32, bf16 (ours `--dtype bf16`: bf16 GEMMs with f32 accumulation,
# which needs AVX512-BF16) against PyTorch's `torch.autocast("cpu",
# dtype=torch.bfloat16)`. A CPU that refuses ours in bf16 skips its bf16 rows.
# Ours runs once for each of $KERNELS: `auto` (our kernels, their weight
# GEMMs on oneDNN where a measured race at start finds it faster) and
# `onednn` (every weight GEMM on oneDNN, libdnnl.so.2); a machine without
# libdnnl.so.2 skips the onednn rows. The path and oneDNN kernel each chose
# (the "compute path:" log line) are printed under the table.
#
# Each ratio is taken within a pair of adjacent runs (ours and theirs, their
# order alternating from run to run), so load that comes and goes on a shared
# machine hits both sides of a pair alike; the table gives the median pair
# and the range over pairs.
#
# Needs: cargo; Python with torch, transformers==4.34.1 (tokenizers 0.14)
# and pyarrow (`pip install torch transformers==4.34.1 pyarrow`).
# Raw JSON lines go to $OUT (default target/bench_vs_torch), the table to stdout.
set -euo pipefail

cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
RUNS="${RUNS:-2}"
ITERS="${ITERS:-3}"
BENCHES="${BENCHES:-eval train tokenize}"
DTYPES="${DTYPES:-f32 bf16}"
KERNELS="${KERNELS:-auto onednn}"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-target/bench_vs_torch}"
mkdir -p "$OUT"
RAW="$OUT/raw.jsonl"
: >"$RAW"

"$PYTHON" -c 'import torch, transformers, pyarrow' 2>/dev/null || {
    echo "bench_vs_torch: $PYTHON lacks torch, transformers or pyarrow" >&2
    exit 1
}
cargo build --release -p pretrain-cli >&2
BIN=target/release/pretrain

# run SIDE NAME THREADS DTYPE KERNELS CMD...: appends
# {"side","bench","threads","dtype","kernels","result"} to $RAW (and our
# last "compute path:" log line, the one for the options asked, to $OUT/paths.log).
run() {
    local side=$1 bench=$2 threads=$3 dtype=$4 kernels=$5
    shift 5
    echo "== $side $bench threads=$threads dtype=$dtype kernels=$kernels: $*" >&2
    local json
    json=$("$@" 2>"$OUT/last_stderr.log" | tail -n 1)
    cat "$OUT/last_stderr.log" >>"$OUT/stderr.log"
    if [[ $side == ours ]]; then
        local line
        line=$(grep -o 'compute path: .*' "$OUT/last_stderr.log" | tail -n 1 || true)
        echo "$bench $dtype --kernels $kernels: ${line:-compute path: (not logged)}" >>"$OUT/paths.log"
    fi
    printf '{"side":"%s","bench":"%s","threads":%s,"dtype":"%s","kernels":"%s","result":%s}\n' \
        "$side" "$bench" "$threads" "$dtype" "$kernels" "$json" >>"$RAW"
}
: >"$OUT/paths.log"

# Our bf16 needs AVX512-BF16: without it the bf16 rows are left out (with the reason).
echo '{"model_type": "gpt2", "n_embd": 32, "n_head": 4, "n_layer": 1, "vocab_size": 64}' \
    >"$OUT/bf16_check.json"
if [[ " $DTYPES " == *" bf16 "* ]] && ! "$BIN" bench eval --config "$OUT/bf16_check.json" \
    --seq_len 8 --iters 1 --dtype bf16 >/dev/null 2>"$OUT/bf16_check.log"; then
    echo "bench_vs_torch: no bf16 rows: $(tail -n 1 "$OUT/bf16_check.log")" >&2
    DTYPES="${DTYPES//bf16/}"
fi
# --kernels onednn needs libdnnl.so.2: without it the onednn rows are left out (with the reason).
if [[ " $KERNELS " == *" onednn "* ]] && ! "$BIN" bench eval --config "$OUT/bf16_check.json" \
    --seq_len 8 --iters 1 --kernels onednn >/dev/null 2>"$OUT/onednn_check.log"; then
    echo "bench_vs_torch: no onednn rows: $(tail -n 1 "$OUT/onednn_check.log")" >&2
    KERNELS="${KERNELS//onednn/}"
fi

# pair R FIRST SECOND: runs the two commands (arrays named FIRST and SECOND),
# the first one first in odd runs, second first in even runs.
pair() {
    local r=$1 a=$2 b=$3
    local -n a_cmd=$a b_cmd=$b
    if ((r % 2)); then
        run "${a_cmd[@]}"
        run "${b_cmd[@]}"
    else
        run "${b_cmd[@]}"
        run "${a_cmd[@]}"
    fi
}

for r in $(seq 1 "$RUNS"); do
    for what in eval train; do
        [[ " $BENCHES " == *" $what "* ]] || continue
        for dtype in $DTYPES; do
            for k in $KERNELS; do
                ours=(ours "$what" "$THREADS" "$dtype" "$k" "$BIN" bench "$what" --threads "$THREADS"
                    --iters "$ITERS" --dtype "$dtype" --kernels "$k")
                theirs=(torch "$what" "$THREADS" "$dtype" "$k" "$PYTHON" crates/model/benches/torch_bench.py
                    "$what" --threads "$THREADS" --iters "$ITERS" --dtype "$dtype")
                pair "$r" ours theirs
            done
        done
    done
    [[ " $BENCHES " == *" tokenize "* ]] || continue
    for t in 1 "$THREADS"; do
        ours=(ours-tok tokenize "$t" - - "$BIN" bench tokenize --threads "$t")
        theirs=(hf tokenize "$t" - - "$PYTHON" crates/data/benches/hf_tokenize_bench.py --threads "$t")
        pair "$r" ours theirs
    done
done

CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
TORCH=$("$PYTHON" -c 'import torch; print(torch.__version__)')
TRANSFORMERS=$("$PYTHON" -c 'import transformers; print(transformers.__version__)')
TOKENIZERS=$("$PYTHON" -c 'import tokenizers; print(tokenizers.__version__)')
FLAGS=$(grep -o -w -E 'avx512_bf16|amx_bf16|amx_tile|amx_int8' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ' || true)
PATHS="$OUT/paths.log"
export CPU TORCH TRANSFORMERS TOKENIZERS THREADS RUNS ITERS RAW PYTHON FLAGS BENCHES DTYPES KERNELS PATHS

"$PYTHON" - <<'PY'
import json, os

rows = [json.loads(l) for l in open(os.environ["RAW"]) if l.strip()]
def pick(side, bench, threads, key, dtype="-", kernels="-"):
    return [r["result"][key] for r in rows
            if r["side"].split("-")[0] == side and r["bench"] == bench and r["threads"] == threads
            and r.get("dtype", "-") == dtype and r.get("kernels", "-") == kernels]
def span(xs, fmt):
    if not xs:
        return "n/a"
    lo, hi = min(xs), max(xs)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"
def ratio(a, b):
    # Within pairs of adjacent runs (the i-th of each side): median (range).
    rs = sorted(x / y for x, y in zip(a, b))
    if not rs:
        return "n/a"
    mid = len(rs) // 2
    med = rs[mid] if len(rs) % 2 else (rs[mid - 1] + rs[mid]) / 2
    lo, hi = rs[0], rs[-1]
    rng = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"
    return f"{med:.2f}x ({rng})"
tps = lambda x: f"{x:.0f}"
gb = lambda x: f"{x / 1e9:.2f}"
mbs = lambda x: f"{x:.1f}"
t = int(os.environ["THREADS"])
flags = os.environ.get("FLAGS", "").strip() or "none"
print(f"CPU: {os.environ['CPU']} (lscpu; bf16/AMX flags in /proc/cpuinfo: {flags}), "
      f"{t} threads, release build; "
      f"PyTorch {os.environ['TORCH']}, transformers {os.environ['TRANSFORMERS']}, "
      f"tokenizers {os.environ['TOKENIZERS']}; interleaved runs per side: {os.environ['RUNS']}, "
      f"{os.environ['ITERS']} timed iterations after a warm-up.\n")
print("| benchmark | ours | PyTorch / Hugging Face | ratio: median pair (range) |")
print("|---|---|---|---|")
dlabel = {"f32": "fp32 (PyTorch fp32)",
          "bf16": "bf16: ours `--dtype bf16`, PyTorch `torch.autocast(\"cpu\", dtype=torch.bfloat16)`"}
for bench, label in [("eval", "evaluation, default GPT-2, batch `[1, 1024]`"),
                     ("train", "training step (forward, backward, AdamW), same model and batch")]:
    for dt in ["f32", "bf16"]:
      for k in os.environ["KERNELS"].split():
        o, p = pick("ours", bench, t, "tokens_per_s", dt, k), pick("torch", bench, t, "tokens_per_s", dt, k)
        if not o:
            continue
        orss = pick("ours", bench, t, "peak_rss_bytes", dt, k)
        prss = pick("torch", bench, t, "peak_rss_bytes", dt, k)
        print(f"| {label}, {dlabel[dt]}, ours `--kernels {k}`, {t} threads | {span(o, tps)} tokens/s, peak RSS {span(orss, gb)} GB "
              f"| {span(p, tps)} tokens/s, peak RSS {span(prss, gb)} GB | {ratio(o, p)} |")
for th in sorted({1, t}):
    o, h = pick("ours", "tokenize", th, "mb_per_s"), pick("hf", "tokenize", th, "mb_per_s")
    if not o:
        continue
    how = "`GPT2TokenizerFast`" if th == 1 else "`GPT2TokenizerFast.__call__` on a page: `encode_batch`"
    print(f"| tokenizing the sample corpus (dataset rule), {th} thread{'s' if th > 1 else ''} "
          f"| {span(o, mbs)} MB/s | {span(h, mbs)} MB/s ({how}) | {ratio(o, h)} |")
o1, o2 = pick("ours", "tokenize", 1, "mb_per_s"), pick("ours", "tokenize", t, "mb_per_s")
if t > 1 and o1 and o2:
    print(f"\nOur tokenizer, {t} threads vs 1: {ratio(o2, o1)}.")
for bench, label in [("eval", "evaluation"), ("train", "training")]:
  for k in os.environ["KERNELS"].split():
    o32, o16 = pick("ours", bench, t, "tokens_per_s", "f32", k), pick("ours", bench, t, "tokens_per_s", "bf16", k)
    p32, p16 = pick("torch", bench, t, "tokens_per_s", "f32", k), pick("torch", bench, t, "tokens_per_s", "bf16", k)
    if o32 and o16:
        print(f"\nbf16 vs fp32 within each run, {label}: ours `--kernels {k}` {ratio(o16, o32)}, "
              f"PyTorch (autocast vs fp32) {ratio(p16, p32)}.")
seen = []
for line in open(os.environ["PATHS"]):
    line = line.strip()
    if line and line not in seen:
        seen.append(line)
if seen:
    print("\nOur compute path per run (the `compute path:` log line: the path, and oneDNN's kernel):\n")
    for line in seen:
        print(f"- {line}")
py = os.environ["PYTHON"]
it = os.environ["ITERS"]
benches = os.environ["BENCHES"].split()
print("\n```\ncargo build --release -p pretrain-cli")
if "eval" in benches or "train" in benches:
    print(f"target/release/pretrain bench eval --threads {t} --iters {it} --dtype f32 --kernels auto   # and train; --dtype bf16; --kernels onednn")
    print(f"{py} crates/model/benches/torch_bench.py eval --threads {t} --iters {it} --dtype f32   # and train; and --dtype bf16 (autocast)")
if "tokenize" in benches:
    print(f"target/release/pretrain bench tokenize --threads 1      # and --threads {t}")
    print(f"{py} crates/data/benches/hf_tokenize_bench.py --threads 1   # and --threads {t}")
print("```")
print(f"(all of it: `scripts/bench_vs_torch.sh`, THREADS={t} RUNS={os.environ['RUNS']} "
      f"ITERS={it} BENCHES=\"{' '.join(benches)}\" DTYPES=\"{os.environ['DTYPES'].strip()}\" "
      f"KERNELS=\"{os.environ['KERNELS'].strip()}\")")
PY
