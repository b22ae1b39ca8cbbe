#include "audit/net_sinks.h"

#include "audit/event.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <utility>
#include <vector>

#include <fmt/chrono.h>
#include <fmt/ranges.h>

#include "util/log.h"

namespace vaultp11::audit {
namespace {

using Json = nlohmann::json;

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// A new AF_UNIX socket of `type` connected to `path`, or -1 with errno set.
int ConnectUnix(const std::string& path, int type) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) {
    errno = EDESTADDRREQ;
    return -1;
  }
  if (path.size() >= sizeof(addr.sun_path)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}


// The longest prefix of `s` of at most `n` bytes that does not split a UTF-8 sequence.
size_t Utf8Prefix(const std::string& s, size_t n) {
  if (n >= s.size()) return s.size();
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return n;
}

}  // namespace

// ---- syslog ----------------------------------------------------------------------------------

std::optional<int> SyslogFacility(std::string_view name) {
  static constexpr std::array<std::pair<std::string_view, int>, 12> kFacilities = {{
      {"user", 1}, {"daemon", 3}, {"auth", 4}, {"authpriv", 10},
      {"local0", 16}, {"local1", 17}, {"local2", 18}, {"local3", 19},
      {"local4", 20}, {"local5", 21}, {"local6", 22}, {"local7", 23},
  }};
  for (const auto& [n, code] : kFacilities)
    if (n == name) return code;
  return std::nullopt;
}

int SyslogSeverity(std::string_view sig) {
  if (sig == "OK") return 6;
  if (sig == "BadRequest" || sig == "NotFound" || sig == "Conflict" || sig == "Cancelled") return 5;
  if (sig == "Unauthorized" || sig == "Forbidden") return 4;
  return 3;
}

SyslogSink::SyslogSink(SyslogSinkOptions options) : opts_(std::move(options)) {
  if (opts_.socket.empty()) opts_.socket = "/dev/log";
  facility_ = SyslogFacility(opts_.facility);
  // The tag ends at a space, ':' or '[' for the daemon's parser (config.cc refuses them too).
  for (char c : opts_.ident.substr(0, 48)) {
    const bool bad = c <= ' ' || c > '~' || c == ':' || c == '[' || c == ']';
    ident_ += bad ? '_' : c;
  }
  if (ident_.empty()) ident_ = "vaultp11";
}

SyslogSink::~SyslogSink() { CloseFd(); }

std::string SyslogSink::Describe() const { return "syslog " + opts_.socket; }

void SyslogSink::CloseFd() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

SyslogSink::SendResult SyslogSink::Connect() {
  CloseFd();
  fd_ = ConnectUnix(opts_.socket, SOCK_DGRAM);
  if (fd_ < 0) return {errno, "cannot connect"};
  return {};
}

Status SyslogSink::Open() {
  if (!facility_)
    return Err(CKR_FUNCTION_FAILED, "syslog socket {}: unknown facility \"{}\" (auth, authpriv, daemon, user, local0 .. local7)",
               opts_.socket, opts_.facility);
  SendResult r = Connect();
  if (r.err != 0) return Err(CKR_FUNCTION_FAILED, "syslog socket {}: {}: {}", opts_.socket, r.what, std::strerror(r.err));
  return OkStatus();
}

void SyslogSink::Close(int /*timeout_ms*/) { CloseFd(); }

std::string SyslogSink::Format(const Record& event) const {
  static constexpr std::array<const char*, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const int pri = facility_.value_or(1) * 8 + SyslogSeverity(event.result_signature);
  const time_t t = time(nullptr);
  struct tm lt {};
  localtime_r(&t, &lt);
  // Month names by hand: strftime's %b follows the host application's locale.
  return fmt::format("<{}>{} {:2d} {:02d}:{:02d}:{:02d} {}[{}]: {}", pri, kMonths[static_cast<size_t>(lt.tm_mon) % 12],
                     lt.tm_mday, lt.tm_hour, lt.tm_min, lt.tm_sec, ident_, getpid(), event.json);
}

SyslogSink::SendResult SyslogSink::SendDatagram(const std::string& msg, std::chrono::steady_clock::time_point deadline) {
  if (opts_.max_message_bytes != 0 && msg.size() > opts_.max_message_bytes) return {EMSGSIZE, "cannot send"};
  bool reconnected = false;
  for (;;) {
    if (fd_ < 0) {
      SendResult c = Connect();
      if (c.err != 0) return c;
    }
    if (send(fd_, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) return {};
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EMSGSIZE) return {e, "cannot send"};
    if (e == EAGAIN || e == EWOULDBLOCK) {
      // The daemon's queue is full: wait for room, within the batch's budget.
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0) return {e, "cannot send (the daemon is not keeping up)"};
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) return {errno, "cannot send"};
      continue;
    }
    if (e == ECONNREFUSED || e == ENOTCONN || e == ENOENT || e == EPIPE || e == ECONNRESET) {
      // The daemon restarted (its old socket is gone): connect to the new one, once.
      CloseFd();
      if (reconnected) return {e, "cannot send"};
      reconnected = true;
      continue;
    }
    return {e, "cannot send"};
  }
}

SyslogSink::SendResult SyslogSink::SendEvent(const Record& record, std::chrono::steady_clock::time_point deadline) {
  const std::string whole = Format(record);
  SendResult r = SendDatagram(whole, deadline);
  if (r.err != EMSGSIZE) return r;

  // Too large for one datagram: shrink the event step by step rather than lose it, and say so.
  const Json event = Json::parse(record.json, nullptr, false);
  if (!event.is_object()) return r;
  Json e = event;
  std::vector<std::string> removed;
  auto attempt = [&] {
    Json s = e;
    s["truncated"] = fmt::format("{}: the event of {} bytes is larger than the syslog socket takes",
                                 fmt::join(removed, ", "), whole.size());
    return SendDatagram(Format(Record{Dump(s), record.result_signature}), deadline);
  };
  if (e.erase("properties") > 0) {
    removed.push_back("properties removed");
    r = attempt();
    if (r.err != EMSGSIZE) return r;
  }
  if (auto it = e.find("resultDescription"); it != e.end() && it->is_string()) {
    const std::string full = it->get<std::string>();
    removed.emplace_back();
    for (size_t keep = full.size() / 2;; keep /= 2) {
      const size_t n = Utf8Prefix(full, keep);
      e["resultDescription"] = full.substr(0, n) + "...";
      removed.back() = fmt::format("resultDescription cut to {} of {} bytes", n, full.size());
      r = attempt();
      if (r.err != EMSGSIZE || keep == 0) break;
    }
    if (r.err != EMSGSIZE) return r;
  }
  // Last resort: what happened, to whom, with what result.
  static constexpr std::array<const char*, 11> kSummary = {
      "time", "host", "correlationId", "operationName", "operationVersion", "category",
      "resultType", "resultSignature", "durationMs", "identity", "caller"};
  Json summary = Json::object();
  for (const char* key : kSummary) {
    auto it = event.find(key);
    if (it != event.end() && (it->is_primitive() || Dump(*it).size() <= 512)) summary[key] = *it;
  }
  e = std::move(summary);
  removed.assign({"only the summary kept"});
  return attempt();
}

Status SyslogSink::Write(std::span<const Record> events) {
  if (!facility_) return Err(CKR_FUNCTION_FAILED, "syslog socket {}: unknown facility \"{}\"", opts_.socket, opts_.facility);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max(0, opts_.send_timeout_ms));
  size_t too_large = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    SendResult r = SendEvent(events[i], deadline);
    if (r.err == 0) continue;
    if (r.err == EMSGSIZE) {
      ++too_large;  // only this event: the next ones may fit
      continue;
    }
    // No daemon, or one not keeping up: the rest of the batch would fail the same way.
    return Err(CKR_FUNCTION_FAILED, "syslog socket {}: {}: {} ({} of {} events not sent)", opts_.socket, r.what,
               std::strerror(r.err), events.size() - i + too_large, events.size());
  }
  if (too_large > 0)
    return Err(CKR_FUNCTION_FAILED, "syslog socket {}: {} of {} events not sent: too large even reduced to their summary",
               opts_.socket, too_large, events.size());
  return OkStatus();
}

// ---- stream socket ---------------------------------------------------------------------------

namespace {
constexpr auto kFirstBackoff = std::chrono::seconds(1);
constexpr auto kMaxBackoff = std::chrono::seconds(30);
constexpr size_t kMaxIov = 64;
constexpr size_t kMaxChunk = 256 * 1024;  // bytes handed to one sendmsg
}  // namespace

SocketSink::SocketSink(SocketSinkOptions options) : opts_(std::move(options)) {
  if (!opts_.now) opts_.now = [] { return std::chrono::steady_clock::now(); };
}

SocketSink::~SocketSink() {
  if (fd_ >= 0) close(fd_);
}

std::string SocketSink::Describe() const { return "socket " + opts_.socket; }

Status SocketSink::Connect() {
  const Clock::time_point now = opts_.now();
  // Nonblocking: the writer thread never waits for the collector.
  int fd = ConnectUnix(opts_.socket, SOCK_STREAM | SOCK_NONBLOCK);
  if (fd < 0) {
    const int e = errno;
    last_error_ = fmt::format("cannot connect: {}", std::strerror(e));
    next_attempt_ = now + backoff_;
    backoff_ = std::min<Clock::duration>(backoff_ * 2, kMaxBackoff);
    return Err(CKR_FUNCTION_FAILED, "collector socket {}: {}", opts_.socket, last_error_);
  }
  fd_ = fd;
  connected_at_ = now;
  backoff_ = kFirstBackoff;
  last_error_.clear();
  return OkStatus();
}

void SocketSink::Disconnect(int err) {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  Requeue();
  last_error_ = fmt::format("connection lost: {}", std::strerror(err));
  // A collector that accepts then hangs up is not hammered: at most one connection a backoff.
  next_attempt_ = connected_at_ + backoff_;
}

void SocketSink::Requeue() {
  // The line being written goes back first in line, to be sent whole on the next connection.
  if (!out_.empty()) {
    if (out_notice_ > 0) {
      unreported_ += out_notice_;
    } else {
      queued_bytes_ += out_.size();
      queue_.push_front(std::move(out_));
    }
  }
  out_.clear();
  out_off_ = 0;
  out_notice_ = 0;
}

void SocketSink::Publish() {
  dropped_seen_.store(dropped_, std::memory_order_relaxed);
  buffered_seen_.store(Buffered(), std::memory_order_relaxed);
}

Status SocketSink::Open() {
  if (fd_ >= 0) return OkStatus();
  Status st = Connect();
  if (!st.ok()) st.error().message += " (events are buffered until it is reachable)";
  return st;
}

void SocketSink::Consume(size_t n) {
  const size_t rest = out_.size() - out_off_;
  if (n < rest) {
    out_off_ += n;
    return;
  }
  n -= rest;
  out_.clear();
  out_off_ = 0;
  out_notice_ = 0;
  while (n > 0 && !queue_.empty()) {
    std::string& front = queue_.front();
    queued_bytes_ -= front.size();
    if (n < front.size()) {
      out_ = std::move(front);
      out_off_ = n;
      n = 0;
    } else {
      n -= front.size();
    }
    queue_.pop_front();
  }
}

bool SocketSink::Pump() {
  while (fd_ >= 0) {
    if (out_.empty()) {
      if (unreported_ > 0) {
        // Said at a line boundary, before the events that came after the dropped ones.
        Json notice = {{"category", "AuditEvent"},
                       {"operationName", "AuditEventsDropped"},
                       {"resultType", "Failure"},
                       {"resultSignature", "BufferFull"},
                       {"resultDescription", fmt::format("{} events were dropped: the buffer of {} bytes was full",
                                                         unreported_, opts_.buffer_bytes)},
                       {"time", FormatTime(std::chrono::system_clock::now())},
                       {"properties", {{"dropped", unreported_}, {"sink", Describe()}}}};
        out_ = Dump(notice) + "\n";
        out_notice_ = unreported_;
        unreported_ = 0;
      } else if (!queue_.empty()) {
        out_ = std::move(queue_.front());
        queue_.pop_front();
        queued_bytes_ -= out_.size();
      } else {
        return true;
      }
      out_off_ = 0;
    }
    // The current line's rest and the lines after it, in one call.
    std::array<iovec, kMaxIov> iov{};
    size_t count = 0, bytes = out_.size() - out_off_;
    iov[count++] = {out_.data() + out_off_, out_.size() - out_off_};
    for (size_t i = 0; i < queue_.size() && count < kMaxIov && bytes < kMaxChunk; ++i) {
      iov[count++] = {queue_[i].data(), queue_[i].size()};
      bytes += queue_[i].size();
    }
    msghdr mh{};
    mh.msg_iov = iov.data();
    mh.msg_iovlen = count;
    const ssize_t n = sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      const int e = errno;
      if (e == EINTR) continue;
      // Full socket buffer (or memory pressure): the rest waits for the next Write.
      if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS || e == ENOMEM) return true;
      Disconnect(e);
      return false;
    }
    Consume(static_cast<size_t>(n));
  }
  return false;
}

void SocketSink::Flush() {
  // A connection found broken here is tried again at once when the backoff allows it (the
  // collector restarted long ago), but only once per call.
  for (int round = 0; round < 2; ++round) {
    if (fd_ < 0 && (opts_.now() < next_attempt_ || !Connect().ok())) return;
    if (Pump()) return;
  }
}

void SocketSink::Append(std::string line) {
  const uint64_t cap = opts_.buffer_bytes;
  auto fits = [&] { return Buffered() + line.size() <= cap; };
  if (!fits() && fd_ >= 0) (void)Pump();  // make room by sending what the socket takes now
  while (!fits() && !queue_.empty()) {
    queued_bytes_ -= queue_.front().size();
    queue_.pop_front();
    ++dropped_;
    ++unreported_;
  }
  if (!fits()) {  // larger than the whole buffer
    ++dropped_;
    ++unreported_;
    return;
  }
  queued_bytes_ += line.size();
  queue_.push_back(std::move(line));
}

Status SocketSink::Write(std::span<const Record> events) {
  const uint64_t dropped_before = dropped_;
  if (fd_ < 0 && opts_.now() >= next_attempt_) (void)Connect();
  for (const Record& e : events) Append(e.json + "\n");
  Flush();
  Publish();
  std::string drops;
  if (dropped_ > dropped_before)
    drops = fmt::format("; {} events dropped: the buffer of {} bytes is full", dropped_ - dropped_before,
                        opts_.buffer_bytes);
  if (fd_ < 0) {
    const auto wait = std::chrono::ceil<std::chrono::seconds>(std::max(next_attempt_ - opts_.now(), Clock::duration::zero()));
    return Err(CKR_FUNCTION_FAILED, "collector socket {}: {} ({} events buffered, next attempt in {} s){}", opts_.socket,
               last_error_, queue_.size(), wait.count(), drops);
  }
  if (!drops.empty()) return Err(CKR_FUNCTION_FAILED, "collector socket {}: not keeping up{}", opts_.socket, drops);
  return OkStatus();
}

void SocketSink::Close(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max(0, timeout_ms));
  auto pending = [&] { return Buffered() > 0 || unreported_ > 0; };
  // The last chance to deliver: one attempt whatever the backoff says.
  if (fd_ < 0 && pending()) (void)Connect();
  while (fd_ >= 0 && Pump() && pending()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd_, POLLOUT, 0};
    if (poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) break;
  }
  if (pending()) {
    const size_t events = queue_.size() + (!out_.empty() && out_notice_ == 0 ? 1 : 0);
    log::Warning("audit sink {}: {} events not delivered at close ({})", Describe(), events,
                 fd_ >= 0 ? "the collector did not take them in time" : last_error_);
  }
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  Requeue();
  Publish();
}

}  // namespace vaultp11::audit
