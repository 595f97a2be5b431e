#!/usr/bin/env bash
# Runs each fuzz target for a bounded time, one after another (two cores:
# libFuzzer uses one, and a second target would only halve both), from its
# committed seeds plus the local corpus, with its dictionary if it has one.
#
#   fuzz/run.sh              60 s per target, every target
#   fuzz/run.sh 30           30 s per target
#   fuzz/run.sh 600 route_match path_normalize
#   FUZZ_BUILD="--dev -s none" fuzz/run.sh 30     what .ci/run does
#
# FUZZ_BUILD holds extra `cargo fuzz build/run` flags. Empty (the default)
# means release code with AddressSanitizer: the deep run. `--dev -s none`
# (debug code with overflow checks, no sanitizer) builds in a fifth of the
# time and runs 3-7x slower: the CI smoke run.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Exits non-zero if
# any target found a crash; the input is saved under fuzz/artifacts/<target>/
# and printed. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(route_files path_normalize route_match json_compare)

# With its default sanitizer, cargo-fuzz passes `-Zsanitizer=address` to
# rustc, which only a nightly compiler accepts. The one toolchain here is
# stable and no other can be fetched; RUSTC_BOOTSTRAP=1 makes stable rustc
# accept `-Z` flags. (`-s none` needs none: the coverage instrumentation
# flags are stable. It is set anyway, so that switching modes does not
# rebuild.) It is set for these commands only, never for the main build.
export RUSTC_BOOTSTRAP=1
read -ra build <<<"${FUZZ_BUILD:-}"

cargo fuzz build "${build[@]}"
failed=()
for target in "${targets[@]}"; do
  echo "--- fuzz $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  options=(-max_total_time="$seconds" -timeout=20 -print_final_stats=1)
  [ -f "fuzz/$target.dict" ] && options+=(-dict="fuzz/$target.dict")
  cargo fuzz run "${build[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- "${options[@]}" \
    || failed+=("$target")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
