#include "audit/recorder.h"

#include <openssl/rand.h>
#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "util/log.h"

namespace vaultp11::audit {
namespace {

// Every event names its host: a caller made without one gets this machine's.
Caller WithHost(Caller c) {
  if (c.host.empty()) c.host = HostName();
  return c;
}

}  // namespace

Recorder::Recorder(RecorderOptions opts, std::vector<std::unique_ptr<Sink>> sinks, Caller caller,
                   std::vector<bool> failing)
    : opts_(opts),
      sinks_(std::move(sinks)),
      sink_failing_(failing.size() == sinks_.size() ? std::move(failing) : std::vector<bool>(sinks_.size(), false)),
      caller_(WithHost(std::move(caller))),
      threaded_(opts_.threaded && !sinks_.empty()),
      caller_json_(CallerJson(caller_)) {
  unsigned char r[8];
  if (RAND_bytes(r, sizeof(r)) != 1) std::memset(r, 0, sizeof(r));
  correlation_prefix_ = fmt::format("{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-", r[0], r[1], r[2], r[3], r[4],
                                    r[5], r[6], r[7]);
  queue_.reserve(std::min<size_t>(opts_.queue_size, 1024));
  if (!threaded_) return;
  Parking::Track(this);
  writer_ = std::thread([this] { Run(); });
}

Recorder::~Recorder() {
  Stop();
  Parking::Forget(this);
}

void Recorder::Submit(Event&& e) {
  if (sinks_.empty()) return;
  if (!threaded_) {
    // Unthreaded: the caller writes.
    std::lock_guard<std::mutex> w(write_mu_);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stopped_) return;
      ++stats_.submitted;
    }
    std::vector<Event> one;
    one.push_back(std::move(e));
    WriteBatch(one, 0);
    return;
  }
  std::unique_lock<std::mutex> l(mu_);
  if (stopping_ || stopped_) return;  // the process is finishing: too late to record
  if (queue_.size() >= opts_.queue_size) {
    if (opts_.overflow == Overflow::kDrop && !e.critical) {
      ++dropped_pending_;
      ++stats_.dropped;
      return;
    }
    // A full queue is a full batch: the writer takes it as soon as it is free.
    wake_.notify_one();
    room_.wait(l, [&] { return queue_.size() < opts_.queue_size || stopped_; });
    if (stopped_) return;
  }
  queue_.push_back(std::move(e));
  ++submitted_seq_;
  ++stats_.submitted;
  // The writer wakes on its own every write_interval; only a full batch calls it early, so
  // the notify (a syscall when the writer sleeps) is paid once per batch, not per event.
  if (queue_.size() == std::min(opts_.batch_size, opts_.queue_size)) wake_.notify_one();
}

void Recorder::Flush() {
  if (!threaded_) return;  // unthreaded: nothing waits
  std::unique_lock<std::mutex> l(mu_);
  const uint64_t target = submitted_seq_;
  flush_asked_ = true;
  wake_.notify_one();
  written_.wait(l, [&] { return written_seq_ >= target || stopped_; });
}

void Recorder::Stop(int sink_timeout_ms) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopped_ || stopping_) return;
    stopping_ = true;
  }
  wake_.notify_one();
  if (writer_.joinable()) writer_.join();
  {
    // Denials still being counted get their summaries before the sinks close (the writer has
    // ended: this thread owns the windows now).
    std::lock_guard<std::mutex> w(write_mu_);
    std::vector<Event> none;
    if (!windows_.empty()) WriteBatch(none, 0, /*all_summaries=*/true);
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    stopped_ = true;
  }
  room_.notify_all();
  written_.notify_all();
  for (auto& s : sinks_) s->Close(sink_timeout_ms);
}

RecorderStats Recorder::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

void Recorder::Run() {
  pthread_setname_np(pthread_self(), "vaultp11-audit");  // shows in top -H, perf, gdb
  std::unique_lock<std::mutex> l(mu_);
  std::vector<Event> batch;  // declared after l: freed while mu_ is held (fork safety)
  for (;;) {
    wake_.wait_for(l, opts_.write_interval,
                   [&] { return stopping_ || flush_asked_ || queue_.size() >= std::min(opts_.batch_size, opts_.queue_size); });
    const bool last = stopping_;
    flush_asked_ = false;
    // A coalescing window that is over also wakes it, for its summary (Stop writes the rest).
    if (queue_.empty() && dropped_pending_ == 0 && (last || std::chrono::steady_clock::now() < next_summary_)) {
      if (last) return;
      continue;
    }
    batch.swap(queue_);
    const uint64_t dropped = dropped_pending_;
    dropped_pending_ = 0;
    taken_seq_ += batch.size();
    const uint64_t upto = taken_seq_;
    l.unlock();
    room_.notify_all();
    {
      // Everything the writer allocates or frees happens under write_mu_ or mu_ (fork safety).
      std::lock_guard<std::mutex> w(write_mu_);
      WriteBatch(batch, dropped);
      batch.clear();
    }
    l.lock();
    written_seq_ = upto;
    written_.notify_all();
    // Anything submitted while writing is written before stopping.
    if (last && queue_.empty()) return;
  }
}

namespace {

bool IsDenial(const Event& e) {
  const char* sig = ResultSignature(e.rv, e.denied, e.unauthenticated);
  return std::strcmp(sig, "Forbidden") == 0 || std::strcmp(sig, "Unauthorized") == 0;
}

// What makes two denials identical: every field FormatEvent writes except the times and the
// duration (the caller is the recorder's). Fields are separated by NULs and prefixed by their
// length where they are free text, so no two different events share a key.
std::string CoalesceKey(const Event& e) {
  std::string k;
  auto add = [&](std::string_view v) {
    k += std::to_string(v.size());
    k += ':';
    k += v;
    k += '\0';
  };
  add(e.operation != nullptr ? e.operation : "");
  add(e.kind != nullptr ? e.kind : "");
  k += fmt::format("{}|{}|{}|{}|{}|{}|", e.rv, e.denied, e.unauthenticated, e.pool, e.mechanism, e.count);
  for (const std::string* f : {&e.description, &e.principal, &e.auth_method, &e.resource, &e.name, &e.id, &e.member})
    add(*f);
  add(e.has_version ? std::string_view(e.version.data(), e.version.size()) : std::string_view());
  return k;
}

}  // namespace

bool Recorder::Coalesce(const Event& e, std::optional<Event>& summary) {
  if (opts_.coalesce.count() <= 0 || !e.extra.is_null() || !IsDenial(e)) return false;
  std::string key = CoalesceKey(e);
  auto it = windows_.find(key);
  if (it != windows_.end() && e.start < it->second.end) {
    ++it->second.repeats;
    it->second.last_time = e.time;
    next_summary_ = std::min(next_summary_, it->second.end);
    return true;
  }
  if (it != windows_.end()) {
    // Its window is over: its summary goes before this event, which opens the next window.
    if (it->second.repeats > 0) summary = Summary(it->second);
    windows_.erase(it);
  }
  if (windows_.size() < kMaxCoalesced) windows_.emplace(std::move(key), Window{e, e.start + opts_.coalesce, e.time, 0});
  return false;
}

Event Recorder::Summary(const Window& w) {
  Event s = w.first;
  s.time = w.last_time;
  s.extra = {{"repeatCount", w.repeats}, {"firstTime", FormatTime(w.first.time)}, {"lastTime", FormatTime(w.last_time)}};
  return s;
}

void Recorder::TakeSummaries(std::vector<Event>& out, std::chrono::steady_clock::time_point now, bool all) {
  next_summary_ = std::chrono::steady_clock::time_point::max();
  for (auto it = windows_.begin(); it != windows_.end();) {
    if (all || now >= it->second.end) {
      if (it->second.repeats > 0) out.push_back(Summary(it->second));
      it = windows_.erase(it);
      continue;
    }
    if (it->second.repeats > 0) next_summary_ = std::min(next_summary_, it->second.end);
    ++it;
  }
}

void Recorder::WriteBatch(std::vector<Event>& batch, uint64_t dropped, bool all_summaries) {
  std::vector<Record> out;
  out.reserve(batch.size() + 1);
  auto correlation = [&] {  // the prefix and the event's number in 16 hex digits
    const uint64_t n = ++next_correlation_;
    char be[8];  // big-endian
    for (int i = 0; i < 8; ++i) be[i] = static_cast<char>(n >> (56 - 8 * i));
    std::string id = correlation_prefix_;
    AppendHex(id, std::string_view(be, sizeof(be)));
    return id;
  };
  auto record = [&](const Event& e) {
    return Record{FormatEvent(e, caller_.host, caller_json_, correlation()), ResultSignature(e.rv, e.denied, e.unauthenticated)};
  };
  if (dropped > 0) {
    Event d = Start("AuditEventsDropped");
    d.Finish(CKR_FUNCTION_FAILED, fmt::format("{} events were dropped: the audit queue was full", dropped));
    d.extra = {{"dropped", dropped}};
    out.push_back(record(d));
  }
  uint64_t coalesced = 0;
  for (const Event& e : batch) {
    std::optional<Event> summary;
    if (Coalesce(e, summary)) {
      ++coalesced;
      continue;
    }
    if (summary) out.push_back(record(*summary));
    out.push_back(record(e));
  }
  if (!windows_.empty()) {
    std::vector<Event> summaries;
    TakeSummaries(summaries, std::chrono::steady_clock::now(), all_summaries);
    for (const Event& e : summaries) out.push_back(record(e));
  } else {
    next_summary_ = std::chrono::steady_clock::time_point::max();  // nothing counted: no wake-up due
  }
  if (out.empty()) {
    std::lock_guard<std::mutex> l(mu_);
    stats_.coalesced += coalesced;
    return;
  }
  uint64_t errors = 0;
  std::vector<Record> reports;  // sinks that started failing or came back
  std::vector<bool> failed_now(sinks_.size(), false);
  sink_lost_.resize(sinks_.size(), 0);
  for (size_t i = 0; i < sinks_.size(); ++i) {
    Status st = sinks_[i]->Write(out);
    if (!st.ok()) {
      ++errors;
      failed_now[i] = true;
      sink_lost_[i] += out.size();  // reported with the recovery: how much this sink missed
      // Reported once per failure streak, so a dead sink does not flood the log; the other
      // sinks get an event saying so.
      if (!sink_failing_[i]) {
        log::Error("audit sink {}: writing a batch of {} events failed: {}", sinks_[i]->Describe(), out.size(), st.error().message);
        Event f = Start("AuditSinkFailed");
        f.Finish(CKR_DEVICE_ERROR, st.error().message);
        f.extra = {{"sink", sinks_[i]->Describe()}, {"batch", out.size()}};
        reports.push_back(record(f));
      }
      sink_failing_[i] = true;
    } else if (sink_failing_[i]) {
      log::Warning("audit sink {}: writing again", sinks_[i]->Describe());
      Event r = Start("AuditSinkRecovered");
      r.Finish(CKR_OK);
      r.extra = {{"sink", sinks_[i]->Describe()}, {"lost", sink_lost_[i]}};
      reports.push_back(record(r));
      sink_failing_[i] = false;
      sink_lost_[i] = 0;
    }
  }
  if (!reports.empty()) {
    for (size_t i = 0; i < sinks_.size(); ++i)
      if (!failed_now[i]) (void)sinks_[i]->Write(reports);
  }
  std::lock_guard<std::mutex> l(mu_);
  stats_.written += out.size();
  stats_.sink_errors += errors;
  stats_.coalesced += coalesced;
}

}  // namespace vaultp11::audit
