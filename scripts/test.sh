#!/usr/bin/env bash
# Builds vaultp11 and runs every test suite; what CI runs (.ci/run).
#
#   1. installs missing build and test packages (apt-get)
#   2. build/       (debugoptimized): all suites (unit, abi, consumer)
#   3. build-asan/  (AddressSanitizer + UBSan): the unit and abi suites
#   4. prints "N passed, M failed[, K skipped]" over both runs; exits non-zero on any failure
#
# Environment: JOBS (default 2) for ninja and meson test.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

JOBS=${JOBS:-2}
started=$SECONDS
passed=0
failed=0
skipped=0
problems=()

log() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }

ensure_packages "${VAULTP11_BUILD_PACKAGES[@]}" "${VAULTP11_CONSUMER_PACKAGES[@]}"
ensure_backports_package pkcs11-provider || echo "deps: pkcs11-provider unavailable; its consumer test will skip"

# setup DIR OPTION...: configures DIR with the options, reusing it when it is a valid meson
# build dir (--reconfigure), starting over (--wipe) when reconfiguring fails.
setup() {
  local dir=$1
  shift
  if [[ -f $dir/meson-private/coredata.dat ]]; then
    meson setup --reconfigure "$dir" "$@" || meson setup --wipe "$dir" "$@"
  else
    rm -rf "$dir"
    meson setup "$dir" "$@"
  fi
}

# count LOGFILE: adds meson test's summary counts to the totals.
count() {
  local f=$1 ok fail unexpected timeout skip
  ok=$(awk '/^Ok:/ {print $2; exit}' "$f")
  fail=$(awk '/^Fail:/ {print $2; exit}' "$f")
  unexpected=$(awk '/^Unexpected Pass:/ {print $3; exit}' "$f")
  timeout=$(awk '/^Timeout:/ {print $2; exit}' "$f")
  skip=$(awk '/^Skipped:/ {print $2; exit}' "$f")
  passed=$((passed + ${ok:-0}))
  failed=$((failed + ${fail:-0} + ${unexpected:-0} + ${timeout:-0}))
  skipped=$((skipped + ${skip:-0}))
}

# build_and_test NAME DIR "SETUP OPTIONS" TEST-ARGS...
build_and_test() {
  local name=$1 dir=$2 opts=$3
  shift 3
  local tlog="$root/$dir/test-summary.log"
  log "$name: configure $dir"
  # shellcheck disable=SC2086
  if ! setup "$dir" $opts; then
    problems+=("$name: meson setup failed")
    failed=$((failed + 1))
    return
  fi
  log "$name: build"
  if ! ninja -C "$dir" -j "$JOBS"; then
    problems+=("$name: build failed")
    failed=$((failed + 1))
    return
  fi
  log "$name: test $*"
  local rc=0
  meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes "$JOBS" "$@" 2>&1 | tee "$tlog" || rc=$?
  if ! grep -q '^Ok:' "$tlog"; then
    problems+=("$name: meson test gave no summary (exit $rc)")
    failed=$((failed + 1))
    return
  fi
  count "$tlog"
  ((rc == 0)) || problems+=("$name: meson test exited $rc")
}

build_and_test "release" build "-Dbuildtype=debugoptimized" 

# The benchmarks run once briefly to keep them working; their speed is not judged here.
log "release: benchmarks (smoke run)"
if ! meson test -C build --no-rebuild --benchmark --print-errorlogs; then
  problems+=("release: a benchmark failed to run")
  failed=$((failed + 1))
fi

ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:print_stacktrace=1:abort_on_error=1" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  build_and_test "asan" build-asan \
  "-Dbuildtype=plain -Doptimization=1 -Ddebug=true -Db_sanitize=address,undefined -Db_lundef=false -Dbenchmarks=disabled" \
  --suite unit --suite abi

log "done"
for p in "${problems[@]}"; do echo "problem: $p"; done
echo "total time: $((SECONDS - started))s"
echo "$passed passed, $failed failed, $skipped skipped"
if ((failed > 0 || ${#problems[@]} > 0)); then exit 1; fi
