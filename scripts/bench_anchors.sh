#!/usr/bin/env bash
# claas vs its anchors (llama.cpp's llama-bench, PyTorch + PEFT) on the Qwen3-0.6B shape, in
# INTERLEAVED rounds: two-thread decode is bimodal between runs on some hosts, so every round runs
# each anchor and claas back to back, and the summary reports the median and the spread (min-max)
# of the per-round ratios (only ratios measured in the same run mean anything).
#
# Usage: scripts/bench_anchors.sh [ANCHORS_DIR]          (default /work/anchors)
#
# ANCHORS_DIR holds (each is optional; a missing one is reported and its ratios print "n/a"):
#   llama/build/bin/llama-bench, llama/gguf/qwen3-0.6b-{bf16,q8_0,f32}.gguf
#       made by: TORCH_PY=ANCHORS_DIR/venv-torch/bin/python bash ../shared/bench/llama_anchor.sh ANCHORS_DIR/llama
#   venv-torch/  python3 -m venv ANCHORS_DIR/venv-torch && ANCHORS_DIR/venv-torch/bin/pip install torch transformers peft
#   torch.json   the JSON line of ../shared/bench/torch_anchor.py (re-measured in this run when
#                venv-torch exists and TORCH_RERUN=1, the default)
#
# Environment:
#   ROUNDS=3          interleaved rounds of llama-bench + `claas bench model`, per thread count
#   THREADS="1 2"     thread counts
#   SDPO_ROUNDS=1     rounds of (PyTorch anchor, `claas bench sdpo`) at the largest thread count; 0 skips
#   TORCH_RERUN=1     re-run torch_anchor.py before each SDPO round (0: use ANCHORS_DIR/torch.json)
#   QUICK=1           smoke run: `claas bench --quick` (4 layers: its ratios mean nothing), short
#                     llama-bench (pp32/tg8), no PyTorch re-run, one round
#   CLAAS=path        the claas binary (default: cargo build --release -p claas, then
#                     $CARGO_TARGET_DIR/release/claas)
#   OUT=dir           where raw logs go (default: ANCHORS_DIR/runs/<UTC time>)
set -euo pipefail

ANCHORS="$(cd "${1:-/work/anchors}" 2>/dev/null && pwd)" || {
  echo "bench_anchors: anchors dir '${1:-/work/anchors}' does not exist" >&2
  exit 2
}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${SHARED:-$(cd "$REPO/.." && pwd)/shared}"
[ -d "$SHARED/bench" ] || SHARED=/work/shared
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-1 2}"
SDPO_ROUNDS="${SDPO_ROUNDS:-1}"
TORCH_RERUN="${TORCH_RERUN:-1}"
QUICK="${QUICK:-0}"
OUT="${OUT:-$ANCHORS/runs/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
REC="$OUT/records.tsv"
: >"$REC"

note() { printf '%s\n' "$*" >&2; }

if [ "$QUICK" = 1 ]; then
  ROUNDS=1
  TORCH_RERUN=0
  LB_ARGS=(-p 32 -n 8 -r 1)
  CLAAS_QUICK=(--quick)
  note "QUICK=1: smoke run (claas on 4 layers, short llama-bench); the ratios below mean nothing"
else
  LB_ARGS=(-p 320 -n 32 -r 1)
  CLAAS_QUICK=()
fi

# --- claas -------------------------------------------------------------------------------
if [ -z "${CLAAS:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-shared}"
  note "building claas (cargo build --release -p claas) ..."
  (cd "$REPO" && cargo build --release -q -p claas) || {
    echo "bench_anchors: cargo build --release -p claas failed" >&2
    exit 1
  }
  CLAAS="$CARGO_TARGET_DIR/release/claas"
fi
[ -x "$CLAAS" ] || {
  echo "bench_anchors: claas binary '$CLAAS' not found or not executable" >&2
  exit 1
}

# Options `claas bench` has in this build (other work adds them over time).
MODEL_HELP="$("$CLAAS" bench model --help 2>&1 || true)"
SDPO_HELP="$("$CLAAS" bench sdpo --help 2>&1 || true)"
has_opt() { grep -q -- "$2" <<<"$1"; }
has_opt "$MODEL_HELP" '--threads' && MODEL_THREADS=1 || MODEL_THREADS=0
has_opt "$MODEL_HELP" '--quantization' && MODEL_QUANT=1 || MODEL_QUANT=0
has_opt "$SDPO_HELP" '--threads' && SDPO_THREADS=1 || SDPO_THREADS=0
[ "$MODEL_THREADS" = 1 ] || note "claas bench model has no --threads: thread count set through RAYON_NUM_THREADS only"
[ "$MODEL_QUANT" = 1 ] || note "claas bench model has no --quantization: int8 rows only if it prints them by default"

# --- llama.cpp ---------------------------------------------------------------------------
LB="$ANCHORS/llama/build/bin/llama-bench"
LLAMA_TYPES=()
if [ -x "$LB" ]; then
  for t in bf16 q8_0 f32; do
    if [ -f "$ANCHORS/llama/gguf/qwen3-0.6b-$t.gguf" ]; then
      LLAMA_TYPES+=("$t")
    else
      note "llama.cpp anchor: $ANCHORS/llama/gguf/qwen3-0.6b-$t.gguf missing (run llama_anchor.sh); skipping $t"
    fi
  done
else
  note "llama.cpp anchor: $LB missing; build it with: TORCH_PY=$ANCHORS/venv-torch/bin/python bash $SHARED/bench/llama_anchor.sh $ANCHORS/llama"
fi

# --- PyTorch -----------------------------------------------------------------------------
TORCH_PY="$ANCHORS/venv-torch/bin/python"
TORCH_JSON="$ANCHORS/torch.json"
if [ "$SDPO_ROUNDS" -gt 0 ] && [ ! -f "$TORCH_JSON" ] && { [ "$TORCH_RERUN" != 1 ] || [ ! -x "$TORCH_PY" ]; }; then
  note "PyTorch anchor: $TORCH_JSON missing and no venv to make it ($TORCH_PY); SDPO ratio will be n/a"
fi

# Writes one record: round, threads, key, value.
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$REC"; }

run_llama() { # round threads type
  local log="$OUT/llama-$3-t$2-r$1.jsonl"
  if "$LB" -m "$ANCHORS/llama/gguf/qwen3-0.6b-$3.gguf" -t "$2" "${LB_ARGS[@]}" -o jsonl >"$log" 2>"$log.err"; then
    python3 - "$log" "$1" "$2" "$3" >>"$REC" <<'EOF'
import json, sys
log, rnd, thr, typ = sys.argv[1:]
for line in open(log):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    kind = "pp" if r.get("n_gen", 0) == 0 else "tg"
    print(f"{rnd}\t{thr}\tllama_{typ}_{kind}\t{r['avg_ts']}")
EOF
  else
    note "llama-bench $3 at $2 thread(s) failed (see $log.err)"
  fi
}

# Parses `claas bench model` output: batch-1 decode without LoRA per weight type, and the
# prefill of 320 tokens. Row format: "<dtype> <batch> <lora> <prefill tok/s> <decode tok/s> ...".
parse_claas_model() { # log round threads
  python3 - "$@" >>"$REC" <<'EOF'
import re, sys
log, rnd, thr = sys.argv[1:]
def kind(tok):
    t = tok.lower()
    if t == "bf16_highest": return "bf16_highest"
    if t in ("bf16", "bfloat16"): return "bf16"
    if t in ("f32", "float32"): return "f32"
    if t in ("f16", "float16"): return "f16"
    if t.startswith(("q8", "int8", "i8")): return "int8"
    return None
seen = set()
for line in open(log):
    f = line.split()
    m = re.match(r"^\s*(\S+) prefill of 320 tokens.*?:\s*([0-9.]+) tok/s", line)
    if m and kind(m.group(1)):
        print(f"{rnd}\t{thr}\tclaas_{kind(m.group(1))}_pp\t{m.group(2)}")
        continue
    if len(f) >= 5 and kind(f[0]) and "1" in f[1:3] and "none" in f[1:4]:
        after = f[f.index("none") + 1:]
        nums = [x for x in after if re.fullmatch(r"[0-9.]+", x)]
        k = kind(f[0])
        if len(nums) >= 2 and k not in seen and f[f.index("none") - 1] == "1":
            seen.add(k)
            print(f"{rnd}\t{thr}\tclaas_{k}_tg\t{nums[1]}")
EOF
}

run_claas_model() { # round threads
  local log="$OUT/claas-model-t$2-r$1.log" args=("${CLAAS_QUICK[@]}")
  [ "$MODEL_THREADS" = 1 ] && args+=(--threads "$2")
  if RAYON_NUM_THREADS="$2" "$CLAAS" bench model "${args[@]}" >"$log" 2>&1; then
    parse_claas_model "$log" "$1" "$2"
  else
    note "claas bench model at $2 thread(s) failed (see $log)"
    return 0
  fi
  if [ "$MODEL_QUANT" = 1 ] && ! grep -q "^$1	$2	claas_int8_tg" "$REC"; then
    log="$OUT/claas-model-q8_0-t$2-r$1.log"
    if RAYON_NUM_THREADS="$2" "$CLAAS" bench model "${args[@]}" --quantization q8_0 >"$log" 2>&1; then
      parse_claas_model "$log" "$1" "$2"
    else
      note "claas bench model --quantization q8_0 at $2 thread(s) failed (see $log)"
    fi
  fi
}

# --- interleaved rounds ------------------------------------------------------------------
for r in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    note "round $r/$ROUNDS, $t thread(s): llama-bench ${LLAMA_TYPES[*]:-(none)}, claas bench model"
    # Alternate which side goes first, so slow drift in the machine's load does not favour one.
    if [ $((r % 2)) = 1 ]; then
      for ty in "${LLAMA_TYPES[@]}"; do run_llama "$r" "$t" "$ty"; done
      run_claas_model "$r" "$t"
    else
      run_claas_model "$r" "$t"
      for ty in "${LLAMA_TYPES[@]}"; do run_llama "$r" "$t" "$ty"; done
    fi
  done
done

# --- SDPO step vs PyTorch ----------------------------------------------------------------
SDPO_T="$(tr ' ' '\n' <<<"$THREADS" | sort -n | tail -1)"
for r in $(seq 1 "$SDPO_ROUNDS"); do
  tj="$TORCH_JSON"
  if [ "$TORCH_RERUN" = 1 ] && [ -x "$TORCH_PY" ]; then
    note "SDPO round $r: PyTorch anchor (torch_anchor.py, $SDPO_T threads) ..."
    tj="$OUT/torch-r$r.json"
    if OMP_NUM_THREADS="$SDPO_T" "$TORCH_PY" "$SHARED/bench/torch_anchor.py" >"$OUT/torch-r$r.log" 2>&1; then
      grep '^{' "$OUT/torch-r$r.log" | tail -1 >"$tj"
    else
      note "torch_anchor.py failed (see $OUT/torch-r$r.log); falling back to $TORCH_JSON"
      tj="$TORCH_JSON"
    fi
  fi
  [ -s "$tj" ] || { note "no PyTorch JSON for SDPO round $r"; tj=""; }
  log="$OUT/claas-sdpo-r$r.log"
  args=("${CLAAS_QUICK[@]}")
  [ "$SDPO_THREADS" = 1 ] && args+=(--threads "$SDPO_T")
  [ -n "$tj" ] && args+=(--torch-json "$tj")
  note "SDPO round $r: claas bench sdpo ${args[*]} ..."
  if RAYON_NUM_THREADS="$SDPO_T" "$CLAAS" bench sdpo "${args[@]}" >"$log" 2>&1; then
    python3 - "$log" "$tj" "$r" "$SDPO_T" >>"$REC" <<'EOF'
import json, re, sys
log, tj, rnd, thr = sys.argv[1:]
dtype = None
for line in open(log):
    m = re.search(r"weights (\w+)", line)
    if m:
        dtype = m.group(1).lower()
    m = re.match(r"\s*total\s+([0-9.]+) s", line)
    if m and dtype:
        print(f"{rnd}\t{thr}\tclaas_sdpo_{dtype}\t{m.group(1)}")
if tj:
    t = json.load(open(tj))
    for key, name in (("float32", "f32"), ("bfloat16", "bf16")):
        s = t.get(key, {}).get("sdpo_step_s")
        if s:
            print(f"{rnd}\t{thr}\ttorch_sdpo_{name}\t{s}")
EOF
  else
    note "claas bench sdpo failed (see $log)"
  fi
done

# --- summary -----------------------------------------------------------------------------
python3 - "$REC" "$QUICK" <<'EOF'
import collections, statistics, sys
rec, quick = sys.argv[1], sys.argv[2] == "1"
by = collections.defaultdict(dict)  # (round, threads) -> key -> value
for line in open(rec):
    rnd, thr, key, val = line.rstrip("\n").split("\t")
    by[(int(rnd), int(thr))][key] = float(val)
threads = sorted({t for _, t in by})
def spread(vals):
    if not vals:
        return "n/a"
    return f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f}, n={len(vals)})"
print()
print("## Raw figures: median (min-max over rounds)")
print()
keys = sorted({k for d in by.values() for k in d})
print("| figure | " + " | ".join(f"{t} thread(s)" for t in threads) + " |")
print("|---|" + "---|" * len(threads))
for k in keys:
    unit = " s" if "sdpo" in k else " tok/s"
    cells = [spread([d[k] for (r, t), d in by.items() if t == th and k in d]) for th in threads]
    print(f"| {k}{unit} | " + " | ".join(cells) + " |")
ratios = [
    ("decode b1: claas bf16 / llama.cpp bf16 (≥ 1.0, aim 1.1)", "claas_bf16_tg", "llama_bf16_tg"),
    ("decode b1: claas int8 / llama.cpp q8_0 (≥ 1.0)", "claas_int8_tg", "llama_q8_0_tg"),
    ("prefill 320: claas bf16 / llama.cpp bf16 pp320 (≥ 1.0)", "claas_bf16_pp", "llama_bf16_pp"),
    ("decode b1: claas f32 / llama.cpp f32", "claas_f32_tg", "llama_f32_tg"),
    ("prefill 320: claas f32 / llama.cpp f32 pp320", "claas_f32_pp", "llama_f32_pp"),
    ("SDPO step time: claas bf16 / PyTorch bf16 (≤ 1.0, aim 0.8)", "claas_sdpo_bf16", "torch_sdpo_bf16"),
    ("SDPO step time: claas f32 / PyTorch f32", "claas_sdpo_f32", "torch_sdpo_f32"),
]
print()
print("## Ratios, each from one round's pair: median (min-max over rounds)")
print()
print("| ratio | " + " | ".join(f"{t} thread(s)" for t in threads) + " |")
print("|---|" + "---|" * len(threads))
for label, a, b in ratios:
    cells = []
    for th in threads:
        vals = [d[a] / d[b] for (r, t), d in sorted(by.items()) if t == th and a in d and b in d and d[b] > 0]
        cells.append(spread(vals))
    print(f"| {label} | " + " | ".join(cells) + " |")
if quick:
    print("\n(QUICK=1: claas ran 4 layers against llama.cpp's 28; these ratios are a smoke test only.)")
EOF
note "raw logs and records: $OUT"
