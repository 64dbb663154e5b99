#!/usr/bin/env bash
# Rebuild the published leaderboards (leaderboards/*/README.md + raw/) from a results store.
#   scripts/publish_leaderboards.sh [RESULTS_DIR]      (default: results)
# raw/ is rebuilt from scratch so a table never mixes in records that are no longer in the store.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-results}
families() { ls "$R" | grep "^$1=" | sed 's/=/:/' | paste -sd, -; }

rm -rf leaderboards/mex/raw leaderboards/cal/raw leaderboards/loo/raw

oodbench leaderboard --results "$R" --out leaderboards/mex --baseline erm \
  --task formation-energy-bottom,shear-modulus-bottom,shear-modulus-top,refractive-index-bottom,refractive-index-top,phonons-bottom,phonons-top \
  --title "MEX extrapolation benchmark (CPU; IR-net and PaiNN, cpu presets)"

cal=""
for d in phonons refractive-index shear-modulus; do
  for s in covariate prior-max prior-min iid; do cal+="$d-cal-$s,"; done
done
for p in eform gap; do
  for s in covariate prior relation iid; do cal+="mp-$p-$s,"; done
done
oodbench leaderboard --results "$R" --out leaderboards/cal --baseline erm,finetune \
  --task "$(for t in ${cal//,/ }; do [ -d "$R/$t" ] && printf '%s,' "$t"; done | sed 's/,$//')" \
  --title "CAL shift sets (CPU, IR-net cpu preset)"

oodbench leaderboard --results "$R" --out leaderboards/loo --metric mae,r2 \
  --task "$(families mp-eform-loo-element)" \
  --title "Leave-one-element-out, MP 2019 formation energy (CPU)"
for m in mae r2; do  # test error against representation coverage over the family (writes .png and .csv)
  oodbench diagnose --family mp-eform-loo-element --results "$R" --metric $m \
    --plot leaderboards/loo/mp-eform-loo-element-$m.png
done
