#!/usr/bin/env bash
# Re-cost a run folder of run_h200_mix.sh with the CPU relay refitted from a relay_bench.py
# output (relay_bench.py --refit: the run's own relay.json, or a bench of another pair), on
# this machine, no GPU: the same plans, profiles and measured runs, only the cluster's relay
# figures change. Writes into the folder
#   relay_refit.json                     the refitted bench (messages up to 16 MiB)
#   cluster_relay_refit.yaml             mps_chips.py trio --relay relay_refit.json
#   plan_refit_{searched,uniform}.json   autosplit evaluate with that cluster
#   measured_refit_*.json                copies of the measured runs (analyse_runs.py pairs
#                                        plan_X, measured_X and validation_X by name)
#   validation_refit_*.json              autosplit validate
# then prints analyse_runs.py's table of the re-costed plans.
#
#   bash experiments/runtime/recost_relay.sh RUN_FOLDER RELAY_JSON SHARE...
set -euo pipefail
R=${1:?usage: recost_relay.sh RUN_FOLDER RELAY_JSON SHARE...}
BENCH=${2:?usage: recost_relay.sh RUN_FOLDER RELAY_JSON SHARE...}
shift 2
[ "$#" -ge 2 ] || { echo "error: give the run's SM shares, fastest first" >&2; exit 2; }
[ -f "$BENCH" ] || { echo "error: $BENCH not found (relay_bench.py's output)" >&2; exit 2; }
HERE=experiments/runtime
A=${AUTOSPLIT:-autosplit}
python3 $HERE/relay_bench.py --refit "$BENCH" -o "$R/relay_refit.json"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 $HERE/mps_chips.py trio --out "$tmp" --suffix mix --shares "$@" --relay "$R/relay_refit.json"
cp "$tmp/cluster.yaml" "$R/cluster_relay_refit.yaml"
export AUTOSPLIT_PROFILES=$R/profiles AUTOSPLIT_CHIP_PATH=$R/profiles
model=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['model_file'])" \
  "$R/measured_searched.json")
[ -f "$model" ] || model=experiments/models/$(basename "$model")
for name in searched uniform; do
  $A evaluate "$R/plan_$name.json" --model "$model" --cluster "$R/cluster_relay_refit.yaml" \
    --chips-dir "$R/profiles" -o "$R/plan_refit_$name.json" > /dev/null
  cp "$R/measured_$name.json" "$R/measured_refit_$name.json"
  $A validate "$R/plan_refit_$name.json" "$R/measured_refit_$name.json" \
    -o "$R/validation_refit_$name.json" > /dev/null
done
python3 $HERE/analyse_runs.py "$R"
