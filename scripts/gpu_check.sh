#!/usr/bin/env bash
# One command for the day a GPU is lent: our CUDA build against the CPU and
# PyTorch on the same GPU, printed as a Markdown table with the GPU's name.
#
#   scripts/gpu_check.sh prepare   # where cargo is (no GPU needed): build with
#                                  # CUDA (scripts/build_cuda.sh), smoke-test
#                                  # and stage the binaries, xz-compressed, in
#                                  # .gpu/ (ignored by git; must fit 64 MiB)
#   scripts/gpu_check.sh           # on the GPU machine (e.g. the device tool,
#                                  # carry [".gpu"]): the checks and the table
#
# On the GPU machine, in one run (expected 3-5 minutes on one H100, never
# run yet; every step has its own timeout, parity 150 s, each benchmark 60 s,
# all within BUDGET_S=400 s, so the whole stays under 8 minutes):
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

# What can be carried to the GPU machine (the device tool's carry limit).
STAGE_LIMIT_BYTES=$((64 * 1024 * 1024))

if [[ "${1:-}" == prepare ]]; then
    # build_cuda.sh builds both binaries in one invocation (one feature set);
    # its last line is the LD_LIBRARY_PATH that runs them here.
    exports=$(MODE=build scripts/build_cuda.sh | tail -n 1)
    eval "$exports"
    T="${CARGO_TARGET_DIR:-target/cuda}"
    # Stripped (the release profile has no debug info; the symbol tables go
    # too), they are 77 + 52 MB, mostly code and candle's sm_90 kernels
    # (.nv_fatbin 33 MB): over what can be carried. xz brings them to ~22 MB;
    # the GPU run unpacks them (xz, or Python's lzma) in a temporary folder.
    bin="$T/gpu-stage"
    rm -rf "$bin" "$STAGE"
    mkdir -p "$bin" "$STAGE"
    cp "$T/release/pretrain" "$T/release/examples/gpu_check" "$bin/"
    strip --strip-all "$bin/pretrain" "$bin/gpu_check"
    for b in pretrain gpu_check; do
        xz -T2 -6 -c "$bin/$b" >"$STAGE/$b.xz"
    done
    grep -qx '/.gpu/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null ||
        echo '/.gpu/' >>"$(git rev-parse --git-common-dir)/info/exclude"
    du -sh "$STAGE"
    bytes=$(du -sb "$STAGE" | cut -f1)
    if ((bytes > STAGE_LIMIT_BYTES)); then
        echo "gpu_check: $STAGE is $bytes bytes, over the $STAGE_LIMIT_BYTES that can be carried" >&2
        exit 1
    fi
    # Smoke test here, without a GPU: the binary loads (libcuda.so.1 is the
    # driver, or build_cuda.sh's stub on a machine without one), computes the
    # tiny GPT-2's reference loss on the CPU, and where no GPU answers,
    # `--device cuda` fails with a clear message rather than a panic.
    timeout 60 "$bin/pretrain" --help >/dev/null
    tokens=$(mktemp)
    trap 'rm -f "$tokens"' EXIT
    "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["batches"][0]["input_ids"]))' \
        testdata/models/tiny-gpt2/expected.json >"$tokens"
    cpu=$(timeout 120 "$bin/pretrain" eval --model testdata/models/tiny-gpt2/model --tokens "$tokens" --device cpu)
    "$PYTHON" -c 'import json, sys
got = json.loads(sys.argv[1])["loss"]
want = json.load(open("testdata/models/tiny-gpt2/expected.json"))["batches"][0]["loss"]
assert abs(got - want) <= 1e-4, f"CPU loss {got}, transformers {want}"
print(f"gpu_check: {sys.argv[2]} eval --device cpu: loss {got:.6f} (transformers {want:.6f})", file=sys.stderr)' \
        "$cpu" "$bin/pretrain"
    if ! timeout 10 nvidia-smi -L >/dev/null 2>&1; then
        rc=0
        err=$(timeout 60 "$bin/pretrain" eval --model testdata/models/tiny-gpt2/model --tokens "$tokens" \
            --device cuda 2>&1 >/dev/null) || rc=$?
        if ((rc == 0)) || grep -q 'panicked' <<<"$err" || ! grep -q 'no CUDA d' <<<"$err"; then
            echo "gpu_check: without a GPU, --device cuda gave exit $rc and: $err" >&2
            exit 1
        fi
        echo "gpu_check: no GPU here; --device cuda exits $rc: $(tail -n 1 <<<"$err")" >&2
    fi
    echo "staged in $STAGE: run scripts/gpu_check.sh on the GPU machine (carry .gpu)" >&2
    exit 0
fi

mkdir -p "$OUT"
[[ -f "$STAGE/pretrain.xz" && -f "$STAGE/gpu_check.xz" ]] || {
    echo "gpu_check: no $STAGE/pretrain.xz and $STAGE/gpu_check.xz; run 'scripts/gpu_check.sh prepare' first" >&2
    exit 1
}
# Everything up to the last benchmark stays within BUDGET_S (default 400 s;
# with at most 10 s of overrun in the last measurement and 60 s for the
# versions and the table, under 8 minutes): every step's timeout is its own
# cap or what is left of the budget, if less.
BUDGET_S="${BUDGET_S:-400}"
DEADLINE=$((SECONDS + BUDGET_S))
# left CAP: the timeout for the next step (at least 1: `timeout 0` never ends).
left() {
    local t=$((DEADLINE - SECONDS))
    ((t > $1)) && t=$1
    ((t > 0)) || t=1
    echo "$t"
}
# Unpack the binaries outside the repository (and outside $OUT, which comes back).
BIN=$(mktemp -d "${TMPDIR:-/tmp}/pretrain-gpu.XXXXXX")
trap 'rm -rf "$BIN"' EXIT
for b in pretrain gpu_check; do
    if command -v xz >/dev/null 2>&1; then
        timeout "$(left 30)" xz -dc "$STAGE/$b.xz" >"$BIN/$b"
    else
        timeout "$(left 30)" "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$STAGE/$b.xz" "$BIN/$b"
    fi
    chmod +x "$BIN/$b"
done
# The CUDA 13 libraries the binaries link (cudart, cublas, cublasLt, curand, nvrtc):
# the system toolkit's, or the nvidia-* wheels beside the machine's PyTorch.
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(timeout 30 "$PYTHON" -c 'import glob, site; print(" ".join(sorted({p.rsplit("/", 1)[0] for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/lib*.so*", recursive=True)})))' 2>/dev/null); do
    [[ -d "$d" ]] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A library the binaries need and the machine lacks (say, only CUDA 12
# wheels beside PyTorch) would make every step fail the same way: say which.
missing=$(timeout 10 ldd "$BIN/pretrain" "$BIN/gpu_check" | grep 'not found' | sort -u || true)
if [[ -n "$missing" ]]; then
    echo "gpu_check: libraries not found (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):" >&2
    echo "$missing" >&2
    exit 1
fi
GPU=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1) ||
    GPU="unknown (nvidia-smi failed)"
echo "GPU: $GPU" >&2

# A failed or hung nvidia-smi reads as 0 MiB rather than ending the run (set -e).
used_mib() { timeout 5 nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1 || echo 0; }

# measure NAME CMD...: runs CMD (at most 60 s), appends {"name", "result", "peak_smi_mib"} to bench.jsonl.
measure() {
    local name=$1
    shift
    local base peak=0 m pid json t rc
    t=$(left 60)
    if ((t < 5)); then
        echo "gpu_check: $name skipped: the ${BUDGET_S} s budget is spent" >&2
        printf '{"name":"%s","result":null,"peak_smi_mib":null}\n' "$name" >>"$OUT/bench.jsonl"
        return
    fi
    base=$(used_mib)
    timeout -k 5 "$t" "$@" >"$OUT/$name.out" 2>>"$OUT/stderr.log" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        m=$(used_mib)
        ((m > peak)) && peak=$m
        sleep 0.2
    done
    rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || echo "gpu_check: $name failed, exit $rc (124: its $t s ran out; see $OUT/stderr.log)" >&2
    json=$(tail -n 1 "$OUT/$name.out")
    [[ "$json" == "{"* ]] || json=null
    printf '{"name":"%s","result":%s,"peak_smi_mib":%s}\n' "$name" "$json" "$((peak - base))" >>"$OUT/bench.jsonl"
}

: >"$OUT/bench.jsonl"
echo "== parity" >&2
parity_rc=0
timeout -k 5 "$(left 150)" "$BIN/gpu_check" testdata/models >"$OUT/parity.jsonl" 2>>"$OUT/stderr.log" || parity_rc=$?
for what in eval train; do
    for dtype in f32 bf16; do
        echo "== $what $dtype" >&2
        measure "ours-$what-$dtype" "$BIN/pretrain" bench "$what" --device cuda --dtype "$dtype" --iters "$ITERS"
        measure "torch-$what-$dtype" "$PYTHON" crates/model/benches/torch_bench.py "$what" \
            --device cuda --dtype "$dtype" --iters "$ITERS"
    done
done

TORCH=$(timeout 20 "$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "?")
TRANSFORMERS=$(timeout 20 "$PYTHON" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo "?")
export GPU TORCH TRANSFORMERS OUT ITERS parity_rc
timeout 20 "$PYTHON" - <<'PY'
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
