#!/usr/bin/env bash
# GPU smoke test, prepared on a machine WITHOUT a GPU (never run there; `bash -n` checked by tests/test_distributed.py).
# On a CUDA machine, from the repository root with the venv active:
#   bash benchmarks/cuda_smoke.sh [OUT_DIR]
# One PASS / FAIL / SKIP line per check:
#   1. train: every method on the toy world for 2 steps in bf16 (mixed_precision=bf16), 1 process and 2 processes
#      (torchrun; 2 processes need 2 GPUs, else SKIP); PASS = exit 0 and summary.json with the right num_processes
#      and no skipped (non-finite) step;
#   2. attention: a tiny random Stable Diffusion pipeline (rewardflow.testing.tiny_sd) loaded on CUDA in bf16
#      with attention=sdpa and attention=xformers (SKIP when xformers is not installed), 2 sampling steps, finite
#      images. The trainer itself loads models with the default attention ("auto": xformers when installed on CUDA).
#   3. rewards: benchmarks/reward_throughput.py on CUDA (tiny official-format models, 64 PNG files, batch 1..64):
#      PASS = exit 0 and every reward's file-path score within 1e-3 of the official call pattern with no ranking
#      swap (cuDNN may pick other kernels per batch size); the images/s table is printed and kept in
#      OUT/reward_throughput.json.
#   4. sharding: the toy DRaFT config for 2 steps in bf16 with strategy=fsdp and strategy=zero3, LoRA and full
#      fine-tuning (lora_rank=0; once each with cpu_offload=true), 1 process and 2 processes (SKIP without 2 GPUs);
#      PASS = exit 0, summary.json with the strategy and num_processes and no skipped step; the per-process
#      parameter bytes of the memory report are printed (2 processes hold half of 1 process's).
# Exit status: the number of FAIL lines (0 = all passed).
set -u
OUT=${1:-/tmp/rewardflow_cuda_smoke}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
# shellcheck source=benchmarks/_smoke_methods.sh
source "$(dirname "$0")/_smoke_methods.sh"
METHODS=${METHODS:-$SMOKE_METHODS}
COMMON=(max_steps=2 batch_size=2 mixed_precision=bf16 device=cuda eval_at_start=false "eval_prompts=''"
        report_to=none save_every=0)

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "FAIL cuda: torch.cuda.is_available() is False"
  exit 1
fi
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), \
'bf16', torch.cuda.is_bf16_supported())"
fails=0
report() {  # status name detail
  echo "$1 $2 $3"
  if [ "$1" = FAIL ]; then fails=$((fails + 1)); fi
}

# one training run under torchrun and its check: train_case NAME PROCS RUN_DIR STRATEGY CONFIG [key=value ...]
# PASS = exit 0 and summary.json with the strategy, the number of processes and no skipped (non-finite) step; the
# per-process parameter bytes of the memory report are printed
port=29700
train_case() {
  local name=$1 np=$2 run=$3 strategy=$4 config=$5
  shift 5
  if [ "$np" -gt "$NGPU" ]; then
    report SKIP "$name" "(needs $np GPUs, found $NGPU)"
    return
  fi
  port=$((port + 1))
  rm -rf "$run"
  local t0 rc check
  t0=$(date +%s)
  torchrun --nproc_per_node "$np" --master_port "$port" -m rewardflow train "$config" \
    "${COMMON[@]}" "strategy=$strategy" "$@" "output_dir=$run" > "$run.log" 2>&1
  rc=$?
  check=$($PY - "$run" "$np" "$strategy" <<'EOF' 2>&1
import json, sys
from pathlib import Path
run, np_, strategy = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = json.loads((run / "summary.json").read_text())
assert s["strategy"] == strategy and s["num_processes"] == np_, (s["strategy"], s["num_processes"])
assert s["skipped_steps"] == 0, f"{s['skipped_steps']} skipped (non-finite) steps"
m = s["memory"]
print(f"params/process {m['parameter_bytes'] / 2**20:.1f} MiB, trainable here {m['trainable_parameters_local']:,}")
print("ok")
EOF
)
  if [ $rc -eq 0 ] && [ "${check##*$'\n'}" = ok ]; then
    report PASS "$name" "$(( $(date +%s) - t0 ))s ${check%%$'\n'*}"
  else
    report FAIL "$name" "rc=$rc ${check//$'\n'/ } log=$run.log"
  fi
}

# ---------------------------------------------------------------- 1. training, bf16, 1 and 2 processes
for m in $METHODS; do
  for np in 1 2; do
    # shellcheck disable=SC2086  # EXTRA holds several key=value words
    train_case "train[$m,bf16,procs=$np]" "$np" "$OUT/train_${m}_np$np" ddp "configs/toy/$m.yaml" ${EXTRA[$m]:-}
  done
done

# ---------------------------------------------------------------- 2. attention backends (tiny SD, bf16)
for attn in sdpa xformers; do
  name="attention[$attn,bf16]"
  if [ "$attn" = xformers ] && ! $PY -c "import xformers" 2>/dev/null; then
    report SKIP "$name" "(xformers not installed)"
    continue
  fi
  msg=$($PY - "$OUT/tiny_sd" "$attn" <<'EOF' 2>&1
import sys
import torch
from rewardflow.testing.tiny_sd import build_tiny_sd
from rewardflow.pipelines.registry import load_generator
out, attn = sys.argv[1], sys.argv[2]
build_tiny_sd(out)
gen = load_generator(out, dtype="bf16", device="cuda", attention=attn)
assert gen.pipe.rewardflow_attention == attn, gen.pipe.rewardflow_attention
noise = gen.initial_noise(2, torch.Generator().manual_seed(0))
img = gen.generate(["a red cat", "two blue dogs"], 2, noise=noise)
assert img.is_cuda and torch.isfinite(img.float()).all()
print("ok")
EOF
)
  if [ "${msg##*$'\n'}" = ok ]; then report PASS "$name" ""; else report FAIL "$name" "${msg//$'\n'/ | }"; fi
done

# ---------------------------------------------------------------- 3. reward file scoring throughput (CUDA)
name="rewards[file path vs official, cuda]"
$PY benchmarks/reward_throughput.py --device cuda --images 64 --repeats 3 --out "$OUT/reward_throughput.json" \
  > "$OUT/reward_throughput.log" 2>&1
rc=$?
grep -A8 "^reward " "$OUT/reward_throughput.log"
check=$($PY - "$OUT/reward_throughput.json" <<'EOF' 2>&1
import json, sys
doc = json.load(open(sys.argv[1]))
bad = [f"{n}: {r['parity']['max_abs_diff_file_path']:.1e}, {r['parity']['discordant_pairs_file_path']} swaps"
       for n, r in doc["rewards"].items()
       if r["parity"]["max_abs_diff_file_path"] > 1e-3 or r["parity"]["discordant_pairs_file_path"]]
print("ok" if not bad else "; ".join(bad))
EOF
)
if [ $rc -eq 0 ] && [ "$check" = ok ]; then report PASS "$name" ""; else
  report FAIL "$name" "rc=$rc ${check//$'\n'/ } log=$OUT/reward_throughput.log"; fi

# ---------------------------------------------------------------- 4. sharding (fsdp, zero3), bf16
SHARD_CASES=("fsdp lora_rank=8" "fsdp lora_rank=0" "fsdp lora_rank=0 cpu_offload=true"
             "zero3 lora_rank=8" "zero3 lora_rank=0" "zero3 lora_rank=0 cpu_offload=true")
for case in "${SHARD_CASES[@]}"; do
  read -r strategy rest <<< "$case"
  for np in 1 2; do
    # shellcheck disable=SC2086  # rest holds several key=value words
    train_case "shard[$strategy ${rest// /,},procs=$np]" "$np" "$OUT/shard_${strategy}_${rest//[ =]/_}_np$np" \
      "$strategy" configs/toy/draft.yaml $rest
  done
done

echo "failures: $fails"
exit "$fails"
