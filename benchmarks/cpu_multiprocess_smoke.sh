#!/usr/bin/env bash
# Every training method for 2 steps on the toy world with 2 CPU processes (gloo), under torchrun and under
# `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml`; one PASS/FAIL line per (launcher, method).
# A PASS needs exit status 0 and summary.json reporting num_processes=2.
# Usage: bash benchmarks/cpu_multiprocess_smoke.sh [OUT_DIR] [METHOD ...]   (about 25 s per line on 2 cores)
set -u
OUT=${1:-/tmp/rewardflow_cpu_mp_smoke}
shift || true
# shellcheck source=benchmarks/_smoke_methods.sh
source "$(dirname "$0")/_smoke_methods.sh"
METHODS=${*:-$SMOKE_METHODS}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(max_steps=2 batch_size=2 eval_at_start=false "eval_prompts=''" report_to=none save_every=0)
mkdir -p "$OUT"
fails=0
port=29600
for m in $METHODS; do
  for launcher in torchrun accelerate; do
    port=$((port + 1))
    run="$OUT/${launcher}_$m"
    rm -rf "$run"
    if [ "$launcher" = torchrun ]; then
      cmd=(torchrun --nproc_per_node 2 --master_port "$port" -m rewardflow train)
    else
      cmd=(accelerate launch --config_file configs/accelerate/cpu_2proc.yaml --main_process_port "$port" -m rewardflow train)
    fi
    t0=$(date +%s)
    # shellcheck disable=SC2086  # EXTRA holds several key=value words
    "${cmd[@]}" "configs/toy/$m.yaml" "${COMMON[@]}" ${EXTRA[$m]:-} "output_dir=$run" > "$run.log" 2>&1
    rc=$?
    np=$(python -c "import json,sys; print(json.load(open('$run/summary.json'))['num_processes'])" 2>/dev/null || echo -)
    if [ $rc -eq 0 ] && [ "$np" = 2 ]; then s=PASS; else s=FAIL; fails=$((fails + 1)); fi
    echo "$s $launcher $m rc=$rc num_processes=$np $(( $(date +%s) - t0 ))s log=$run.log"
  done
done
echo "failures: $fails"
exit $((fails > 0))
