// The recorder: order, batching, flush, the overflow policies (critical events never dropped),
// failing sinks reported to the others, unthreaded writing; and the event's JSON form.
#include "audit/recorder.h"

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

namespace vaultp11::audit {
namespace {

using ::testing::ElementsAre;

// Collects what it is given; can be held (Write blocks until released) or made to fail.
class CollectingSink : public Sink {
 public:
  std::string Describe() const override { return "collect " + name; }
  Status Open() override { return OkStatus(); }
  Status Write(std::span<const Record> events) override {
    std::unique_lock<std::mutex> l(mu);
    ++writes;
    entered.notify_all();
    cv.wait(l, [&] { return !held; });
    if (failing) return Err(CKR_DEVICE_ERROR, "disk full");
    for (const auto& e : events) got.push_back(nlohmann::json::parse(e.json));
    cv.notify_all();
    return OkStatus();
  }
  std::vector<std::string> Ops() {
    std::lock_guard<std::mutex> l(mu);
    std::vector<std::string> out;
    for (const auto& e : got) out.push_back(e["operationName"].get<std::string>());
    return out;
  }
  void Hold() {
    std::lock_guard<std::mutex> l(mu);
    held = true;
  }
  void Release() {
    std::lock_guard<std::mutex> l(mu);
    held = false;
    cv.notify_all();
  }
  // Waits until the writer is inside Write (holding a batch).
  void AwaitWrite(int n) {
    std::unique_lock<std::mutex> l(mu);
    entered.wait(l, [&] { return writes >= n; });
  }

  std::string name = "a";
  std::mutex mu;
  std::condition_variable cv, entered;
  std::vector<nlohmann::json> got;
  bool held = false;
  bool failing = false;
  int writes = 0;
};

Event Named(const char* op, bool critical = false) {
  Event e = Start(op);
  e.critical = critical;
  return e;
}

struct Fixture {
  explicit Fixture(RecorderOptions o, int nsinks = 1) {
    std::vector<std::unique_ptr<Sink>> v;
    for (int i = 0; i < nsinks; ++i) {
      auto s = std::make_unique<CollectingSink>();
      s->name = std::string(1, static_cast<char>('a' + i));
      sinks.push_back(s.get());
      v.push_back(std::move(s));
    }
    rec = std::make_unique<Recorder>(o, std::move(v), Caller::Self());
  }
  std::vector<CollectingSink*> sinks;
  std::unique_ptr<Recorder> rec;
};

TEST(RecorderTest, EventsArriveInOrderAndFlushWaitsForThem) {
  RecorderOptions o;
  o.write_interval = std::chrono::milliseconds(3600 * 1000);  // only flushes and full batches wake it
  o.batch_size = 100;
  Fixture fx(o);
  for (int i = 0; i < 250; ++i) fx.rec->Submit(Named(i % 2 ? "KeySign" : "KeyVerify"));
  fx.rec->Flush();
  auto ops = fx.sinks[0]->Ops();
  ASSERT_EQ(ops.size(), 250u);
  for (int i = 0; i < 250; ++i) EXPECT_EQ(ops[i], i % 2 ? "KeySign" : "KeyVerify");
  EXPECT_EQ(fx.rec->stats().written, 250u);
  // Correlation ids: the recorder's random prefix and the event's number in 16 hex digits.
  std::lock_guard<std::mutex> l(fx.sinks[0]->mu);
  const std::string first = fx.sinks[0]->got[0]["correlationId"], last = fx.sinks[0]->got[249]["correlationId"];
  ASSERT_EQ(first.size(), 35u);
  EXPECT_EQ(first.substr(0, 19), last.substr(0, 19));
  EXPECT_EQ(first.substr(19), "0000000000000001");
  EXPECT_EQ(last.substr(19), "00000000000000fa");
}

// kDrop: with the writer stuck on a slow sink and the queue full, ordinary events are counted
// and dropped, critical ones wait for room; the count is written as an event.
// A recorder with a queue of 16 whose writer is stuck in its sink with one event, and a full
// queue behind it ("Queued" x 16); `flusher` waits for the first event.
struct StuckWriter : Fixture {
  explicit StuckWriter(Overflow overflow) : Fixture(Options(overflow)) {
    sinks[0]->Hold();
    rec->Submit(Named("First"));
    flusher = std::thread([this] { rec->Flush(); });  // wakes the writer, which blocks in the sink
    sinks[0]->AwaitWrite(1);
    for (int i = 0; i < 16; ++i) rec->Submit(Named("Queued"));
  }
  static RecorderOptions Options(Overflow overflow) {
    RecorderOptions o;
    o.queue_size = 16;
    o.overflow = overflow;
    o.write_interval = std::chrono::milliseconds(3600 * 1000);
    return o;
  }
  std::thread flusher;
};

TEST(RecorderTest, DropPolicyCountsDropsAndNeverDropsCriticalEvents) {
  StuckWriter fx(Overflow::kDrop);
  for (int i = 0; i < 5; ++i) fx.rec->Submit(Named("Dropped"));
  EXPECT_EQ(fx.rec->stats().dropped, 5u);
  // A critical event waits for room instead of being dropped.
  auto critical = std::async(std::launch::async, [&] { fx.rec->Submit(Named("Authentication", true)); });
  EXPECT_EQ(critical.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  fx.sinks[0]->Release();
  critical.get();
  fx.flusher.join();
  fx.rec->Flush();
  auto ops = fx.sinks[0]->Ops();
  EXPECT_EQ(std::count(ops.begin(), ops.end(), "Queued"), 16);
  EXPECT_EQ(std::count(ops.begin(), ops.end(), "Dropped"), 0);
  EXPECT_EQ(std::count(ops.begin(), ops.end(), "Authentication"), 1);
  ASSERT_EQ(std::count(ops.begin(), ops.end(), "AuditEventsDropped"), 1);
  for (const auto& e : fx.sinks[0]->got) {
    if (e["operationName"] == "AuditEventsDropped") {
      EXPECT_EQ(e["properties"]["dropped"], 5);
    }
  }
}

// kBlock: a full queue makes the submitter wait; nothing is lost.
TEST(RecorderTest, BlockPolicyWaitsAndLosesNothing) {
  StuckWriter fx(Overflow::kBlock);
  auto blocked = std::async(std::launch::async, [&] { fx.rec->Submit(Named("Waited")); });
  EXPECT_EQ(blocked.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  fx.sinks[0]->Release();
  blocked.get();
  fx.flusher.join();
  fx.rec->Flush();
  EXPECT_EQ(fx.sinks[0]->Ops().size(), 18u);
  EXPECT_EQ(fx.rec->stats().dropped, 0u);
}

// A failing sink is reported to the other sinks once per failure streak, and its recovery too.
TEST(RecorderTest, AFailingSinkIsReportedToTheOthersOnce) {
  RecorderOptions o;
  o.write_interval = std::chrono::milliseconds(3600 * 1000);
  Fixture fx(o, 2);
  fx.sinks[0]->failing = true;
  for (int round = 0; round < 3; ++round) {
    fx.rec->Submit(Named("KeySign"));
    fx.rec->Flush();
  }
  fx.sinks[0]->failing = false;
  fx.rec->Submit(Named("KeyVerify"));
  fx.rec->Flush();
  EXPECT_THAT(fx.sinks[1]->Ops(),
              ElementsAre("KeySign", "AuditSinkFailed", "KeySign", "KeySign", "KeyVerify", "AuditSinkRecovered"));
  EXPECT_THAT(fx.sinks[0]->Ops(), ElementsAre("KeyVerify", "AuditSinkRecovered"));
  EXPECT_EQ(fx.rec->stats().sink_errors, 3u);
  EXPECT_EQ(fx.sinks[1]->got[1]["properties"]["sink"], "collect a");
  EXPECT_EQ(fx.sinks[1]->got[1]["resultDescription"], "disk full");
  // The recovery counts what the sink missed meanwhile (README "Size and a full disk").
  EXPECT_EQ(fx.sinks[1]->got[5]["properties"]["lost"], 3);
}

// Coalescing windows (issue 16, item 8), deterministic: the events carry their own start times,
// unthreaded, so no clock is waited for. A denial after its series' window opens a new window,
// and the old window's summary comes first; a success never joins a series.
TEST(RecorderTest, DenialsCoalesceByWindowAndSummariesKeepTheCount) {
  RecorderOptions o;
  o.threaded = false;
  o.coalesce = std::chrono::seconds(5);
  Fixture fx(o);
  const auto t0 = std::chrono::steady_clock::now();
  auto denied = [&](std::chrono::milliseconds at, const char* name = "payroll") {
    Event e = Named("KeySign", true);
    e.start = t0 + at;
    e.name = name;
    e.Finish(CKR_KEY_HANDLE_INVALID);
    e.denied = true;
    e.start = t0 + at;  // Finish measured the duration; the window goes by the start
    return e;
  };
  using std::chrono::milliseconds;
  for (int i = 0; i < 4; ++i) fx.rec->Submit(denied(milliseconds(i * 1000)));  // one window: 1 + 3
  fx.rec->Submit(denied(milliseconds(1500), "other"));                          // its own series
  Event ok = Named("KeySign");
  ok.Finish(CKR_OK);
  fx.rec->Submit(Event(ok));
  fx.rec->Submit(Event(ok));                                                     // never coalesced
  fx.rec->Submit(denied(milliseconds(6000)));  // past the first window: its summary, then this one
  fx.rec->Submit(denied(milliseconds(7000)));  // counted in the second window
  fx.rec->Stop();                              // the second window's summary
  std::lock_guard<std::mutex> l(fx.sinks[0]->mu);
  const auto& got = fx.sinks[0]->got;
  std::vector<std::string> seen;
  for (const auto& e : got)
    seen.push_back(e["resultSignature"].get<std::string>() + " " + e["properties"].value("name", "") + " " +
                   std::to_string(e["properties"].value("repeatCount", 0)));
  EXPECT_THAT(seen, ElementsAre("Forbidden payroll 0", "Forbidden other 0", "OK  0", "OK  0", "Forbidden payroll 3",
                                "Forbidden payroll 0", "Forbidden payroll 1"));
  EXPECT_EQ(fx.rec->stats().coalesced, 4u);
}

// Stop writes out what is queued; later events are ignored.
TEST(RecorderTest, StopFlushesTheQueue) {
  RecorderOptions o;
  o.write_interval = std::chrono::milliseconds(3600 * 1000);
  Fixture fx(o);
  for (int i = 0; i < 10; ++i) fx.rec->Submit(Named("KeySign"));
  fx.rec->Stop();
  EXPECT_EQ(fx.sinks[0]->Ops().size(), 10u);
  fx.rec->Submit(Named("Late"));
  EXPECT_EQ(fx.sinks[0]->Ops().size(), 10u);
}

// Without threads the caller writes each event itself.
TEST(RecorderTest, UnthreadedWritesSynchronously) {
  RecorderOptions o;
  o.threaded = false;
  Fixture fx(o);
  fx.rec->Submit(Named("KeySign"));
  EXPECT_THAT(fx.sinks[0]->Ops(), ElementsAre("KeySign"));
}

TEST(EventTest, JsonFormAndResultSignatures) {
  Event e = Start("KeySign");
  e.principal = "app";
  e.auth_method = "client_secret";
  e.resource = "payments";
  e.kind = "key";
  e.name = "signer";
  e.id = std::string("\x01\xab", 2);
  e.mechanism = CKM_ECDSA_SHA256;
  e.member = "hsm-a";
  e.Finish(CKR_KEY_FUNCTION_NOT_PERMITTED, "not allowed");
  Caller c{42, 7, "/usr/bin/app"};
  nlohmann::json j = ToJson(e, c, "corr-1");
  EXPECT_EQ(j["operationName"], "KeySign");
  EXPECT_EQ(j["correlationId"], "corr-1");
  EXPECT_EQ(j["category"], "AuditEvent");
  EXPECT_EQ(j["resultType"], "Failure");
  EXPECT_EQ(j["resultSignature"], "Forbidden");
  EXPECT_EQ(j["resultDescription"], "not allowed");
  EXPECT_EQ(j["identity"]["principal"], "app");
  EXPECT_EQ(j["caller"]["pid"], 42);
  EXPECT_EQ(j["caller"]["executable"], "/usr/bin/app");
  EXPECT_EQ(j["properties"]["vault"], "payments");
  EXPECT_EQ(j["properties"]["id"], "01ab");
  EXPECT_EQ(j["properties"]["mechanism"], "CKM_ECDSA_SHA256");
  EXPECT_EQ(j["properties"]["member"], "hsm-a");
  EXPECT_EQ(j["properties"]["rv"], "CKR_KEY_FUNCTION_NOT_PERMITTED");
  EXPECT_FALSE(j["properties"].contains("count"));
  e.pool = true;
  EXPECT_EQ(ToJson(e, c, "x")["properties"]["pool"], "payments");

  EXPECT_STREQ(ResultSignature(CKR_OK, false), "OK");
  EXPECT_STREQ(ResultSignature(CKR_OK, true), "Forbidden");
  EXPECT_STREQ(ResultSignature(CKR_KEY_HANDLE_INVALID, true, true), "Unauthorized");
  EXPECT_STREQ(ResultSignature(CKR_PIN_INCORRECT, false), "Unauthorized");
  EXPECT_STREQ(ResultSignature(CKR_USER_NOT_LOGGED_IN, false), "Unauthorized");
  EXPECT_STREQ(ResultSignature(CKR_OBJECT_HANDLE_INVALID, false), "NotFound");
  EXPECT_STREQ(ResultSignature(CKR_TEMPLATE_INCONSISTENT, false), "BadRequest");
  EXPECT_STREQ(ResultSignature(CKR_OPERATION_ACTIVE, false), "Conflict");
  EXPECT_STREQ(ResultSignature(CKR_DEVICE_ERROR, false), "DeviceError");
  EXPECT_STREQ(ResultSignature(CKR_FUNCTION_FAILED, false), "InternalError");
  EXPECT_STREQ(ResultSignature(CKR_FUNCTION_CANCELED, false), "Cancelled");
  EXPECT_EQ(MechanismName(0x80001234), "0x80001234");
}

// Every event names the machine it was written on, right after its time, so merged logs of a
// fleet still say where each call came from.
TEST(EventTest, EveryEventCarriesTheHost) {
  Event e = Start("KeySign");
  e.Finish(CKR_OK);
  const std::string line = FormatEvent(e, "web-7", CallerJson(Caller{1, 2, "x"}), "c");
  EXPECT_EQ(line.find("{\"time\":\""), 0u) << line;
  EXPECT_NE(line.find("Z\",\"host\":\"web-7\",\"correlationId\":"), std::string::npos) << line;
  EXPECT_EQ(nlohmann::json::parse(line)["host"], "web-7");
  EXPECT_EQ(ToJson(e, Caller{1, 2, "x", "db-2"}, "c")["host"], "db-2");

  // This machine's name: gethostname(), the same for every event of the process.
  char raw[256] = {};
  ASSERT_EQ(gethostname(raw, sizeof(raw) - 1), 0);
  EXPECT_EQ(HostName(), SanitizeHostName(raw));
  EXPECT_EQ(&HostName(), &HostName());
  EXPECT_EQ(Caller::Self().host, HostName());
}

TEST(EventTest, HostNamesAreSanitised) {
  EXPECT_EQ(SanitizeHostName("web-1.eu-west.example.com"), "web-1.eu-west.example.com");
  EXPECT_EQ(SanitizeHostName("Build_Box-2"), "Build_Box-2");
  EXPECT_EQ(SanitizeHostName("a b\"c\n{\x1b"), "a_b_c___");
  EXPECT_EQ(SanitizeHostName("h\xc3\xa9te"), "h__te");  // no UTF-8 in a host name
  EXPECT_EQ(SanitizeHostName(""), "unknown");
  EXPECT_EQ(SanitizeHostName(std::string(300, 'x')), std::string(253, 'x'));
}

// A recorder writes the host into every event it formats, also when it was given a caller
// without one.
TEST(RecorderTest, EventsCarryTheHost) {
  for (Caller caller : {Caller::Self(), Caller{1, 2, "x"}}) {
    auto s = std::make_unique<CollectingSink>();
    CollectingSink* sink = s.get();
    std::vector<std::unique_ptr<Sink>> v;
    v.push_back(std::move(s));
    RecorderOptions o;
    o.threaded = false;
    Recorder rec(o, std::move(v), caller);
    rec.Submit(Named("KeySign"));
    rec.Submit(Named("Authentication", true));
    rec.Flush();
    std::lock_guard<std::mutex> l(sink->mu);
    ASSERT_EQ(sink->got.size(), 2u);
    for (const auto& j : sink->got) EXPECT_EQ(j["host"], HostName()) << j.dump();
  }
}

// The time is UTC with microseconds, the duration milliseconds with three decimals.
TEST(EventTest, TimeAndDurationFormats) {
  using namespace std::chrono;
  const auto t = sys_days{year{2026} / 11 / 30} + hours{7} + minutes{5} + seconds{9} + microseconds{4021};
  EXPECT_EQ(FormatTime(t), "2026-11-30T07:05:09.004021Z");
  EXPECT_EQ(FormatTime(sys_days{year{1999} / 12 / 31} + hours{23} + minutes{59} + seconds{59} + microseconds{999999}),
            "1999-12-31T23:59:59.999999Z");
  Event e = Start("KeySign");
  e.Finish(CKR_OK);
  e.time = t;
  for (auto [us, text] : {std::pair<int64_t, const char*>{0, "0.000"}, {7, "0.007"}, {1234, "1.234"},
                          {120050, "120.050"}, {3000000, "3000.000"}}) {
    e.duration_us = us;
    const std::string line = FormatEvent(e, "h", CallerJson(Caller{1, 2, "x"}), "c");
    EXPECT_NE(line.find(std::string("\"durationMs\":") + text + ","), std::string::npos) << line;
    EXPECT_NE(line.find("\"time\":\"2026-11-30T07:05:09.004021Z\""), std::string::npos) << line;
    EXPECT_TRUE(nlohmann::json::accept(line));
  }
}

// Labels and messages are caller-controlled: quotes, control characters and bytes that are no
// UTF-8 must still give one valid JSON line.
TEST(EventTest, StringsAreEscapedAndInvalidUtf8Replaced) {
  std::string out;
  AppendJsonString(out, std::string("a\"b\\c\nd\x01\x7f\xff\xc3\xa9\xe2\x82\xac\xed\xa0\x80", 18));
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\nd\\u0001\\u007f\xEF\xBF\xBD\xc3\xa9\xe2\x82\xac\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
  Event e = Start("KeyGet");
  e.name = std::string("evil\"}\n{\"x\":\xc0", 13);
  e.extra = {{"note", "line\nbreak"}};
  e.Finish(CKR_OK);
  const std::string line = FormatEvent(e, "h", CallerJson(Caller{1, 2, "/bin/\"x\""}), "c");
  EXPECT_EQ(line.find('\n'), std::string::npos);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["properties"]["name"], "evil\"}\n{\"x\":\xEF\xBF\xBD");
  EXPECT_EQ(j["properties"]["note"], "line\nbreak");
  EXPECT_EQ(j["caller"]["executable"], "/bin/\"x\"");
}

// ---- fork safety (issue 16 item 13; README "PKCS#11 conformance notes") ----------------------

// Whether the writer is inside a sink's Write, readable in a forked child (an atomic load is
// async-signal-safe).
std::atomic<bool> g_inside_write{false};
// Set by this file's prepare handler when a fork begins.
std::mutex g_fork_mu;
std::condition_variable g_fork_cv;
bool g_fork_started = false;

void NoteForkStarted() {
  std::lock_guard<std::mutex> l(g_fork_mu);
  g_fork_started = true;
  g_fork_cv.notify_all();
}

class InsideSink : public CollectingSink {
 public:
  Status Write(std::span<const Record> events) override {
    g_inside_write = true;
    Status st = CollectingSink::Write(events);
    g_inside_write = false;
    return st;
  }
};

// A process forks while the writer is inside a sink (holding whatever the sink, OpenSSL or the
// allocator hold). The recorder's prepare handler makes the fork wait until the batch is
// written, so the child's copy of the writer is never mid-write; without it the fork goes
// ahead while the sink is still held.
TEST(RecorderForkTest, AForkWaitsUntilTheBatchInProgressIsWritten) {
  RecorderOptions o;
  o.write_interval = std::chrono::milliseconds(3600 * 1000);
  o.batch_size = 1;  // one event wakes the writer
  std::vector<std::unique_ptr<Sink>> v;
  auto sink = std::make_unique<InsideSink>();
  InsideSink* held = sink.get();
  held->Hold();
  v.push_back(std::move(sink));
  Recorder rec(o, std::move(v), Caller::Self());
  // Registered after the recorder's handlers, so this prepare handler runs before theirs
  // (POSIX runs prepare handlers in reverse order): it tells the releaser the fork has begun.
  static std::once_flag once;
  std::call_once(once, [] { ASSERT_EQ(pthread_atfork(&NoteForkStarted, nullptr, nullptr), 0); });
  {
    std::lock_guard<std::mutex> l(g_fork_mu);
    g_fork_started = false;
  }
  rec.Submit(Named("KeySign"));
  held->AwaitWrite(1);
  ASSERT_TRUE(g_inside_write);
  // Lets the sink finish only once the fork has begun: a fork that does not wait for the
  // writer happens while the sink is still held.
  std::thread releaser([&] {
    std::unique_lock<std::mutex> l(g_fork_mu);
    g_fork_cv.wait(l, [] { return g_fork_started; });
    held->Release();
  });
  const pid_t pid = fork();
  if (pid == 0) _exit(g_inside_write.load() ? 1 : 0);  // async-signal-safe only
  ASSERT_GT(pid, 0);
  releaser.join();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child was forked while the writer was inside the sink";
  rec.Flush();
  EXPECT_THAT(held->Ops(), ElementsAre("KeySign"));
}

}  // namespace
}  // namespace vaultp11::audit
