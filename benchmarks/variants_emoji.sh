#!/usr/bin/env bash
# Writes benchmarks/results/issue12/variants_emoji.md: every emoji run of issue 12 with the (epoch,
# head weighting) the validation rule selects, its val and test R@1, mean val R@1 after epoch 10
# and test R@1 at the last epoch. Reads only the committed metrics.jsonl files.
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results/issue12/runs
# label=folder under $R; "%s" in both is replaced by each seed of the row's seed list.
rows=(
  "baseline_512_s%s=emoji/discriminative_seed%s 0 1 2"
  "baseline_2048_s0=emoji_variants/discriminative_d2048_seed0"
  "baseline_128_15ep_s0=emoji_variants/discriminative128_seed0"
  "baseline_512_fclr1e-3_s0=emoji_variants/discriminative_fclr1e-3_seed0"
  "baseline_512_96px_s%s=emoji_96px/discriminative_seed%s 0 1 2"
  "baseline_512_gem_96px_s%s=emoji_variants/discriminative_gem_96px_seed%s 0 1"
  "published_s%s=emoji/diva_published_seed%s 0 1 2"
  "published_t0.1_15ep_s0=emoji_variants/v_t0.1_seed0"
  "aux_t0.1_s%s=emoji/diva_aux_seed%s 0 1 2"
  "aux_t0.1_rho150_s0=emoji_variants/v_auxdisc1_t0.1_rho150_seed0"
  "aux_t0.1_pool_s0=emoji_variants/v_auxdisc1_t0.1_pool_seed0"
  "aux_t0.1_dims256_s0=emoji_variants/diva_chosen_dims256_seed0"
  "aux_t0.1_realaug_s%s=emoji_variants/diva_chosen_realaug_seed%s 0 1 2"
  "aux_t0.1_alpha0.1_s0=emoji_variants/diva_chosen_alpha0.1_seed0"
  "aux_t0.1_fixed_s0=emoji_variants/diva_chosen_fixed_seed0"
  "aux_t0.1_combined_s0=emoji_variants/diva_chosen_auxcl_seed0"
  "combined_t0.1_s%s=emoji/diva_chosen_seed%s 0 1 2"
  "combined_t0.1_4x512_s0=emoji_variants/diva_chosen_cl_d512_seed0"
  "combined_t0.1_q30_m0.99_s0=emoji_variants/diva_chosen_cl_q30_m0.99_seed0"
  "combined_t0.1_96px_s0=emoji_variants/diva_chosen_cl_96px_seed0"
  "combined_t0.1_pool_96px_s%s=emoji_96px/diva_chosen_seed%s 0 1 2"
  "combined_t0.1_pool_noaux_96px_s%s=emoji_variants/diva_chosen_noaux_96px_seed%s 0 1 2"
  "combined_t0.1_noaux_96px_s0=emoji_variants/diva_chosen_noaux_avg_96px_seed0"
)
runs=() labels=()
for row in "${rows[@]}"; do
  read -r spec seeds <<<"$row"
  for s in ${seeds:-0}; do
    labels+=("$(printf "${spec%%=*}" "$s")") runs+=("$R/$(printf "${spec#*=}" "$s")")
  done
done
join() { local IFS=,; echo "$*"; }
python benchmarks/plot_diagnostics.py --out "${TMPDIR:-/tmp}/variants_emoji.png" \
  --table benchmarks/results/issue12/variants_emoji.md --runs "$(join "${runs[@]}")" \
  --labels "$(join "${labels[@]}")"
