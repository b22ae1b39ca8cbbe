// Audit sinks that hand events to a local daemon over a unix socket: the syslog daemon's
// datagram socket (/dev/log), or a log collector's stream socket (fluent-bit, vector, rsyslog
// imptcp...). Both are called from the recorder's one writer thread only (sink.h).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "audit/sink.h"

namespace vaultp11::audit {

// ---- syslog ----------------------------------------------------------------------------------

struct SyslogSinkOptions {
  std::string socket = "/dev/log";  // the daemon's AF_UNIX SOCK_DGRAM socket
  std::string facility = "auth";    // auth | authpriv | daemon | user | local0 .. local7
  std::string ident = "vaultp11";   // the tag (SYSLOG_IDENTIFIER in the journal)
  // A message longer than this is shrunk like one the socket refuses (EMSGSIZE); 0: only the
  // socket's own limit. rsyslog cuts messages at its maxMessageSize (8 KiB by default), which
  // would break the JSON: set 8192 there.
  size_t max_message_bytes = 0;
  // How long one Write may wait, in all, for a daemon whose queue is full before giving up on
  // the rest of the batch (the recorder reports it).
  int send_timeout_ms = 500;
};

// The syslog facility code of a facility name (auth: 4, authpriv: 10, daemon: 3, user: 1,
// local0..local7: 16..23), or nullopt for another name.
std::optional<int> SyslogFacility(std::string_view name);

// The severity of an event's message:
//   Success                                         -> info (6)
//   Failure by the caller: BadRequest, NotFound, Conflict, Cancelled -> notice (5)
//   Failure denied: Unauthorized, Forbidden          -> warning (4)
//   Failure of the vault: DeviceError, InternalError, any other signature -> err (3)
// so that `auth.warning` selects every denial and error, and `auth.info` the whole trail.
int SyslogSeverity(std::string_view result_signature);

// Sends each event as one datagram in the format the C library's syslog(3) uses on /dev/log,
// which both journald and rsyslog's imuxsock parse:
//   <PRI>Mmm dd hh:mm:ss IDENT[PID]: {"time":...,"operationName":...}
// PRI = facility * 8 + severity; the timestamp is local time at sending (the daemon records its
// own; the event's exact time is its "time"); the message is the event as compact JSON. Not
// RFC 5424 ("<PRI>1 TIMESTAMP HOST ..."): journald does not parse that on /dev/log (systemd
// issue #19251), it would keep the whole header in MESSAGE and lose the identifier.
//
// An event larger than the socket takes (EMSGSIZE, or max_message_bytes) is shrunk rather than
// lost: "properties" removed, then "resultDescription" cut, then only the summary fields kept;
// a "truncated" field says what was removed. A daemon that restarted (ECONNREFUSED, ENOTCONN,
// ENOENT, EPIPE, ECONNRESET) is reconnected once and the message sent again.
class SyslogSink : public Sink {
 public:
  explicit SyslogSink(SyslogSinkOptions options);
  ~SyslogSink() override;
  SyslogSink(const SyslogSink&) = delete;
  SyslogSink& operator=(const SyslogSink&) = delete;

  std::string Describe() const override;  // "syslog /dev/log"
  // Connects: "syslog socket /dev/log: cannot connect: No such file or directory".
  Status Open() override;
  // Sends the batch in order. Stops at the first event that cannot be sent (no daemon, its
  // queue still full after send_timeout_ms) and says how many events were not sent.
  using Sink::Write;
  Status Write(std::span<const Record> events) override;
  void Close(int timeout_ms) override;

  // One event's datagram (before any shrinking).
  std::string Format(const Record& event) const;

 private:
  struct SendResult {
    int err = 0;             // 0: sent
    const char* what = "";   // "cannot connect" | "cannot send"
  };
  SendResult Connect();
  SendResult SendEvent(const Record& event, std::chrono::steady_clock::time_point deadline);
  SendResult SendDatagram(const std::string& msg, std::chrono::steady_clock::time_point deadline);
  void CloseFd();

  SyslogSinkOptions opts_;
  std::optional<int> facility_;
  std::string ident_;  // opts_.ident without characters that would break the tag
  int fd_ = -1;
};

// ---- stream socket ---------------------------------------------------------------------------

struct SocketSinkOptions {
  std::string socket;                  // the collector's AF_UNIX SOCK_STREAM socket
  uint64_t buffer_bytes = 1ull << 20;  // events (as JSON lines) kept while it is away or slow
  // The clock of the reconnect backoff (tests advance it); default steady_clock::now.
  std::function<std::chrono::steady_clock::time_point()> now;
};

// Streams events as newline-delimited compact JSON to a local collector. The writer thread
// never waits for the collector: Write appends the batch to a buffer of at most buffer_bytes
// (dropping the oldest events when it is full; an event larger than the whole buffer is
// dropped) and sends what the nonblocking socket takes now.
//
// While the collector is unreachable, Write returns an error naming the socket and the cause
// but keeps buffering, and connects again with a backoff: 1 s after the last attempt (or after
// the last connection was made), doubling to 30 s, counted on options.now; an attempt that is
// not yet due is skipped, never waited for. After dropping events, before the next buffered
// one, the sink sends one line
//   {"category":"AuditEvent","operationName":"AuditEventsDropped","resultType":"Failure",
//    "resultSignature":"BufferFull","time":...,"properties":{"dropped":N,"sink":"socket PATH"}}
// Lines are whole on every connection: a line cut by a broken connection is sent again whole
// on the next one. (Lines the collector had received but not read when it died are lost: a
// stream socket has no acknowledgement.)
class SocketSink : public Sink {
 public:
  explicit SocketSink(SocketSinkOptions options);
  ~SocketSink() override;
  SocketSink(const SocketSink&) = delete;
  SocketSink& operator=(const SocketSink&) = delete;

  std::string Describe() const override;  // "socket /run/collector.sock"
  // Connects. An unreachable collector is an error ("collector socket PATH: cannot connect:
  // ..."), but the sink stays usable: it buffers and connects later.
  Status Open() override;
  // An error when the collector is unreachable (the batch is buffered) or when events had to be
  // dropped; OK when the batch is sent or waiting for a slow but connected collector.
  using Sink::Write;
  Status Write(std::span<const Record> events) override;
  // Sends what is buffered, waiting at most timeout_ms (one more connection attempt if needed,
  // whatever the backoff), then closes the connection. What is left is logged as lost.
  void Close(int timeout_ms) override;

  // Counters, readable from any thread (as of the end of the last Write or Close):
  // events dropped since construction, and bytes of JSON lines waiting to be sent (at most
  // buffer_bytes).
  uint64_t dropped() const { return dropped_seen_.load(std::memory_order_relaxed); }
  size_t buffered_bytes() const { return buffered_seen_.load(std::memory_order_relaxed); }

 private:
  using Clock = std::chrono::steady_clock;
  Status Connect();
  void Disconnect(int err);
  void Requeue();
  void Flush();
  bool Pump();
  void Consume(size_t n);
  void Append(std::string line);
  size_t Buffered() const { return queued_bytes_ + (out_.size() - out_off_); }
  void Publish();

  SocketSinkOptions opts_;
  int fd_ = -1;
  std::deque<std::string> queue_;  // whole lines with their '\n', oldest first
  size_t queued_bytes_ = 0;
  std::string out_;                // the line being written on this connection
  size_t out_off_ = 0;             // bytes of out_ already written
  uint64_t out_notice_ = 0;        // out_ is the AuditEventsDropped line for this many events
  uint64_t dropped_ = 0;           // all events dropped
  uint64_t unreported_ = 0;        // dropped events no AuditEventsDropped line has counted yet
  Clock::duration backoff_ = std::chrono::seconds(1);
  Clock::time_point next_attempt_{};  // no connection attempt before this
  Clock::time_point connected_at_{};
  std::string last_error_;            // why the collector is unreachable (errno text)
  std::atomic<uint64_t> dropped_seen_{0};
  std::atomic<size_t> buffered_seen_{0};
};

}  // namespace vaultp11::audit
