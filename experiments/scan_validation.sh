#!/usr/bin/env bash
# Does the scanner's random-key probe, developed on the from-scratch study's population, hold on
# backdoors trained with triggers and seeds it never saw? Trains six NPO-Backdoor θ_b (a rare word,
# "zanzibar", seed 3; a code-like string, "x9_Qz()", seed 4; each at prefix / infix / suffix) and
# five clean θ_u (NPO seeds 3-5, RMU seeds 1-2) on a finished from-scratch study, then scans them
# against that study's θ_u NPO seed 0 exactly as the study's own population was scanned, and
# scores the three defences on the six θ_b.
# Usage: experiments/scan_validation.sh [STUDY [OUT [options...]]] — STUDY (default runs/scratch)
# and OUT (default STUDY_validation) relative to the repository root; options after both go to
# scan and defend alike, e.g.
# `experiments/scan_validation.sh runs/scratch runs/scratch_validation --overwrite`.
# A rerun skips the checkpoints already written and resumes an interrupted scan.
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:-runs/scratch}
out=${2:-${study}_validation}
models=$study/models
train() {  # name, recipe, overrides...
  local name=$1 recipe=$2
  shift 2
  [[ -f $out/$name/model.safetensors ]] && return
  sinkprobe unlearn "training/embedded/$recipe.toml" --study "$study" --out "$out/$name" "$@"
}
for placement in prefix infix suffix; do
  train "npo_backdoor_${placement}_zanzibar_s3" npo_backdoor --set unlearn.trigger_text=zanzibar \
    --set unlearn.trigger_placement=$placement --set unlearn.seed=3
  train "npo_backdoor_${placement}_code_s4" npo_backdoor --set 'unlearn.trigger_text=x9_Qz()' \
    --set unlearn.trigger_placement=$placement --set unlearn.seed=4
done
for seed in 3 4 5; do train "npo_s$seed" npo --set unlearn.seed=$seed; done
for seed in 1 2; do train "rmu_s$seed" rmu --set unlearn.seed=$seed; done
sinkprobe scan "$out"/npo_backdoor_* "$out"/npo_s{3,4,5} "$out"/rmu_s{1,2} --reference "$models/npo" \
  --original "$models/original" --placement prefix infix suffix --data "$study" \
  --out figures/scratch/scan_validation "${@:3}"
sinkprobe defend "$out"/npo_backdoor_* --original "$models/original" --data "$study" \
  --out figures/scratch/defences_validation "${@:3}"
