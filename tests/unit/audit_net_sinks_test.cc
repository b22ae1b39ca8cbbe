// The syslog and collector-socket audit sinks against real unix sockets in a temp dir: the
// syslog datagram format and severity rule, oversized events shrunk rather than lost, a daemon
// or collector that restarts, the bounded buffer and its AuditEventsDropped line, whole lines
// across reconnects, and a writer that never blocks. No sleeps: reads wait with poll() and the
// reconnect backoff runs on an injected clock.
#include "audit/net_sinks.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "matchers.h"
#include "temp_dir.h"

namespace vaultp11::audit {
namespace {

using ::testing::HasSubstr;
using ::testing::ContainsRegex;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::seconds;

constexpr int kTimeoutMs = 5000;  // what a test waits for data that should be there now

Json Event(int n, std::string result = "Success", std::string signature = "OK") {
  return {{"time", "2024-05-01T12:00:00.123456Z"},
          {"correlationId", fmt::format("c-{:04d}", n)},
          {"operationName", "KeySign"},
          {"operationVersion", "7.4"},
          {"category", "AuditEvent"},
          {"resultType", result},
          {"resultSignature", signature},
          {"resultDescription", fmt::format("event {:04d}", n)},
          {"durationMs", 3},
          {"identity", {{"principal", "app1"}}},
          {"caller", {{"pid", 42}}},
          {"properties", {{"vault", "v1"}, {"key", "k1"}}}};
}

std::string Dump(const Json& j) { return j.dump(); }

// An fd closed with its owner.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset(std::exchange(o.fd_, -1));
    return *this;
  }
  int get() const { return fd_; }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

sockaddr_un Addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), std::min(path.size(), sizeof(a.sun_path) - 1));
  return a;
}

Fd Bound(const std::string& path, int type) {
  Fd fd(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  sockaddr_un a = Addr(path);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) ADD_FAILURE() << "bind " << path << ": " << std::strerror(errno);
  return fd;
}

bool Readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1;
}

// A syslog daemon's /dev/log.
class DgramReceiver {
 public:
  explicit DgramReceiver(std::string path) : path_(std::move(path)), fd_(Bound(path_, SOCK_DGRAM)) {}
  std::optional<std::string> Recv(int timeout_ms = kTimeoutMs) {
    if (!Readable(fd_.get(), timeout_ms)) return std::nullopt;
    std::string buf(8 << 20, '\0');
    ssize_t n = recv(fd_.get(), buf.data(), buf.size(), 0);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
  // The daemon stops: its socket is closed and the file removed.
  void Stop() {
    fd_.reset();
    unlink(path_.c_str());
  }

 private:
  std::string path_;
  Fd fd_;
};

// A collector's listening stream socket.
class Listener {
 public:
  explicit Listener(std::string path) : path_(std::move(path)), fd_(Bound(path_, SOCK_STREAM)) {
    if (listen(fd_.get(), 8) != 0) ADD_FAILURE() << "listen: " << std::strerror(errno);
  }
  ~Listener() { Stop(); }
  bool Pending() { return Readable(fd_.get(), 0); }  // a connection waits to be accepted
  Fd Accept() {
    if (!Readable(fd_.get(), kTimeoutMs)) {
      ADD_FAILURE() << "no connection";
      return Fd();
    }
    return Fd(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  }
  void Stop() {
    if (fd_.get() < 0) return;
    fd_.reset();
    unlink(path_.c_str());
  }

 private:
  std::string path_;
  Fd fd_;
};

// Reads from a connection until `want` complete lines have arrived (or EOF, or nothing for
// kTimeoutMs). A trailing partial line is left in *rest.
std::vector<std::string> ReadLines(int fd, size_t want, std::string* rest = nullptr) {
  std::vector<std::string> lines;
  std::string buf;
  char chunk[65536];
  while (lines.size() < want && Readable(fd, kTimeoutMs)) {
    ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    for (size_t nl; (nl = buf.find('\n')) != std::string::npos;) {
      lines.push_back(buf.substr(0, nl));
      buf.erase(0, nl + 1);
    }
  }
  if (rest) *rest = buf;
  return lines;
}

// Everything until the peer closes.
std::string ReadToEof(int fd) {
  std::string all;
  char chunk[65536];
  while (Readable(fd, kTimeoutMs)) {
    ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n <= 0) break;
    all.append(chunk, static_cast<size_t>(n));
  }
  return all;
}

// a == b, telling where they differ rather than printing megabytes.
::testing::AssertionResult SameText(const std::string& a, const std::string& b) {
  if (a == b) return ::testing::AssertionSuccess();
  auto at = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  const size_t i = static_cast<size_t>(at.first - a.begin());
  const size_t from = i > 40 ? i - 40 : 0;
  return ::testing::AssertionFailure() << "sizes " << a.size() << " and " << b.size() << ", first difference at byte "
                                       << i << ": \"" << a.substr(from, 80) << "\" vs \"" << b.substr(from, 80) << "\"";
}

// ---- syslog ----------------------------------------------------------------------------------

struct SyslogMessage {
  int pri = -1;
  std::string timestamp, ident, msg;
  long pid = 0;
};

// `s` with every digit replaced by '9': a timestamp's shape, checked without <regex>.
std::string DigitsAs9(std::string s) {
  for (char& c : s)
    if (c >= '0' && c <= '9') c = '9';
  return s;
}

// An RFC 3164 timestamp: "Mmm dd hh:mm:ss", the day padded with a space.
bool IsSyslogTime(const std::string& t) {
  static const std::set<std::string> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (t.size() != 15 || kMonths.count(t.substr(0, 3)) == 0) return false;
  const std::string shape = DigitsAs9(t.substr(3));
  return (shape == " 99 99:99:99" && t[4] != '0') || shape == "  9 99:99:99";
}

// "<PRI>Mmm dd hh:mm:ss IDENT[PID]: MSG" (parsed by hand).
std::optional<SyslogMessage> ParseSyslog(const std::string& d) {
  SyslogMessage m;
  size_t gt = d.find('>');
  if (d.empty() || d[0] != '<' || gt == std::string::npos || gt < 2 || gt > 4) return std::nullopt;
  m.pri = std::stoi(d.substr(1, gt - 1));
  if (d.size() < gt + 17 || d[gt + 16] != ' ') return std::nullopt;
  m.timestamp = d.substr(gt + 1, 15);
  if (!IsSyslogTime(m.timestamp)) return std::nullopt;
  const std::string rest = d.substr(gt + 17);
  size_t lb = rest.find('['), rb = rest.find("]: ");
  if (lb == std::string::npos || rb == std::string::npos || rb < lb) return std::nullopt;
  m.ident = rest.substr(0, lb);
  m.pid = std::stol(rest.substr(lb + 1, rb - lb - 1));
  m.msg = rest.substr(rb + 3);
  return m;
}

// The event a datagram carries; fails the test when it is not a well-formed message.
Json EventOf(const std::optional<std::string>& datagram) {
  if (!datagram) {
    ADD_FAILURE() << "no datagram";
    return Json();
  }
  auto m = ParseSyslog(*datagram);
  if (!m) {
    ADD_FAILURE() << "not a syslog message: " << datagram->substr(0, 200);
    return Json();
  }
  Json j = Json::parse(m->msg, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON: " << m->msg.substr(0, 200);
  return j;
}

// The kernel's limit for one unix datagram is the sender's SO_SNDBUF (net.core.wmem_default).
size_t DatagramLimit() {
  std::ifstream in("/proc/sys/net/core/wmem_default");
  size_t v = 0;
  if (in >> v && v > 0) return v;
  return 212992;
}

class SyslogSinkTest : public ::testing::Test {
 protected:
  SyslogSinkOptions Options() {
    SyslogSinkOptions o;
    o.socket = path;
    o.facility = "local3";
    o.ident = "vp11-test";
    return o;
  }
  testing::TempDir dir;
  std::string path = dir.file("log.sock");
};

TEST(SyslogRule, FacilityCodes) {
  EXPECT_EQ(SyslogFacility("user"), 1);
  EXPECT_EQ(SyslogFacility("daemon"), 3);
  EXPECT_EQ(SyslogFacility("auth"), 4);
  EXPECT_EQ(SyslogFacility("authpriv"), 10);
  EXPECT_EQ(SyslogFacility("local0"), 16);
  EXPECT_EQ(SyslogFacility("local7"), 23);
  EXPECT_EQ(SyslogFacility("kern"), std::nullopt);
  EXPECT_EQ(SyslogFacility(""), std::nullopt);
}

TEST(SyslogRule, SeverityFollowsTheResult) {
  auto severity = [](const Json& e) { return SyslogSeverity(Record::From(e).result_signature); };
  EXPECT_EQ(severity(Event(1)), 6);
  for (const char* sig : {"BadRequest", "NotFound", "Conflict", "Cancelled"}) {
    EXPECT_EQ(severity(Event(1, "Failure", sig)), 5) << sig;
  }
  for (const char* sig : {"Unauthorized", "Forbidden"}) {
    EXPECT_EQ(severity(Event(1, "Failure", sig)), 4) << sig;
  }
  for (const char* sig : {"DeviceError", "InternalError", "BufferFull", ""}) {
    EXPECT_EQ(severity(Event(1, "Failure", sig)), 3) << sig;
  }
  EXPECT_EQ(severity(Json::object()), 3);
}

TEST_F(SyslogSinkTest, SendsOneMessagePerEventWithPriorityIdentAndJson) {
  DgramReceiver daemon(path);
  SyslogSink sink(Options());
  EXPECT_EQ(sink.Describe(), "syslog " + path);
  ASSERT_OK(sink.Open());
  const std::vector<Json> batch = {Event(1), Event(2, "Failure", "Forbidden"), Event(3, "Failure", "NotFound"),
                                   Event(4, "Failure", "DeviceError")};
  ASSERT_OK(sink.Write(batch));
  const int severities[] = {6, 4, 5, 3};
  for (size_t i = 0; i < batch.size(); ++i) {
    auto d = daemon.Recv();
    ASSERT_TRUE(d.has_value()) << i;
    auto m = ParseSyslog(*d);
    ASSERT_TRUE(m.has_value()) << *d;
    EXPECT_EQ(m->pri, 19 * 8 + severities[i]) << *d;  // local3
    EXPECT_EQ(m->pri / 8, 19);
    EXPECT_EQ(m->pri % 8, severities[i]);
    EXPECT_EQ(m->ident, "vp11-test");
    EXPECT_EQ(m->pid, static_cast<long>(getpid()));
    EXPECT_EQ(Json::parse(m->msg), batch[i]);
    EXPECT_EQ(m->msg.find('\n'), std::string::npos);
  }
}

TEST_F(SyslogSinkTest, DefaultFacilityIsAuth) {
  DgramReceiver daemon(path);
  SyslogSinkOptions o;
  o.socket = path;
  SyslogSink sink(o);
  ASSERT_OK(sink.Write(std::vector<Json>{Event(1, "Failure", "Unauthorized")}));
  auto m = ParseSyslog(daemon.Recv().value_or(""));
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->pri, 4 * 8 + 4);
  EXPECT_EQ(m->ident, "vaultp11");
}

TEST_F(SyslogSinkTest, AnEventLargerThanADatagramLosesItsPropertiesNotItself) {
  DgramReceiver daemon(path);
  SyslogSink sink(Options());
  Json big = Event(1, "Failure", "Forbidden");
  big["properties"]["blob"] = std::string(DatagramLimit() + 4096, 'x');
  ASSERT_OK(sink.Write(std::vector<Json>{big, Event(2)}));
  Json got = EventOf(daemon.Recv());
  EXPECT_FALSE(got.contains("properties"));
  ASSERT_TRUE(got.contains("truncated"));
  EXPECT_THAT(got["truncated"].get<std::string>(), HasSubstr("properties removed"));
  Json expect = big;
  expect.erase("properties");
  got.erase("truncated");
  EXPECT_EQ(got, expect);
  EXPECT_EQ(EventOf(daemon.Recv()), Event(2));  // the batch goes on
}

TEST_F(SyslogSinkTest, AHugeDescriptionIsCutWhenRemovingPropertiesIsNotEnough) {
  DgramReceiver daemon(path);
  SyslogSink sink(Options());
  Json big = Event(1, "Failure", "BadRequest");
  const std::string desc(DatagramLimit() + 4096, 'd');
  big["resultDescription"] = desc;
  big["properties"]["blob"] = std::string(1000, 'x');
  ASSERT_OK(sink.Write(std::vector<Json>{big}));
  Json got = EventOf(daemon.Recv());
  EXPECT_FALSE(got.contains("properties"));
  const std::string cut = got.value("resultDescription", "");
  EXPECT_LT(cut.size(), desc.size());
  EXPECT_GT(cut.size(), desc.size() / 8);
  EXPECT_EQ(desc.compare(0, cut.size() - 3, cut, 0, cut.size() - 3), 0) << "a prefix of the original";
  EXPECT_THAT(got.value("truncated", ""), HasSubstr("resultDescription cut to"));
  EXPECT_EQ(got["operationName"], "KeySign");
  EXPECT_EQ(got["correlationId"], "c-0001");
}

TEST_F(SyslogSinkTest, MaxMessageBytesShrinksToFit) {
  DgramReceiver daemon(path);
  SyslogSinkOptions o = Options();
  o.max_message_bytes = 1024;
  SyslogSink sink(o);
  Json big = Event(1);
  big["properties"]["blob"] = std::string(4000, 'x');
  big["resultDescription"] = std::string(3000, 'd');
  ASSERT_OK(sink.Write(std::vector<Json>{big, Event(2)}));
  auto d = daemon.Recv();
  ASSERT_TRUE(d.has_value());
  EXPECT_LE(d->size(), 1024u);
  Json got = EventOf(d);
  EXPECT_EQ(got["correlationId"], "c-0001");
  EXPECT_TRUE(got.contains("truncated"));
  EXPECT_EQ(EventOf(daemon.Recv()), Event(2));  // small events untouched
}

TEST_F(SyslogSinkTest, ReconnectsWhenTheDaemonRestarts) {
  auto daemon = std::make_unique<DgramReceiver>(path);
  SyslogSink sink(Options());
  ASSERT_OK(sink.Open());
  ASSERT_OK(sink.Write(std::vector<Json>{Event(1)}));
  EXPECT_EQ(EventOf(daemon->Recv()), Event(1));
  // The daemon restarts: a new socket at the same path.
  daemon->Stop();
  daemon = std::make_unique<DgramReceiver>(path);
  ASSERT_OK(sink.Write(std::vector<Json>{Event(2), Event(3)}));
  EXPECT_EQ(EventOf(daemon->Recv()), Event(2));
  EXPECT_EQ(EventOf(daemon->Recv()), Event(3));
}

TEST_F(SyslogSinkTest, NoDaemonIsAnErrorUntilItComesBack) {
  auto daemon = std::make_unique<DgramReceiver>(path);
  SyslogSink sink(Options());
  ASSERT_OK(sink.Open());
  daemon->Stop();
  Status st = sink.Write(std::vector<Json>{Event(1), Event(2)});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message,
            "syslog socket " + path + ": cannot connect: No such file or directory (2 of 2 events not sent)");
  daemon = std::make_unique<DgramReceiver>(path);
  ASSERT_OK(sink.Write(std::vector<Json>{Event(3)}));
  EXPECT_EQ(EventOf(daemon->Recv()), Event(3));
}

TEST_F(SyslogSinkTest, OpenOnAMissingSocketSaysWhy) {
  SyslogSink sink(Options());
  Status st = sink.Open();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message, "syslog socket " + path + ": cannot connect: No such file or directory");
}

TEST_F(SyslogSinkTest, UnknownFacilityIsAnError) {
  DgramReceiver daemon(path);
  SyslogSinkOptions o = Options();
  o.facility = "kern";
  SyslogSink sink(o);
  Status st = sink.Open();
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr("unknown facility \"kern\""));
  EXPECT_FALSE(sink.Write(std::vector<Json>{Event(1)}).ok());
}

TEST_F(SyslogSinkTest, ADaemonThatDoesNotReadGivesAnErrorNotAHang) {
  DgramReceiver daemon(path);  // never reads until the end
  SyslogSinkOptions o = Options();
  o.send_timeout_ms = 50;
  SyslogSink sink(o);
  std::vector<Json> batch;
  for (int i = 0; i < 5000; ++i) batch.push_back(Event(i));
  const auto start = Clock::now();
  Status st = sink.Write(batch);
  EXPECT_LT(Clock::now() - start, seconds(5));
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr("the daemon is not keeping up"));
  EXPECT_THAT(st.error().message, HasSubstr("of 5000 events not sent"));
  // What went out is in order.
  EXPECT_EQ(EventOf(daemon.Recv()), Event(0));
}

// ---- stream socket ---------------------------------------------------------------------------

class SocketSinkTest : public ::testing::Test {
 protected:
  SocketSinkOptions Options(uint64_t buffer_bytes = 1 << 20) {
    SocketSinkOptions o;
    o.socket = path;
    o.buffer_bytes = buffer_bytes;
    o.now = [this] { return now; };
    return o;
  }
  testing::TempDir dir;
  std::string path = dir.file("collector.sock");
  Clock::time_point now = Clock::time_point() + std::chrono::hours(1);
};

std::vector<Json> Events(int from, int to) {
  std::vector<Json> out;
  for (int i = from; i < to; ++i) out.push_back(Event(i));
  return out;
}

TEST_F(SocketSinkTest, EventsArriveAsLinesInOrder) {
  Listener collector(path);
  SocketSink sink(Options());
  EXPECT_EQ(sink.Describe(), "socket " + path);
  ASSERT_OK(sink.Open());
  Fd conn = collector.Accept();
  ASSERT_OK(sink.Write(Events(0, 3)));
  ASSERT_OK(sink.Write(Events(3, 5)));
  auto lines = ReadLines(conn.get(), 5);
  ASSERT_EQ(lines.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(lines[static_cast<size_t>(i)], Dump(Event(i)));
  EXPECT_EQ(sink.buffered_bytes(), 0u);
  EXPECT_EQ(sink.dropped(), 0u);
}

TEST_F(SocketSinkTest, OpenOnAMissingSocketSaysWhyAndTheSinkBuffers) {
  SocketSink sink(Options());
  Status st = sink.Open();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message, "collector socket " + path +
                                    ": cannot connect: No such file or directory (events are buffered until it is "
                                    "reachable)");
  st = sink.Write(Events(0, 2));
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr("collector socket " + path + ": cannot connect: No such file or directory"));
  EXPECT_THAT(st.error().message, HasSubstr("2 events buffered"));
  EXPECT_EQ(sink.buffered_bytes(), Dump(Event(0)).size() + Dump(Event(1)).size() + 2);

  Listener collector(path);
  now += seconds(1);
  ASSERT_OK(sink.Write(Events(2, 3)));
  Fd conn = collector.Accept();
  auto lines = ReadLines(conn.get(), 3);
  ASSERT_EQ(lines.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(lines[static_cast<size_t>(i)], Dump(Event(i)));
}

TEST_F(SocketSinkTest, BuffersWhileTheCollectorIsAwayAndDeliversAfterTheBackoff) {
  auto collector = std::make_unique<Listener>(path);
  SocketSink sink(Options());
  ASSERT_OK(sink.Open());
  Fd conn = collector->Accept();
  ASSERT_OK(sink.Write(Events(0, 1)));
  ASSERT_EQ(ReadLines(conn.get(), 1).size(), 1u);

  // The collector goes away.
  conn.reset();
  collector->Stop();
  Status st = sink.Write(Events(1, 3));
  ASSERT_FALSE(st.ok());
  // EPIPE, or ECONNRESET when it closed with unread data.
  EXPECT_THAT(st.error().message,
              ContainsRegex("collector socket .*: connection lost: (Broken pipe|Connection reset by peer)"));
  EXPECT_THAT(st.error().message, HasSubstr("2 events buffered"));
  st = sink.Write(Events(3, 4));
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr("3 events buffered"));

  // It is back, but the next attempt is not due yet: no connection is tried.
  collector = std::make_unique<Listener>(path);
  now += std::chrono::milliseconds(999);
  EXPECT_FALSE(sink.Write(std::span<const Record>()).ok());
  EXPECT_FALSE(collector->Pending());
  now += std::chrono::milliseconds(1);
  ASSERT_OK(sink.Write(Events(4, 5)));
  conn = collector->Accept();
  auto lines = ReadLines(conn.get(), 4);
  ASSERT_EQ(lines.size(), 4u);
  for (int i = 1; i < 5; ++i) EXPECT_EQ(lines[static_cast<size_t>(i - 1)], Dump(Event(i)));
  EXPECT_EQ(sink.buffered_bytes(), 0u);
}

TEST_F(SocketSinkTest, BackoffDoublesFromOneSecondToThirty) {
  SocketSink sink(Options());
  EXPECT_FALSE(sink.Open().ok());
  // Each failed attempt doubles the wait before the next one, up to 30 s.
  for (int wait : {1, 2, 4, 8, 16, 30, 30}) {
    Status st = sink.Write(std::span<const Record>());
    ASSERT_FALSE(st.ok());
    EXPECT_THAT(st.error().message, HasSubstr(fmt::format("next attempt in {} s", wait)));
    now += seconds(wait);
  }
  // A failed attempt here; the next one is due in 30 s, not before.
  EXPECT_THAT(sink.Write(std::span<const Record>()).error().message, HasSubstr("next attempt in 30 s"));
  Listener collector(path);
  now += seconds(29);
  EXPECT_FALSE(sink.Write(std::span<const Record>()).ok());
  EXPECT_FALSE(collector.Pending());
  now += seconds(1);
  EXPECT_OK(sink.Write(std::span<const Record>()));
  EXPECT_TRUE(collector.Pending());
}

TEST_F(SocketSinkTest, AFullBufferDropsTheOldestAndSaysSoFirstAfterReconnecting) {
  const size_t line = Dump(Event(0)).size() + 1;  // every Event(i < 10000) has the same size
  SocketSink sink(Options(3 * line + line / 2));
  EXPECT_FALSE(sink.Open().ok());
  for (int i = 0; i < 10; ++i) {
    Status st = sink.Write(Events(i, i + 1));
    ASSERT_FALSE(st.ok());
    if (i >= 3) {
      EXPECT_THAT(st.error().message, HasSubstr("1 events dropped"));
    }
  }
  EXPECT_EQ(sink.dropped(), 7u);
  EXPECT_EQ(sink.buffered_bytes(), 3 * line);

  Listener collector(path);
  now += seconds(60);
  ASSERT_OK(sink.Write(std::span<const Record>()));
  Fd conn = collector.Accept();
  auto lines = ReadLines(conn.get(), 4);
  ASSERT_EQ(lines.size(), 4u);
  Json notice = Json::parse(lines[0]);
  EXPECT_EQ(notice["category"], "AuditEvent");
  EXPECT_EQ(notice["operationName"], "AuditEventsDropped");
  EXPECT_EQ(notice["resultType"], "Failure");
  EXPECT_EQ(notice["resultSignature"], "BufferFull");
  EXPECT_EQ(notice["properties"]["dropped"], 7);
  EXPECT_EQ(notice["properties"]["sink"], "socket " + path);
  EXPECT_EQ(DigitsAs9(notice.value("time", "")), "9999-99-99T99:99:99.999999Z");
  for (int i = 7; i < 10; ++i) EXPECT_EQ(lines[static_cast<size_t>(i - 6)], Dump(Event(i)));
  EXPECT_EQ(sink.dropped(), 7u);  // a total, not reset by the report
  // Reported once.
  ASSERT_OK(sink.Write(Events(10, 11)));
  lines = ReadLines(conn.get(), 1);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], Dump(Event(10)));
}

TEST_F(SocketSinkTest, AnEventLargerThanTheBufferIsDroppedAndReported) {
  Listener collector(path);
  SocketSink sink(Options(4096));
  ASSERT_OK(sink.Open());
  Fd conn = collector.Accept();
  Json big = Event(1);
  big["properties"]["blob"] = std::string(8192, 'x');
  Status st = sink.Write(std::vector<Json>{Event(0), big, Event(2)});
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr("1 events dropped"));
  EXPECT_EQ(sink.dropped(), 1u);
  auto lines = ReadLines(conn.get(), 3);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], Dump(Event(0)));
  EXPECT_EQ(Json::parse(lines[1])["properties"]["dropped"], 1);
  EXPECT_EQ(lines[2], Dump(Event(2)));
}

TEST_F(SocketSinkTest, ALineCutByABrokenConnectionIsSentWholeOnTheNextOne) {
  Listener collector(path);
  SocketSink sink(Options(64 << 20));
  ASSERT_OK(sink.Open());
  Fd conn = collector.Accept();
  Json big = Event(1);
  big["resultDescription"] = std::string(4 << 20, 'd');  // far more than the socket buffers
  const std::string big_line = Dump(big);
  ASSERT_OK(sink.Write(std::vector<Json>{big}));
  const size_t left = sink.buffered_bytes();
  ASSERT_GT(left, 0u);
  ASSERT_LT(left, big_line.size() + 1) << "part of the line is on its way";

  // The collector reads a little of it and dies.
  char head[1000];
  ASSERT_TRUE(Readable(conn.get(), kTimeoutMs));
  ASSERT_GT(read(conn.get(), head, sizeof(head)), 0);
  EXPECT_EQ(std::string_view(head, 10), std::string_view(big_line).substr(0, 10));
  conn.reset();
  Status st = sink.Write(Events(2, 3));
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr("connection lost"));
  EXPECT_EQ(sink.buffered_bytes(), big_line.size() + 1 + Dump(Event(2)).size() + 1) << "the whole line again";

  // The next connection gets whole lines only, starting at the cut one.
  now += seconds(1);
  ASSERT_OK(sink.Write(std::span<const Record>()));
  conn = collector.Accept();
  std::thread closer([&] { sink.Close(20000); });
  const std::string all = ReadToEof(conn.get());
  closer.join();
  EXPECT_TRUE(SameText(all, big_line + "\n" + Dump(Event(2)) + "\n"));
  EXPECT_EQ(sink.buffered_bytes(), 0u);
}

TEST_F(SocketSinkTest, ACollectorThatDoesNotReadNeverBlocksTheWriter) {
  Listener collector(path);  // accepts nothing, reads nothing
  SocketSink sink(Options(256 << 20));
  ASSERT_OK(sink.Open());
  const auto start = Clock::now();
  for (int b = 0; b < 100; ++b) {
    std::vector<Json> batch;
    for (int i = 0; i < 100; ++i) {
      batch.push_back(Event(b * 100 + i));
      batch.back()["properties"]["pad"] = std::string(1000, 'p');
    }
    ASSERT_OK(sink.Write(batch));  // connected but slow: fine, buffered
  }
  EXPECT_LT(Clock::now() - start, seconds(10));
  EXPECT_GT(sink.buffered_bytes(), 1u << 20);
  EXPECT_EQ(sink.dropped(), 0u);
  const auto close_start = Clock::now();
  sink.Close(0);  // nobody reads: gives up at once
  EXPECT_LT(Clock::now() - close_start, seconds(5));
}

TEST_F(SocketSinkTest, DropsWhileConnectedAreReportedAtALineBoundary) {
  Listener collector(path);
  SocketSink sink(Options(64 << 10));
  ASSERT_OK(sink.Open());
  Fd conn = collector.Accept();
  bool reported = false;
  int written = 0;
  for (int b = 0; b < 50; ++b) {
    std::vector<Json> batch;
    for (int i = 0; i < 100; ++i) {
      batch.push_back(Event(written++));
      batch.back()["properties"]["pad"] = std::string(200, 'p');
    }
    Status st = sink.Write(batch);
    if (!st.ok()) {
      EXPECT_THAT(st.error().message, HasSubstr("not keeping up"));
      reported = true;
    }
  }
  EXPECT_TRUE(reported);
  EXPECT_GT(sink.dropped(), 0u);
  std::thread closer([&] { sink.Close(20000); });
  const std::string all = ReadToEof(conn.get());
  closer.join();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back(), '\n');
  // Every line is whole; events keep their order; received + reported dropped = written.
  uint64_t events = 0, dropped = 0;
  int last = -1;
  std::istringstream in(all);
  for (std::string l; std::getline(in, l);) {
    Json j = Json::parse(l, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << l.substr(0, 100);
    if (j["operationName"] == "AuditEventsDropped") {
      dropped += j["properties"]["dropped"].get<uint64_t>();
      continue;
    }
    int n = std::stoi(j["correlationId"].get<std::string>().substr(2));
    EXPECT_GT(n, last);
    last = n;
    ++events;
  }
  EXPECT_EQ(dropped, sink.dropped());
  EXPECT_EQ(events + dropped, static_cast<uint64_t>(written));
  EXPECT_EQ(last, written - 1) << "the newest events are kept";
}

TEST_F(SocketSinkTest, CloseFlushesTheBuffer) {
  Listener collector(path);
  SocketSink sink(Options(64 << 20));
  ASSERT_OK(sink.Open());
  Fd conn = collector.Accept();
  std::vector<Json> batch;
  for (int i = 0; i < 3000; ++i) {
    batch.push_back(Event(i));
    batch.back()["properties"]["pad"] = std::string(500, 'p');
  }
  ASSERT_OK(sink.Write(batch));
  ASSERT_GT(sink.buffered_bytes(), 0u) << "more than the socket holds";
  std::thread closer([&] { sink.Close(20000); });
  const std::string all = ReadToEof(conn.get());
  closer.join();
  std::string expect;
  for (const Json& e : batch) expect += Dump(e) + "\n";
  EXPECT_TRUE(SameText(all, expect));
  EXPECT_EQ(sink.buffered_bytes(), 0u);
}

TEST_F(SocketSinkTest, CloseWithoutACollectorReturns) {
  SocketSink sink(Options());
  EXPECT_FALSE(sink.Write(Events(0, 3)).ok());
  sink.Close(100);  // one attempt, no collector: logged, not waited for
  EXPECT_EQ(sink.buffered_bytes(), Dump(Event(0)).size() * 3 + 3);
}

}  // namespace
}  // namespace vaultp11::audit
