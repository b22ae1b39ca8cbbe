#!/usr/bin/env bash
# Builds the benchmarks (release build in build-bench/) and runs them with repetitions; prints
# the table of ratios (each arm against its baseline measured in the same run, with p50/p99)
# and writes it, with the machine and the command, to the top of bench/RESULTS.md (the notes
# below the "## Notes" line are kept).
#
#   ./scripts/bench.sh            REPS=5 MIN_TIME=0.5 by default
#   REPS=3 MIN_TIME=0.2 ./scripts/bench.sh
#
# Run it on an otherwise idle machine: the ratios cancel machine speed, not other load.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
ensure_packages "${VAULTP11_BUILD_PACKAGES[@]}" "${VAULTP11_CONSUMER_PACKAGES[@]}"

REPS=${REPS:-5}
MIN_TIME=${MIN_TIME:-0.5}
dir=build-bench
if [[ -f $dir/meson-private/coredata.dat ]]; then
  meson setup --reconfigure "$dir" -Dbuildtype=release -Dbenchmarks=enabled >/dev/null
else
  meson setup "$dir" -Dbuildtype=release -Dbenchmarks=enabled >/dev/null
fi
ninja -C "$dir" >/dev/null

export VAULTP11_MODULE=$root/$dir/src/abi/libvaultp11.so
export VAULTP11_CLI=$root/$dir/src/cli/vaultp11  # bench_hsm's pools: `vaultp11 pool init`
# bench_hsm runs twice: the HSM route, then (VAULTP11_BENCH_POOLS=1) the pools on their own.
for run in bench_sign bench_hsm bench_hsm_pool bench_scale bench_store; do
  echo "--- $run" >&2
  b=${run%_pool}
  # The repetitions of an arm and of its baseline run interleaved in random order, so a slow
  # minute of a shared machine falls on both alike (scale and store keep their order: their
  # cases build or open stores of their own, and store's start-up case fills its store once).
  interleave=$([[ $run == bench_scale || $run == bench_store ]] && echo false || echo true)
  VAULTP11_BENCH_POOLS=$([[ $run == *_pool ]] && echo 1 || echo 0) \
    "$dir/bench/$b" --benchmark_repetitions="$REPS" --benchmark_report_aggregates_only=true \
    --benchmark_enable_random_interleaving="$interleave" \
    --benchmark_min_time="$MIN_TIME" --benchmark_out="$dir/$run.json" --benchmark_out_format=json >&2
done
table=$("$dir/bench/bench_report" "$dir/bench_sign.json" "$dir/bench_hsm.json" "$dir/bench_hsm_pool.json" \
  "$dir/bench_scale.json" "$dir/bench_store.json")
echo "$table"

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
notes=$(sed -n '/^## Notes/,$p' bench/RESULTS.md 2>/dev/null || true)
{
  echo "# Benchmark results"
  echo
  echo "Produced by \`./scripts/bench.sh\` (REPS=$REPS, MIN_TIME=$MIN_TIME: medians of $REPS repetitions, interleaved) on"
  echo "$(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), on $(nproc) vCPUs ($cpu),"
  echo "$(. /etc/os-release && echo "$PRETTY_NAME"), $(g++ --version | head -1), $(openssl version | cut -d' ' -f1-2),"
  echo "SoftHSM $(dpkg-query -W -f '${Version}' softhsm2 2>/dev/null || echo '?'). The ratio is throughput against the baseline measured in"
  echo "the same run (1.000x = as fast); p50/p99 are per-call latencies."
  echo
  echo "$table"
  echo
  if [[ -n $notes ]]; then echo "$notes"; else echo "## Notes"; fi
} >bench/RESULTS.md.new
mv bench/RESULTS.md.new bench/RESULTS.md
echo "bench/RESULTS.md written" >&2
