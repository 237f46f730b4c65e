#!/usr/bin/env bash
# One-shot GPU benchmark for a lent H100/H200 (no network, no hub; under 9 minutes in all):
#   1. pip install --no-deps -e .  (keeps the box's torch/transformers)
#   2. `stilts bench` (python -m stilts_xling.bench): HF Trainer vs stilts on XLM-R Large (random init),
#      MNLI/SQuAD/HellaSwag shapes + a 16k-token MNLI step; JSON written after every run
#   3. the CUDA tests of the unpadded path (flash varlen parity, CUDA-graph gradients == eager)
# Leaves benchmarks/<device>-<date>.json (+ .txt table, .log) in the repo and in $OUT.
#
#   scripts/gpu_bench.sh            # on the GPU box
#   scripts/gpu_bench.sh --quick    # MNLI only (Trainer, graphs+compile+flat+wgrad(+cudnn(+lazy(+2k budget)))), 16k), profiled; ~7 minutes
#   scripts/gpu_bench.sh --tiny     # anywhere (CPU ok): tiny model, a few steps, checks the script itself
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0; QUICK=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
[[ "${1:-}" == "--quick" ]] && QUICK=1
OUT_DIR="${OUT:-$PWD/benchmarks}"
mkdir -p benchmarks "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works even if the editable install does not
START=$(date +%s)
PY=""
for candidate in "${PYTHON:-}" python python3; do  # the interpreter that has torch
  if [[ -n "$candidate" ]] && "$candidate" -c "import torch" 2>/dev/null; then PY="$candidate"; break; fi
done
[[ -z "$PY" ]] && { echo "no python with torch found" >&2; exit 1; }
# No network: a package the box lacks cannot be installed. metrics.py imports seqeval at module level but
# the benchmark never scores tagging; give it a stand-in that fails only if called.
if ! "$PY" -c "import seqeval" 2>/dev/null; then
  STUBS=$(mktemp -d); mkdir -p "$STUBS/seqeval"
  printf 'def _missing(*a, **k):\n    raise ImportError("seqeval is not installed")\n' > "$STUBS/seqeval/metrics.py"
  printf 'f1_score = precision_score = recall_score = _missing\n' >> "$STUBS/seqeval/metrics.py"
  touch "$STUBS/seqeval/__init__.py"
  export PYTHONPATH="$PYTHONPATH:$STUBS"
  echo "seqeval missing: using a stand-in (only tagging metrics need it)" >&2
fi

echo "== install" >&2
"$PY" -m pip install --no-deps --no-build-isolation -e . -q 2>&1 | tail -3 || echo "pip install failed; using PYTHONPATH=src" >&2
"$PY" - <<'EOF' >&2
import importlib.util, torch, transformers
missing = [m for m in ("accelerate", "yaml", "tqdm", "pytest") if importlib.util.find_spec(m) is None]
print("missing packages:", missing or "none")
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
         | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-*$//')
# Written straight into $OUT (when set), so a run cut off by the device's time limit still returns its JSON.
NAME="$OUT_DIR/${DEVICE}-$(date +%Y-%m-%d-%H%M)$([[ $TINY == 1 ]] && echo -tiny)$([[ $QUICK == 1 ]] && echo -quick)"
LOG="$NAME.log"

echo "== bench -> $NAME.json" >&2
if [[ $TINY == 1 ]]; then
  ARGS=(--tiny --steps 2 --warmup 1 --batch-size 4 --tokens-per-step 512 --time-budget 120)
  LIMIT=300
elif [[ $QUICK == 1 ]]; then
  # The Trainer, then the fastest candidates only (a graphs variant takes ~60 s for both shapes, the padded
  # loop ~40 s): flat+wgrad, +cudnn attention, +lazy rows too, and that with a 2048-token micro-batch cap
  # (memory). A cuDNN kernel that fails its self-test gives way to flash, so +lazy+cudnn then measures +lazy.
  ARGS=(--shapes mnli --steps 30 --warmup 5 --batch-size 32 --tokens-per-step 16384 --time-budget 270 --profile 5
        --variants unpadded+graphs+compile+flat+wgrad,unpadded+graphs+compile+flat+wgrad+cudnn,unpadded+graphs+compile+flat+wgrad+lazy+cudnn,unpadded+graphs+compile+flat+wgrad+lazy+cudnn+budget2048)
  LIMIT=340
else
  # Trainer and the plain loop first, then the candidates, most complete first (each takes ~2 minutes over
  # all shapes, so only the first two or three fit), each stilts run followed by 5 profiled steps; no new
  # run after 250 s, killed at 330 s (the JSON is rewritten after every run, so a cut keeps what finished).
  # The eager unpadded variants never finished inside the budget: `stilts bench` has them.
  ARGS=(--steps 30 --warmup 5 --batch-size 32 --tokens-per-step 16384 --time-budget 250 --profile 5
        --variants padded,unpadded+graphs+compile+flat+wgrad+lazy+cudnn,unpadded+graphs+compile+flat+wgrad,unpadded+graphs+compile,unpadded+graphs,padded/32)
  LIMIT=330
fi
timeout -k 10 "$LIMIT" "$PY" -m stilts_xling.bench "${ARGS[@]}" --out "$NAME.json" > "$NAME.stdout" 2> "$LOG"
echo "bench exit code $?" | tee -a "$LOG" >&2
# The table from the JSON, which also exists when the run was cut off.
"$PY" -c "import json, sys; from stilts_xling.bench import format_table; print(format_table(json.load(open(sys.argv[1]))))" \
    "$NAME.json" > "$NAME.txt" 2>> "$LOG"
cat "$NAME.txt" >&2

if [[ $TINY == 0 ]] && "$PY" -c "import pytest" 2>/dev/null; then
  echo "== CUDA tests of the unpadded path" >&2
  timeout -k 10 120 "$PY" -m pytest -q -m gpu tests/test_unpadded.py tests/test_flat_adamw.py tests/test_lazy_rows.py -p no:cacheprovider \
      -k "not compiled and not cudnn" 2>&1 | tail -25 | tee -a "$LOG" >&2
  # cuDNN's varlen attention apart: a kernel this torch/cuDNN lacks must not stop the tests above.
  timeout -k 10 60 "$PY" -m pytest -q -m gpu tests/test_unpadded.py -p no:cacheprovider -k "cudnn and not compiled" 2>&1 \
      | tail -10 | tee -a "$LOG" >&2
  LEFT=$(( (QUICK ? 0 : 480) - ($(date +%s) - START) ))
  if (( LEFT > 90 )); then  # compile inside CUDA graphs, if time is left (all in under 8.5 minutes)
    timeout -k 10 $(( LEFT - 10 )) "$PY" -m pytest -q -m gpu tests/test_unpadded.py -p no:cacheprovider \
        -k "compiled" 2>&1 | tail -15 | tee -a "$LOG" >&2
  fi
fi

rm -f "$NAME.stdout"
[[ "$(cd "$OUT_DIR" && pwd)" != "$PWD/benchmarks" ]] && cp "$NAME".* benchmarks/
echo "== done in $(( $(date +%s) - START )) s: $(ls "$OUT_DIR" | tr '\n' ' ')" >&2
