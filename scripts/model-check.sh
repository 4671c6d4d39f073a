#!/usr/bin/env bash
# Explores the grouped-commit protocol model (models/group_commit.pml, docs/GROUP-COMMIT.md) exhaustively with
# spin for small sizes: safety (any assertion violation or invalid end state fails) and liveness (with weak
# fairness, every run merges the whole partition: ltl all_merged). It also checks that the model can fail:
# with the checkpoint compare-and-set removed, or acknowledgements sent before the merge, the safety search
# must find a violation; with a refusal that sticks to its batch id, the liveness search must find a cycle.
# `--long` adds larger sizes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model="$root/models/group_commit.pml"
if ! command -v spin >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq spin >/dev/null
  else
    echo "model-check: spin is required (apt-get install spin)" >&2; exit 1
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# check NAME MODEL EXPECT DEFINES...: EXPECT is "ok" (no error may be found) or "fail" (one must be).
# MODE (environment) is "safety" (the default: assertions and end states, the ltl claim left out) or
# "liveness" (acceptance cycles of the ltl claim under weak fairness).
check() {
  local name=$1 file=$2 expect=$3; shift 3
  local cflags=(-DSAFETY -DNOCLAIM) run=()
  if [ "${MODE:-safety}" = liveness ]; then cflags=(-DNFAIR=3); run=(-a -f); name="$name (liveness)"; fi
  rm -f "$work/out.txt"
  (cd "$work" && spin "$@" -a "$file" >/dev/null \
    && gcc -O2 -w "${cflags[@]}" -DCOLLAPSE -DMEMLIM=${MODEL_MEMLIM_MB:-4000} -o pan pan.c \
    && ./pan "${run[@]}" -m4000000 > out.txt 2>&1) || true
  local errors states
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$work/out.txt")
  states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$work/out.txt")
  if grep -q "out of memory\|max search depth too small" "$work/out.txt"; then
    echo "model-check: $name: the search did not finish (memory or depth)" >&2; cat "$work/out.txt" >&2; return 1
  fi
  case "$expect:$errors" in
    ok:0) echo "model-check: $name: no violation in $states states" ;;
    fail:[1-9]*) echo "model-check: $name: violation found, as it must be" ;;
    *) echo "model-check: $name: expected $expect, got errors=${errors:-none}" >&2; cat "$work/out.txt" >&2; return 1 ;;
  esac
}

for mode in safety liveness; do
  MODE=$mode check "2 records, 2 workers, 2 loaders, 1 fault" "$model" ok -DR=2 -DFAULTS=1
  MODE=$mode check "2 records, 2 workers, 1 loader, 2 faults" "$model" ok -DR=2 -DFAULTS=2 -DL=1
  MODE=$mode check "2 records, 1 worker, 2 loaders, 2 faults" "$model" ok -DR=2 -DFAULTS=2 -DW=1
done
if [ "${1:-}" = --long ]; then
  MODEL_MEMLIM_MB=12000 check "2 records, 2 workers, 2 loaders, 2 faults" "$model" ok -DR=2 -DFAULTS=2
  MODE=liveness check "2 records, 2 workers, 2 loaders, 2 faults" "$model" ok -DR=2 -DFAULTS=2
  MODE=liveness check "3 records, 2 workers, 1 loader, 1 fault" "$model" ok -DR=3 -DFAULTS=1 -DL=1
fi

# The model can fail.
sed 's/PREV(b) == ck ->/true ->/; s/PREV(b) != ck ->/false ->/' "$model" > "$work/no_cas.pml"
check "mutant without the checkpoint compare-and-set" "$work/no_cas.pml" fail -DR=2 -DFAULTS=1
sed 's/reg_state\[mine\[r\]\] == MERGED ->/reg_state[mine[r]] != REFUSED ->/; s/^#define DECIDED(r) .*/#define DECIDED(r) (r <= R \&\& mine[r] != NONE)/' \
  "$model" > "$work/early_ack.pml"
check "mutant acknowledging before the merge" "$work/early_ack.pml" fail -DR=2 -DFAULTS=1
sed 's/reg_state\[b\] == ABSENT || reg_state\[b\] == REFUSED ->/reg_state[b] == ABSENT ->/' "$model" > "$work/sticky.pml"
MODE=liveness check "mutant whose refusal sticks to the batch id" "$work/sticky.pml" fail -DR=2 -DFAULTS=1
