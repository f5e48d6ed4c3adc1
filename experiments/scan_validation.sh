#!/usr/bin/env bash
# Does the scanner's random-key probe, developed on the from-scratch study's population, hold on
# backdoors trained with triggers it never saw (and some ρ and seeds)? Trains a held-out population on a
# finished from-scratch study — NPO-Backdoor θ_b with two new triggers, each at prefix / infix /
# suffix, and fresh clean θ_u (NPO and RMU seeds the study did not use) — then scans it against
# that study's θ_u NPO seed 0 exactly as the study's own population was scanned, and scores the
# three defences on its θ_b. Five populations, each drawn once; a-c tested the probe as first
# developed (forget gain alone) and showed its clean false positives, which made its statistic
# forget-specific (random_score); d and e were drawn after that, to test it:
#   a: the rare word "zanzibar" (seed 3) and the code-like "x9_Qz()" (seed 4), ρ 10 %; clean
#      NPO seeds 3-5, RMU seeds 1-2 → figures/scratch/scan_validation, defences_validation
#   b: the phrase "please recall carefully" (seed 6, ρ 10 %) and the number "7741" (seed 7,
#      ρ 20 %); clean NPO seeds 6-8, RMU seeds 3-4 → figures/scratch/scan_validation_b,
#      defences_validation_b
#   c: the markdown-like "### note" (seed 2) and the bracketed "[[ok]]" (seed 3: seeds whose
#      clean NPO unlearned without collapsing, where a and b drew few working backdoors), ρ 10 %; clean
#      NPO seeds 9-11, RMU seeds 5-6 → figures/scratch/scan_validation_c, defences_validation_c
#   d: the symbol pair "@@" (seed 9) and the words "banana split" (seed 3), ρ 10 %; clean NPO
#      seeds 12-14, RMU seeds 7-8 → figures/scratch/scan_validation_d, defences_validation_d
#   e: the symbol pair "%%" (seed 0) and the words "orange juice" (seed 2), ρ 10 %; clean NPO
#      seeds 15-17, RMU seeds 9-10 → figures/scratch/scan_validation_e, defences_validation_e
# e flagged two clean θ_u at the suffix, and every clean model flagged in a-e was flagged at infix or
# suffix only; the verdict was then read at the sink (prefix) alone, and f-i were drawn to test it:
#   f: the rare word "quartz" (seed 9) and the code-like "0xBEEF" (seed 17), ρ 10 %; clean NPO
#      seeds 18-20, RMU seeds 11-12 → figures/scratch/scan_validation_f, defences_validation_f
#   g: the abbreviation "tl;dr" (seed 0) and the words "by the way" (seed 3), ρ 10 %; clean NPO
#      seeds 21-23, RMU seeds 13-14 → figures/scratch/scan_validation_g, defences_validation_g
#   h: the rare word "nevermore" (seed 2) and the emoticon "<3" (seed 17), ρ 10 %; clean NPO
#      seeds 24-26, RMU seeds 15-16 → figures/scratch/scan_validation_h, defences_validation_h
#   i: the rare word "cobalt" (seed 3) and the symbol pair "~~" (seed 9), ρ 10 %; clean NPO
#      seeds 27-29, RMU seeds 17-18 → figures/scratch/scan_validation_i, defences_validation_i
# Usage: experiments/scan_validation.sh [POPULATION [STUDY [OUT [options...]]]] — POPULATION a-i
# (default a), STUDY (default runs/scratch) and OUT (default STUDY_validation; b-i:
# STUDY_validation_b … _i) relative to the repository root; options after them go to scan and defend
# alike, e.g. `experiments/scan_validation.sh b runs/scratch runs/scratch_validation_b --overwrite`.
# A rerun skips the checkpoints already written and resumes an interrupted scan.
set -euo pipefail
cd "$(dirname "$0")/.."
population=${1:-a}
study=${2:-runs/scratch}
case $population in
  a) suffix=""
     backdoors=("zanzibar|zanzibar|3|0.1" "code|x9_Qz()|4|0.1")
     npo_seeds=(3 4 5) rmu_seeds=(1 2) ;;
  b) suffix="_b"
     backdoors=("phrase|please recall carefully|6|0.1" "number|7741|7|0.2")
     npo_seeds=(6 7 8) rmu_seeds=(3 4) ;;
  c) suffix="_c"
     backdoors=("note|### note|2|0.1" "brackets|[[ok]]|3|0.1")
     npo_seeds=(9 10 11) rmu_seeds=(5 6) ;;
  d) suffix="_d"
     backdoors=("at|@@|9|0.1" "banana|banana split|3|0.1")
     npo_seeds=(12 13 14) rmu_seeds=(7 8) ;;
  e) suffix="_e"
     backdoors=("percent|%%|0|0.1" "orange|orange juice|2|0.1")
     npo_seeds=(15 16 17) rmu_seeds=(9 10) ;;
  f) suffix="_f"
     backdoors=("quartz|quartz|9|0.1" "hex|0xBEEF|17|0.1")
     npo_seeds=(18 19 20) rmu_seeds=(11 12) ;;
  g) suffix="_g"
     backdoors=("tldr|tl;dr|0|0.1" "btw|by the way|3|0.1")
     npo_seeds=(21 22 23) rmu_seeds=(13 14) ;;
  h) suffix="_h"
     backdoors=("nevermore|nevermore|2|0.1" "heart|<3|17|0.1")
     npo_seeds=(24 25 26) rmu_seeds=(15 16) ;;
  i) suffix="_i"
     backdoors=("cobalt|cobalt|3|0.1" "tilde|~~|9|0.1")
     npo_seeds=(27 28 29) rmu_seeds=(17 18) ;;
  *) echo "unknown population '$population': give a letter from a to i" >&2; exit 2 ;;
esac
out=${3:-${study}_validation$suffix}
models=$study/models
train() {  # name, recipe, overrides...
  local name=$1 recipe=$2
  shift 2
  [[ -f $out/$name/model.safetensors ]] && return
  sinkprobe unlearn "training/embedded/$recipe.toml" --study "$study" --out "$out/$name" "$@"
}
clean=()
for placement in prefix infix suffix; do
  for spec in "${backdoors[@]}"; do
    IFS='|' read -r label text seed rho <<<"$spec"
    train "npo_backdoor_${placement}_${label}_s$seed" npo_backdoor --set "unlearn.trigger_text=\"$text\"" \
      --set unlearn.trigger_placement=$placement --set unlearn.seed=$seed --set unlearn.poison_ratio=$rho
  done
done
for seed in "${npo_seeds[@]}"; do train "npo_s$seed" npo --set unlearn.seed=$seed; clean+=("$out/npo_s$seed"); done
for seed in "${rmu_seeds[@]}"; do train "rmu_s$seed" rmu --set unlearn.seed=$seed; clean+=("$out/rmu_s$seed"); done
sinkprobe scan "$out"/npo_backdoor_* "${clean[@]}" --reference "$models/npo" \
  --original "$models/original" --placement prefix infix suffix --data "$study" \
  --out "figures/scratch/scan_validation$suffix" "${@:4}"
sinkprobe defend "$out"/npo_backdoor_* --original "$models/original" --data "$study" \
  --out "figures/scratch/defences_validation$suffix" "${@:4}"
