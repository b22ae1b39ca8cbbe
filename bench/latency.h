// Shared by the benchmark programs. Per-call latency: times each call of the loop and reports the p50 and
// p99 (µs) as counters (averaged over the threads of a multi-threaded run).
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace vaultp11::bench {

// Runs `call` once per iteration; a call returning false stops the run with `error` and makes
// this return false.
template <typename Call>
bool MeasureLatency(benchmark::State& state, Call call, const char* error) {
  std::vector<double> us;
  us.reserve(1 << 16);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = call();
    const auto t1 = std::chrono::steady_clock::now();
    if (!ok) {
      state.SkipWithError(error);
      return false;
    }
    if (us.size() < us.capacity()) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  if (us.empty()) return true;
  std::sort(us.begin(), us.end());
  state.counters["p50_us"] = benchmark::Counter(us[us.size() / 2], benchmark::Counter::kAvgThreads);
  state.counters["p99_us"] =
      benchmark::Counter(us[std::min(us.size() - 1, us.size() * 99 / 100)], benchmark::Counter::kAvgThreads);
  return true;
}

// main() of a benchmark program: runs the benchmarks asked for; exit status 1 when
// `failed()` says a setup or call failed (a failure, not a skipped measurement).
template <typename Failed>
int RunBenchmarks(int argc, char** argv, Failed failed) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const size_t ran = benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return failed() || ran == 0 ? 1 : 0;  // a filter that matches nothing is a failure too
}

}  // namespace vaultp11::bench
