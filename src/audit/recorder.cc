#include "audit/recorder.h"

#include <openssl/rand.h>
#include <pthread.h>

#include <algorithm>
#include <cstring>

#include "util/log.h"

namespace vaultp11::audit {
namespace {

// Fork safety (README "PKCS#11 conformance notes"). A process may fork while the writer thread
// is mid-batch: inside a sink, OpenSSL or the allocator, holding locks that no thread of the
// child would ever release. The prepare handler takes, for every live threaded recorder, the
// two locks under which the writer does all its work (write_mu_ around formatting, writing
// and freeing a batch; mu_ around the queue), so at the fork the writer is parked waiting for
// one of them or sleeping on its condition variable, holding nothing. Parent and child
// release them; the child never uses the parent's writer (its module is set aside).
std::mutex& LiveMu() {
  static std::mutex* mu = new std::mutex;  // never destroyed: handlers may run during exit
  return *mu;
}
std::vector<Recorder*>& Live() {
  static auto* live = new std::vector<Recorder*>;
  return *live;
}

}  // namespace

void Recorder::ForkPrepare() {
  LiveMu().lock();
  for (Recorder* r : Live()) {
    r->write_mu_.lock();
    r->mu_.lock();
  }
}

void Recorder::ForkRelease() {
  auto& live = Live();
  for (auto it = live.rbegin(); it != live.rend(); ++it) {
    (*it)->mu_.unlock();
    (*it)->write_mu_.unlock();
  }
  LiveMu().unlock();
}

Recorder::Recorder(RecorderOptions opts, std::vector<std::unique_ptr<Sink>> sinks, Caller caller,
                   std::vector<bool> failing)
    : opts_(opts),
      sinks_(std::move(sinks)),
      sink_failing_(failing.size() == sinks_.size() ? std::move(failing) : std::vector<bool>(sinks_.size(), false)),
      caller_(std::move(caller)),
      threaded_(opts_.threaded && !sinks_.empty()),
      caller_json_(CallerJson(caller_)) {
  unsigned char r[8];
  if (RAND_bytes(r, sizeof(r)) != 1) std::memset(r, 0, sizeof(r));
  correlation_prefix_ = fmt::format("{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-", r[0], r[1], r[2], r[3], r[4],
                                    r[5], r[6], r[7]);
  queue_.reserve(std::min<size_t>(opts_.queue_size, 1024));
  if (!threaded_) return;
  static std::once_flag at_fork;
  std::call_once(at_fork, [] { pthread_atfork(&ForkPrepare, &ForkRelease, &ForkRelease); });
  {
    std::lock_guard<std::mutex> l(LiveMu());
    Live().push_back(this);
  }
  writer_ = std::thread([this] { Run(); });
}

Recorder::~Recorder() {
  Stop();
  std::lock_guard<std::mutex> l(LiveMu());
  auto& live = Live();
  live.erase(std::remove(live.begin(), live.end(), this), live.end());
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
    if (queue_.empty() && dropped_pending_ == 0) {
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

void Recorder::WriteBatch(std::vector<Event>& batch, uint64_t dropped) {
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
    return Record{FormatEvent(e, caller_json_, correlation()), ResultSignature(e.rv, e.denied, e.unauthenticated)};
  };
  if (dropped > 0) {
    Event d = Start("AuditEventsDropped");
    d.Finish(CKR_FUNCTION_FAILED, fmt::format("{} events were dropped: the audit queue was full", dropped));
    d.extra = {{"dropped", dropped}};
    out.push_back(record(d));
  }
  for (const Event& e : batch) out.push_back(record(e));
  uint64_t errors = 0;
  std::vector<Record> reports;  // sinks that started failing or came back
  std::vector<bool> failed_now(sinks_.size(), false);
  for (size_t i = 0; i < sinks_.size(); ++i) {
    Status st = sinks_[i]->Write(out);
    if (!st.ok()) {
      ++errors;
      failed_now[i] = true;
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
      r.extra = {{"sink", sinks_[i]->Describe()}};
      reports.push_back(record(r));
      sink_failing_[i] = false;
    }
  }
  if (!reports.empty()) {
    for (size_t i = 0; i < sinks_.size(); ++i)
      if (!failed_now[i]) (void)sinks_[i]->Write(reports);
  }
  std::lock_guard<std::mutex> l(mu_);
  stats_.written += out.size();
  stats_.sink_errors += errors;
}

}  // namespace vaultp11::audit
