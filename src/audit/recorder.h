// The recorder: the bounded queue between the callers' threads and the one writer thread that
// formats events and hands them to the sinks in batches. A caller never waits on I/O: Submit
// takes a lock, moves the event into the queue and returns; the writer wakes every
// kWriteInterval, or at once when a batch's worth is waiting or a flush is asked for.
//
// A full queue applies the overflow policy: kBlock waits for room; kDrop counts the event as
// dropped and returns, and the writer then writes an "AuditEventsDropped" event carrying the
// count. Critical events (logins, denials) are never dropped: they wait for room under either
// policy.
//
// Without threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS) Submit writes synchronously.
//
// Coalescing (RecorderOptions::coalesce): a denial (resultSignature Forbidden or Unauthorized,
// which includes failed logins) identical to one written less than `coalesce` before it (same
// operation, result, identity, object, mechanism and member; the process is the recorder's) is
// not written on its own: the first one of a window is written at once, the others are
// counted, and when the window ends (or the recorder stops) one summary event is written: the
// first one's fields with properties "repeatCount" (how many more there were), "firstTime"
// and "lastTime". So no denial is lost, the count says how many. Successes and other failures
// are never coalesced. At most kMaxCoalesced windows are open at once; denials of further
// kinds are written one by one.

#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "audit/event.h"
#include "audit/sink.h"
#include "config/config.h"
#include "util/fork_parking.h"
#include "util/secure_bytes.h"

namespace vaultp11::audit {

enum class Overflow { kBlock, kDrop };

struct RecorderOptions {
  size_t queue_size = 65536;
  Overflow overflow = Overflow::kBlock;
  bool threaded = true;
  std::chrono::milliseconds write_interval{50};
  size_t batch_size = 4096;  // a waiting batch this large wakes the writer early
  std::chrono::milliseconds coalesce{0};  // the window for identical denials (0: none)
};

struct ChainEnd;
// Records the end of a file sink's chain outside the log (`sink`: its path); see
// FileSinkOptions::anchor.
using AnchorFn = std::function<Status(const std::string& sink, const ChainEnd& end)>;

struct RecorderStats {
  uint64_t submitted = 0;  // events accepted into the queue (or written, unthreaded)
  uint64_t written = 0;    // events handed to the sinks
  uint64_t dropped = 0;    // events dropped on a full queue (kDrop)
  uint64_t sink_errors = 0;  // failed sink writes
  uint64_t coalesced = 0;    // denials counted in a summary instead of written on their own
};

class Recorder {
 public:
  // `failing`: per sink, whether it is known to be failing (reported already).
  Recorder(RecorderOptions opts, std::vector<std::unique_ptr<Sink>> sinks, Caller caller,
           std::vector<bool> failing = {});
  ~Recorder();  // Stop()
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // The recorder for `cfg.audit`: one sink per entry, each opened now. A sink that fails to
  // open fails the whole when audit.required is true (the message names the sink); otherwise
  // it is logged once and kept (it is tried again on every batch). `head_key` signs file
  // sinks' heads (store::DeriveKey(.., "audit-head")).
  // `anchor` (optional) records each file sink's chain end in the store.
  static Result<std::unique_ptr<Recorder>> Create(const config::AuditConfig& cfg, std::optional<SecureBytes> head_key,
                                                  bool threaded, AnchorFn anchor = {});

  void Submit(Event&& e);
  // Returns once every event submitted before the call has been handed to the sinks.
  void Flush();
  // Flushes, stops the writer and closes the sinks (each given up to `sink_timeout_ms`).
  void Stop(int sink_timeout_ms = 1000);
  bool empty_sinks() const { return sinks_.empty(); }
  // The process that created the recorder (a forked child must not use it).
  pid_t owner() const { return caller_.pid; }
  RecorderStats stats() const;

 private:
  void Run();
  // Formats and writes `batch` (writer thread, or the caller when unthreaded); with
  // `all_summaries`, also the summaries of coalescing windows not yet over.
  void WriteBatch(std::vector<Event>& batch, uint64_t dropped, bool all_summaries = false);
  // Coalescing (writer thread only, or under write_mu_ unthreaded): whether `e` is a repeat
  // inside an open window (then it is only counted); the summaries of windows that are over
  // (or all of them) are appended to `out`.
  struct Window;
  bool Coalesce(const Event& e, std::optional<Event>& summary);
  void TakeSummaries(std::vector<Event>& out, std::chrono::steady_clock::time_point now, bool all);
  static Event Summary(const Window& w);

  const RecorderOptions opts_;
  std::vector<std::unique_ptr<Sink>> sinks_;
  std::vector<bool> sink_failing_;  // per sink: the last write failed (reported once per streak)
  std::vector<uint64_t> sink_lost_;  // per sink: events in batches it failed to write this streak
  const Caller caller_;
  const bool threaded_;
  const std::string caller_json_;  // caller_ as JSON, made once
  std::string correlation_prefix_;  // random per recorder
  uint64_t next_correlation_ = 0;

  mutable std::mutex mu_;
  std::condition_variable wake_;      // the writer: work, flush or stop
  std::condition_variable room_;      // blocked submitters: the queue has room
  std::condition_variable written_;   // flushers: written_seq_ advanced
  std::vector<Event> queue_;
  uint64_t submitted_seq_ = 0;  // events ever queued
  uint64_t taken_seq_ = 0;      // events the writer took
  uint64_t written_seq_ = 0;    // events the writer finished
  uint64_t dropped_pending_ = 0;  // dropped since the last report
  bool flush_asked_ = false;
  bool stopping_ = false;
  bool stopped_ = false;
  RecorderStats stats_;
  // Held around WriteBatch (threaded: and the batch's release); taken before mu_.
  std::mutex write_mu_;
  // Open coalescing windows by the denial's key (see above).
  struct Window {
    Event first;
    std::chrono::steady_clock::time_point end;
    std::chrono::system_clock::time_point last_time;
    uint64_t repeats = 0;
  };
  static constexpr size_t kMaxCoalesced = 1024;
  std::unordered_map<std::string, Window> windows_;
  // The earliest end of an open window with repeats (the writer wakes for its summary); written
  // by WriteBatch and read by Run, both on the writer thread.
  std::chrono::steady_clock::time_point next_summary_ = std::chrono::steady_clock::time_point::max();
  std::thread writer_;
  // Parks the writer at a fork (util/fork_parking.h): it does all its work under write_mu_
  // (a batch formatted, written and freed) or mu_ (the queue).
  using Parking = ForkParking<Recorder, &Recorder::write_mu_, &Recorder::mu_>;
};

}  // namespace vaultp11::audit
