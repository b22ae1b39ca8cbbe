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
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "audit/event.h"
#include "audit/sink.h"
#include "config/config.h"
#include "util/secure_bytes.h"

namespace vaultp11::audit {

enum class Overflow { kBlock, kDrop };

struct RecorderOptions {
  size_t queue_size = 65536;
  Overflow overflow = Overflow::kBlock;
  bool threaded = true;
  std::chrono::milliseconds write_interval{50};
  size_t batch_size = 4096;  // a waiting batch this large wakes the writer early
};

struct RecorderStats {
  uint64_t submitted = 0;  // events accepted into the queue (or written, unthreaded)
  uint64_t written = 0;    // events handed to the sinks
  uint64_t dropped = 0;    // events dropped on a full queue (kDrop)
  uint64_t sink_errors = 0;  // failed sink writes
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
  static Result<std::unique_ptr<Recorder>> Create(const config::AuditConfig& cfg, std::optional<SecureBytes> head_key,
                                                  bool threaded);

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
  // pthread_atfork handlers (recorder.cc): prepare parks every live writer; parent and child
  // release it.
  static void ForkPrepare();
  static void ForkRelease();
  // Formats and writes `batch` (writer thread, or the caller when unthreaded).
  void WriteBatch(std::vector<Event>& batch, uint64_t dropped);

  const RecorderOptions opts_;
  std::vector<std::unique_ptr<Sink>> sinks_;
  std::vector<bool> sink_failing_;  // per sink: the last write failed (reported once per streak)
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
  std::thread writer_;
};

}  // namespace vaultp11::audit
