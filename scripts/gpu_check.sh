#!/usr/bin/env bash
# One command for the day a GPU is lent: our CUDA build against the CPU and
# PyTorch on the same GPU, printed as a Markdown table with the GPU's name.
#
#   scripts/gpu_check.sh prepare   # where cargo is (no GPU needed): build with
#                                  # CUDA (scripts/build_cuda.sh) and stage the
#                                  # binaries in .gpu/ (ignored by git)
#   scripts/gpu_check.sh           # on the GPU machine (e.g. the device tool,
#                                  # carry [".gpu"]): the checks and the table
#
# On the GPU machine, in one run (about 3-5 minutes on one H200; every step
# has its own timeout, the whole stays under 8 minutes):
# 1. reference losses and three AdamW steps of the tiny GPT-2 and LLaMA on
#    cuda:0 against the CPU and against transformers/torch (f32 within 1e-4,
#    bf16 within 2e-2): `.gpu/gpu_check testdata/models`;
# 2. `pretrain bench eval|train --device cuda --dtype f32|bf16` (default
#    GPT-2, [1, 1024]): tokens/s, and the GPU's peak memory in use (nvidia-smi
#    sampled every 0.2 s, minus what was in use before);
# 3. PyTorch (the machine's python3) on the same GPU, same work
#    (crates/model/benches/torch_bench.py --device cuda, bf16 by autocast);
#    its peak is torch.cuda.max_memory_reserved (plus nvidia-smi's, alike).
# Raw JSON lines go to $OUT (default target/gpu_check); the table to stdout.
# The device machines have no network and no Rust: the binaries are built
# here (`prepare`) and use the machine's CUDA 13 libraries (driver 580).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-target/gpu_check}"
ITERS="${ITERS:-5}"
PYTHON="${PYTHON:-python3}"
STAGE=.gpu

if [[ "${1:-}" == prepare ]]; then
    exports=$(MODE=build scripts/build_cuda.sh | tail -n 1)
    eval "$exports"
    T="${CARGO_TARGET_DIR:-target/cuda}"
    nice -n 19 cargo build --release --locked -p pretrain-model --features cuda --example gpu_check \
        --target-dir "$T"
    mkdir -p "$STAGE"
    cp "$T/release/pretrain" "$T/release/examples/gpu_check" "$STAGE/"
    strip "$STAGE/pretrain" "$STAGE/gpu_check" 2>/dev/null || true
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>"$(git rev-parse --git-common-dir)/info/exclude"
    du -sh "$STAGE"
    echo "staged in $STAGE: run scripts/gpu_check.sh on the GPU machine (carry .gpu)" >&2
    exit 0
fi

mkdir -p "$OUT"
[[ -x "$STAGE/pretrain" && -x "$STAGE/gpu_check" ]] || {
    echo "gpu_check: no $STAGE/pretrain and $STAGE/gpu_check; run 'scripts/gpu_check.sh prepare' first" >&2
    exit 1
}
# The CUDA 13 libraries the binaries link (cudart, cublas, cublasLt, curand, nvrtc):
# the system toolkit's, or the nvidia-* wheels beside the machine's PyTorch.
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $("$PYTHON" -c 'import glob, site; print(" ".join(sorted({p.rsplit("/", 1)[0] for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/lib*.so*", recursive=True)})))' 2>/dev/null); do
    [[ -d "$d" ]] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
echo "GPU: $GPU" >&2

used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1; }

# measure NAME CMD...: runs CMD (timeout 150 s), appends {"name", "result", "peak_smi_mib"} to bench.jsonl.
measure() {
    local name=$1
    shift
    local base peak=0 m pid json
    base=$(used_mib)
    timeout 150 "$@" >"$OUT/$name.out" 2>>"$OUT/stderr.log" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        m=$(used_mib)
        ((m > peak)) && peak=$m
        sleep 0.2
    done
    wait "$pid" || echo "gpu_check: $name failed (see $OUT/stderr.log)" >&2
    json=$(tail -n 1 "$OUT/$name.out")
    [[ -n "$json" ]] || json=null
    printf '{"name":"%s","result":%s,"peak_smi_mib":%s}\n' "$name" "$json" "$((peak - base))" >>"$OUT/bench.jsonl"
}

: >"$OUT/bench.jsonl"
echo "== parity" >&2
parity_rc=0
timeout 180 "$STAGE/gpu_check" testdata/models >"$OUT/parity.jsonl" 2>>"$OUT/stderr.log" || parity_rc=$?
for what in eval train; do
    for dtype in f32 bf16; do
        echo "== $what $dtype" >&2
        measure "ours-$what-$dtype" "$STAGE/pretrain" bench "$what" --device cuda --dtype "$dtype" --iters "$ITERS"
        measure "torch-$what-$dtype" "$PYTHON" crates/model/benches/torch_bench.py "$what" \
            --device cuda --dtype "$dtype" --iters "$ITERS"
    done
done

TORCH=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "?")
TRANSFORMERS=$("$PYTHON" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo "?")
export GPU TORCH TRANSFORMERS OUT ITERS parity_rc
"$PYTHON" - <<'PY'
import json, os

out = os.environ["OUT"]
parity = [json.loads(l) for l in open(f"{out}/parity.jsonl") if l.strip().startswith("{")]
bench = {r["name"]: r for r in (json.loads(l) for l in open(f"{out}/bench.jsonl") if l.strip())}
print(f"GPU: {os.environ['GPU']}; PyTorch {os.environ['TORCH']}, transformers "
      f"{os.environ['TRANSFORMERS']}; default GPT-2, batch [1, 1024], {os.environ['ITERS']} timed "
      f"iterations after a warm-up; peak GPU memory from nvidia-smi (sampled every 0.2 s, minus "
      f"the memory in use before), torch's own max_memory_reserved in brackets.\n")
print("| check | model | dtype | eval vs CPU | eval vs transformers | AdamW vs CPU | AdamW vs torch | tolerance | ok |")
print("|---|---|---|---|---|---|---|---|---|")
for p in parity:
    print(f"| parity | {p['model']} | {p['dtype']} | {p['eval_vs_cpu']:.2e} | {p['eval_vs_transformers']:.2e} "
          f"| {p['adamw_vs_cpu']:.2e} | {p['adamw_vs_torch']:.2e} | {p['tolerance']} | {p['ok']} |")
if not parity:
    print(f"| parity | - | - | failed to run (exit {os.environ['parity_rc']}) | | | | | |")
print()
print("| benchmark | dtype | ours tokens/s | ours peak GPU | PyTorch tokens/s | PyTorch peak GPU | ours / PyTorch |")
print("|---|---|---|---|---|---|---|")
for what, label in [("eval", "evaluation (forward + loss)"), ("train", "training step (forward, backward, AdamW)")]:
    for dtype in ["f32", "bf16"]:
        o, t = bench.get(f"ours-{what}-{dtype}", {}), bench.get(f"torch-{what}-{dtype}", {})
        ot = (o.get("result") or {}).get("tokens_per_s")
        tt = (t.get("result") or {}).get("tokens_per_s")
        tr = (t.get("result") or {}).get("peak_gpu_bytes")
        fmt = lambda x: "failed" if x is None else f"{x:.0f}"
        gib = lambda mib: "n/a" if mib is None else f"{mib / 1024:.2f} GiB"
        ratio = f"{ot / tt:.2f}x" if ot and tt else "n/a"
        torch_mem = gib(t.get("peak_smi_mib")) + (f" [{tr / 2**30:.2f} GiB]" if tr else "")
        print(f"| {label} | {dtype} | {fmt(ot)} | {gib(o.get('peak_smi_mib'))} | {fmt(tt)} | {torch_mem} | {ratio} |")
PY
exit "$parity_rc"
