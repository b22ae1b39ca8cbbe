// bench_report: reads Google Benchmark JSON files (run with --benchmark_repetitions and
// --benchmark_report_aggregates_only) and prints a Markdown table that pairs each measured arm
// with its baseline from the same run: the module with SoftHSMv2 directly (`softhsm`) or raw
// OpenSSL (`evp`), audit `on` with audit `off`. Names are <group>/<operation>/<case>/<arm>.
//
//   bench_report FILE.json...
//
// The ratio is throughput: baseline median time / arm median time (1.00x = as fast).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace {

struct Figure {
  double median_ns = 0, p50_us = 0, p99_us = 0;
  bool have = false;
  std::map<std::string, double> counters;  // every counter of the run (scale figures)
};

// Case (name without arm, plus threads) -> arm -> figure.
using Table = std::map<std::string, std::map<std::string, Figure>>;

double Ns(const nlohmann::json& b) {
  const std::string unit = b.value("time_unit", "ns");
  const double t = b.value("real_time", 0.0);
  return unit == "ms" ? t * 1e6 : unit == "us" ? t * 1e3 : unit == "s" ? t * 1e9 : t;
}

void Read(const std::string& path, Table& table) {
  std::ifstream in(path);
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
  if (doc.is_discarded() || !doc.contains("benchmarks")) {
    std::cerr << "bench_report: " << path << " is not Google Benchmark JSON\n";
    return;
  }
  for (const auto& b : doc["benchmarks"]) {
    if (b.value("aggregate_name", "") != "median") continue;
    // run_name: group/op/case/arm[/threads:N][/real_time]
    std::string name = b.value("run_name", b.value("name", ""));
    std::vector<std::string> parts;
    size_t start = 0;
    for (size_t i = 0; i <= name.size(); ++i)
      if (i == name.size() || name[i] == '/') {
        std::string p = name.substr(start, i - start);
        if (!p.empty() && p.find(':') == std::string::npos && p != "real_time" && p != "manual_time") parts.push_back(p);
        start = i + 1;
      }
    if (parts.size() < 2) continue;
    const std::string arm = parts.back();
    parts.pop_back();
    std::string key;
    for (const auto& p : parts) key += (key.empty() ? "" : "/") + p;
    key += fmt::format(" ({} thread{})", b.value("threads", 1), b.value("threads", 1) == 1 ? "" : "s");
    Figure f;
    f.median_ns = Ns(b);
    f.p50_us = b.value("p50_us", 0.0);
    f.p99_us = b.value("p99_us", 0.0);
    f.have = true;
    for (const char* c : {"init_ms", "first_find_ms", "startup_heap_mb", "read_all_ms", "heap_mb", "bytes_per_object",
                          "delay_p50_ms", "delay_p99_ms"})
      if (b.contains(c)) f.counters[c] = b.value(c, 0.0);
    table[key][arm] = f;
  }
}

std::string Time(double ns) {
  return ns >= 1e6 ? fmt::format("{:.2f} ms", ns / 1e6) : fmt::format("{:.2f} µs", ns / 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_report FILE.json...\n";
    return 2;
  }
  Table table;
  for (int i = 1; i < argc; ++i) Read(argv[i], table);
  // arm -> (baseline arm, target ratio)
  const std::map<std::string, std::pair<std::string, double>> pairs = {
      {"module", {"softhsm", 0.97}}, {"on", {"off", 0.95}}};
  std::cout << "| case | arm | arm median | baseline | baseline median | throughput ratio | target | arm p50 / p99 | baseline p50 / p99 |\n"
            << "|---|---|---|---|---|---|---|---|---|\n";
  int rows = 0;
  for (const auto& [key, arms] : table)
    for (const auto& [arm, fig] : arms) {
      std::string base_arm;
      double target = 0;
      const bool numeric = !arm.empty() && arm.find_first_not_of("0123456789") == std::string::npos;
      if (numeric) {
        // Scale: each size against the smallest one measured (find by label: within 2x).
        for (const auto& [other, _] : arms)
          if (other.find_first_not_of("0123456789") == std::string::npos &&
              (base_arm.empty() || std::stoull(other) < std::stoull(base_arm)))
            base_arm = other;
        if (base_arm == arm) continue;
        target = key.find("find_by_label") != std::string::npos ? 0.5 : 0;
        // Processes: the module's 2 against its 1 (1.8x, or what the EVP baseline itself reaches).
        if (key.rfind("processes/", 0) == 0 && key.find("_module") != std::string::npos) {
          std::string evp_key = key;
          evp_key.replace(evp_key.find("_module"), 7, "_evp");
          auto e = table.find(evp_key);
          if (e != table.end() && e->second.count(base_arm) && e->second.count(arm))
            target = std::min(1.8, e->second.at(base_arm).median_ns / e->second.at(arm).median_ns);
        }
      } else if (arm.rfind("members-", 0) == 0) {
        // Pools: N members against one (a bigger pool signs faster when its members are on
        // separate cores).
        base_arm = "members-1";
        if (base_arm == arm) continue;
        target = 1.0;
      } else if (arm == "postgresql") {
        // The PostgreSQL store against SQLite: the store is off the crypto path (sign: 0.97x);
        // a warm search has no round trip (0.8x); others are reported only.
        base_arm = "sqlite";
        target = key.rfind("store/sign/", 0) == 0 ? 0.97 : key.rfind("store/find_by_label/", 0) == 0 ? 0.8 : 0;
      } else if (arm == "module") {
        base_arm = arms.count("softhsm") ? "softhsm" : "evp";
        target = base_arm == "softhsm" ? 0.97 : 0.95;
      } else if (pairs.count(arm)) {
        base_arm = pairs.at(arm).first;
        target = pairs.at(arm).second;
      } else {
        continue;
      }
      auto it = arms.find(base_arm);
      if (it == arms.end()) continue;
      const Figure& base = it->second;
      const double ratio = base.median_ns / fig.median_ns;
      const std::string goal = target == 0 ? std::string("-")
                                           : fmt::format(">= {:.2f}x {}", target, ratio >= target ? "(met)" : "(not met)");
      std::cout << fmt::format("| {} | {} | {} | {} | {} | **{:.3f}x** | {} | {:.1f} / {:.1f} µs | {:.1f} / {:.1f} µs |\n",
                               key, arm, Time(fig.median_ns), base_arm, Time(base.median_ns), ratio, goal,
                               fig.p50_us, fig.p99_us, base.p50_us, base.p99_us);
      ++rows;
    }
  // Threads: each arm's throughput with 2 threads against its own with 1 (target 1.8x where
  // the baseline itself scales that well).
  bool theader = false;
  for (const auto& [key, arms] : table) {
    const size_t at = key.find(" (2 threads)");
    if (at == std::string::npos) continue;
    auto one = table.find(key.substr(0, at) + " (1 thread)");
    if (one == table.end()) continue;
    std::map<std::string, double> scaling;
    for (const auto& [arm, fig] : arms)
      if (auto it = one->second.find(arm); it != one->second.end()) scaling[arm] = it->second.median_ns / fig.median_ns;
    if (scaling.empty()) continue;
    if (!theader) {
      std::cout << "\n| case | arm | 2 threads / 1 thread throughput | target |\n|---|---|---|---|\n";
      theader = true;
    }
    for (const auto& [arm, x] : scaling) {
      std::string base;
      for (const auto& [other, y] : scaling)
        if (other == "softhsm" || other == "evp" || other == "off") base = other;
      std::string goal = "-";
      if (!base.empty() && arm != base) {
        const double want = std::min(1.8, scaling.at(base));
        goal = fmt::format(">= {:.2f}x (1.8x, or {}'s own {:.2f}x) {}", want, base, scaling.at(base),
                           x >= want * 0.999 ? "(met)" : "(not met)");
      }
      std::cout << fmt::format("| {} | {} | **{:.2f}x** | {} |\n", key.substr(0, at), arm, x, goal);
    }
  }
  // Scale: start-up and memory per store size (the counters of both start-up benchmarks).
  std::map<unsigned long long, std::map<std::string, double>> sizes;
  for (const auto& [key, arms] : table)
    for (const auto& [arm, fig] : arms)
      if (!fig.counters.empty() && arm.find_first_not_of("0123456789") == std::string::npos)
        for (const auto& [c, v] : fig.counters) sizes[std::stoull(arm)][c] = v;
  if (!sizes.empty())
    std::cout << "\n| objects in the vault | C_Initialize (+ open, login) | first C_FindObjects | heap after both "
                 "| C_Initialize + a search reading every object | heap with every object read | per object |\n"
              << "|---|---|---|---|---|---|---|\n";
  for (const auto& [n, c] : sizes) {
    auto get = [&](const char* k) { return c.count(k) ? c.at(k) : 0.0; };
    const double init = get("init_ms");
    std::cout << fmt::format("| {} | {:.2f} ms {} | {:.3f} ms | {:.2f} MB | {:.0f} ms | {:.1f} MB | {:.0f} bytes |\n", n,
                             init, init < 100 ? "(< 100 ms: met)" : "(< 100 ms: not met)", get("first_find_ms"),
                             get("startup_heap_mb"), get("read_all_ms"), get("heap_mb"), get("bytes_per_object"));
  }
  // Several hosts: C_Initialize on each store with 100k objects, and how long a change made on
  // one host takes to be seen by a search on another.
  bool fheader = false;
  for (const auto& [key, arms] : table)
    for (const auto& [arm, fig] : arms) {
      const bool init = key.rfind("store/initialize/", 0) == 0, seen = key.rfind("fleet/change_seen", 0) == 0;
      if (!init && !seen) continue;
      if (!fheader) {
        std::cout << "\n| case | store | figure | target |\n|---|---|---|---|\n";
        fheader = true;
      }
      auto get = [&](const char* k) { return fig.counters.count(k) ? fig.counters.at(k) : 0.0; };
      if (init)
        std::cout << fmt::format("| {} | {} | C_Initialize + open + login {:.2f} ms | < 100 ms {} |\n", key, arm,
                                 get("init_ms"), get("init_ms") < 100 ? "(met)" : "(not met)");
      else
        std::cout << fmt::format("| {} | {} | delay median {:.2f} ms, p99 {:.2f} ms | median < 1000 ms {} |\n", key,
                                 arm, get("delay_p50_ms"), get("delay_p99_ms"),
                                 get("delay_p50_ms") < 1000 ? "(met)" : "(not met)");
    }
  if (rows == 0) {
    std::cerr << "bench_report: no pairs found\n";
    return 1;
  }
  return 0;
}
