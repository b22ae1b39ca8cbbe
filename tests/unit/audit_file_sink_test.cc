// The audit file sink: rotation by size and by UTC day keeps one chain across files, retention
// and purge delete old rotated files only, the signed head catches what the chain cannot
// (records cut from the end, a replaced file), several processes keep one chain, and a batch
// that cannot be written whole (file size limit, a device) leaves the chain intact.
#include "audit/file_sink.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "audit/chain.h"
#include "matchers.h"
#include "temp_dir.h"
#include "text_lines.h"
#include "util/log.h"

namespace vaultp11::audit {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using Json = nlohmann::json;
using Clock = std::chrono::system_clock;
using namespace std::chrono_literals;

using vaultp11::testing::Lines;
using vaultp11::testing::Rewrite;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? st.st_mode & 07777 : 0;
}

uint64_t SizeOf(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

std::string Base(const std::string& path) { return std::filesystem::path(path).filename().string(); }

SecureBytes Key(uint8_t fill = 7) { return SecureBytes(32, fill); }

Clock::time_point At(std::string_view date, std::chrono::seconds since_midnight = 0s) {
  return Clock::time_point(*ParseDate(date) + since_midnight);
}

// An event as the recorder makes it, at `t`.
Json Event(int n, Clock::time_point t, std::string_view writer = "test") {
  return {{"time", FormatTime(t)},
          {"correlationId", fmt::format("{}-{}", writer, n)},
          {"operationName", "KeySign"},
          {"operationVersion", "7.4"},
          {"category", "AuditEvent"},
          {"resultType", "Success"},
          {"resultSignature", "OK"},
          {"durationMs", 0.25},
          {"identity", {{"principal", "app"}, {"authMethod", "client_secret"}}},
          {"caller", {{"pid", 4242}, {"uid", 1000}, {"executable", "/usr/bin/openssl"}}},
          {"properties", {{"vault", "payments"}, {"kind", "key"}, {"name", "web-tls"}, {"mechanism", "CKM_ECDSA"}, {"rv", "CKR_OK"}}},
          {"writer", writer},
          {"n", n}};
}

std::vector<Json> Batch(int from, int count, Clock::time_point t, std::string_view writer = "test") {
  std::vector<Json> out;
  for (int i = from; i < from + count; ++i) out.push_back(Event(i, t, writer));
  return out;
}

// A fake clock the tests move by hand.
struct FakeClock {
  Clock::time_point now = At("2026-11-29", 21h + 30min);
  std::function<Clock::time_point()> Fn() {
    return [this] { return now; };
  }
};

size_t Records(const ChainVerdict& v) {
  size_t n = 0;
  for (const auto& f : v.files) n += f.records;
  return n;
}

class FileSinkTest : public ::testing::Test {
 protected:
  FileSinkOptions Options(uint64_t max_bytes = 0, bool daily = false) {
    FileSinkOptions o;
    o.path = path;
    o.max_bytes = max_bytes;
    o.daily = daily;
    o.head_key = Key();
    o.now = clock.Fn();
    return o;
  }
  testing::TempDir dir;
  std::string path = dir.file("audit.log");
  FakeClock clock;
};

TEST_F(FileSinkTest, HundredThousandEventsRotateByteSizeAndVerifyAsOneChain) {
  FileSink sink(Options(/*max_bytes=*/1 << 20));
  ASSERT_OK(sink.Open());
  const int kEvents = 100000, kBatch = 250;
  for (int i = 0; i < kEvents; i += kBatch) {
    ASSERT_OK(sink.Write(Batch(i, kBatch, clock.now)));
    clock.now += 1ms;
  }
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> files, ChainFiles(path));
  ASSERT_GT(files.size(), 20u);
  EXPECT_EQ(files.back(), path);
  for (const std::string& f : files) {
    EXPECT_LE(SizeOf(f), 1u << 20) << f;
    EXPECT_EQ(ModeOf(f), 0600u) << f;
  }
  // Rotations within one second are numbered: audit-20261129T213000Z.log, then -1, -2, ...
  EXPECT_EQ(Base(files[0]), "audit-20261129T213000Z.log");
  EXPECT_EQ(Base(files[1]), "audit-20261129T213000Z-1.log");
  EXPECT_EQ(ModeOf(HeadPath(path)), 0600u);
  SecureBytes key = Key();
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifyChain(files, &key));
  EXPECT_TRUE(v.intact) << v.where << ": " << v.problem;
  EXPECT_TRUE(v.from_genesis);
  EXPECT_TRUE(v.head_checked);
  EXPECT_THAT(v.notes, IsEmpty());
  EXPECT_EQ(Records(v), static_cast<size_t>(kEvents));
  EXPECT_EQ(v.head, fmt::format("record {}, signed {}", v.files.back().records, FormatTime(clock.now - 1ms)));
  // Each file starts at seq 1 and continues the one before.
  auto first = Json::parse(Lines(files[1]).front());
  EXPECT_EQ(first["seq"], 1);
  EXPECT_EQ(first["prevHash"], LineHash(Lines(files[0]).back()));
  // Every event once, in order.
  int expect = 0;
  for (const std::string& f : files)
    for (const std::string& l : Lines(f)) ASSERT_EQ(Json::parse(l)["n"], expect++);
}

TEST_F(FileSinkTest, ABatchLargerThanMaxBytesGoesWholeAndAnEmptyFileIsNeverRotated) {
  FileSink sink(Options(/*max_bytes=*/4096));
  ASSERT_OK(sink.Write(Batch(0, 40, clock.now)));  // ~20 KiB into the empty file
  ASSERT_OK_AND_ASSIGN(auto rotated, RotatedFiles(path));
  EXPECT_THAT(rotated, IsEmpty());
  EXPECT_EQ(Lines(path).size(), 40u);
  ASSERT_OK(sink.Write(Batch(40, 1, clock.now)));
  ASSERT_OK_AND_ASSIGN(rotated, RotatedFiles(path));
  ASSERT_EQ(rotated.size(), 1u);
  EXPECT_EQ(Lines(rotated[0].path).size(), 40u);
  EXPECT_EQ(Lines(path).size(), 1u);
}

TEST_F(FileSinkTest, DailyRotationAtUtcMidnight) {
  FileSink sink(Options(0, /*daily=*/true));
  clock.now = At("2026-11-29", 23h + 59min);
  ASSERT_OK(sink.Write(Batch(0, 3, clock.now)));
  clock.now += 30s;
  ASSERT_OK(sink.Write(Batch(3, 3, clock.now)));
  ASSERT_OK_AND_ASSIGN(auto rotated, RotatedFiles(path));
  EXPECT_THAT(rotated, IsEmpty());
  clock.now = At("2026-11-30", 5s);
  ASSERT_OK(sink.Write(Batch(6, 2, clock.now)));
  ASSERT_OK_AND_ASSIGN(rotated, RotatedFiles(path));
  ASSERT_EQ(rotated.size(), 1u);
  EXPECT_EQ(Base(rotated[0].path), "audit-20261130T000005Z.log");
  EXPECT_EQ(Lines(rotated[0].path).size(), 6u);
  EXPECT_EQ(Lines(path).size(), 2u);
  clock.now += 12h;  // the same day: no rotation
  ASSERT_OK(sink.Write(Batch(8, 1, clock.now)));
  ASSERT_OK_AND_ASSIGN(rotated, RotatedFiles(path));
  EXPECT_EQ(rotated.size(), 1u);
  // A clock set back does not rotate (nor name files out of order).
  clock.now = At("2026-11-28", 12h);
  ASSERT_OK(sink.Write(Batch(9, 1, clock.now)));
  ASSERT_OK_AND_ASSIGN(rotated, RotatedFiles(path));
  EXPECT_EQ(rotated.size(), 1u);
  SecureBytes key = Key();
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &key));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_EQ(Records(v), 10u);
}

TEST_F(FileSinkTest, DailyRotationUsesTheMtimeForRecordsWithoutTime) {
  FileSinkOptions o = Options(0, true);
  o.now = [] { return Clock::now() + 24h; };  // tomorrow, while the file was written today
  FileSink sink(o);
  ASSERT_OK(sink.Write(std::vector<Json>{{{"operationName", "KeyGet"}}}));
  ASSERT_OK(sink.Write(std::vector<Json>{{{"operationName", "KeyGet"}}}));
  ASSERT_OK_AND_ASSIGN(auto rotated, RotatedFiles(path));
  EXPECT_EQ(rotated.size(), 1u);
}

TEST_F(FileSinkTest, RotationNeverNamesFilesOutOfOrder) {
  FileSink sink(Options(4096));
  clock.now = At("2026-11-29", 12h);
  for (int i = 0; i < 4; ++i) ASSERT_OK(sink.Write(Batch(i * 10, 10, clock.now)));
  clock.now = At("2026-11-29", 11h);  // set back
  for (int i = 4; i < 6; ++i) ASSERT_OK(sink.Write(Batch(i * 10, 10, clock.now)));
  ASSERT_OK_AND_ASSIGN(auto rotated, RotatedFiles(path));
  std::vector<std::string> names;
  for (const auto& r : rotated) names.push_back(Base(r.path));
  EXPECT_THAT(names, ElementsAre("audit-20261129T120000Z.log", "audit-20261129T120000Z-1.log",
                                 "audit-20261129T120000Z-2.log", "audit-20261129T120000Z-3.log",
                                 "audit-20261129T120000Z-4.log"));
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, nullptr));
  EXPECT_TRUE(v.intact) << v.problem;
}

TEST_F(FileSinkTest, RetentionDeletesOnlyOldRotatedFiles) {
  FileSinkOptions o = Options(0, /*daily=*/true);
  o.retention_days = 3;
  FileSink sink(o);
  for (int day = 1; day <= 10; ++day) {
    clock.now = At("2026-11-01", 1h) + std::chrono::days(day);
    ASSERT_OK(sink.Write(Batch(day * 10, 10, clock.now)));
  }
  ASSERT_OK_AND_ASSIGN(auto rotated, RotatedFiles(path));
  std::vector<std::string> names;
  for (const auto& r : rotated) names.push_back(Base(r.path));
  // Rotated on Nov 3 .. Nov 11 at 01:00; at the last rotation (Nov 11 01:00) files rotated
  // before Nov 8 01:00 are gone; the one from exactly then is kept.
  EXPECT_THAT(names, ElementsAre("audit-20261108T010000Z.log", "audit-20261109T010000Z.log",
                                 "audit-20261110T010000Z.log", "audit-20261111T010000Z.log"));
  EXPECT_EQ(Lines(path).size(), 10u);  // the current file is never deleted
  SecureBytes key = Key();
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &key));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_FALSE(v.from_genesis);
  EXPECT_THAT(v.notes, ElementsAre(HasSubstr("audit-20261108T010000Z.log continues an earlier file")));
}

TEST_F(FileSinkTest, PurgeBeforeDeletesRotatedFilesOlderThanTheDateOnly) {
  FileSink sink(Options(0, true));
  for (int day = 1; day <= 5; ++day) {
    clock.now = At("2026-11-01", 10h) + std::chrono::days(day);
    ASSERT_OK(sink.Write(Batch(day, 1, clock.now)));
  }
  // Rotated Nov 3 .. Nov 6 at 10:00; the current file holds Nov 6's record.
  ASSERT_OK_AND_ASSIGN(auto deleted, PurgeBefore(path, *ParseDate("2026-11-05")));
  std::vector<std::string> names;
  for (const auto& d : deleted) names.push_back(Base(d));
  EXPECT_THAT(names, ElementsAre("audit-20261103T100000Z.log", "audit-20261104T100000Z.log"));
  // The newest rotated file is never purged: the current file continues it, and the rollback
  // check (the store's anchor, ChainEnd) places the chain by its name.
  ASSERT_OK_AND_ASSIGN(deleted, PurgeBefore(path, *ParseDate("2030-01-01")));
  ASSERT_EQ(deleted.size(), 1u);
  EXPECT_EQ(Base(deleted[0]), "audit-20261105T100000Z.log");
  EXPECT_EQ(Lines(path).size(), 1u);
  ASSERT_OK_AND_ASSIGN(auto files, ChainFiles(path));
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(Base(files[0]), "audit-20261106T100000Z.log");
  EXPECT_EQ(files[1], path);
}

TEST(FileSinkNames, RotatedFilesAreRecognisedExactly) {
  testing::TempDir dir;
  const std::string path = dir.file("audit.log");
  for (const char* name : {"audit-20261129T213000Z.log", "audit-20261129T213000Z-2.log", "audit-20261129T213000Z-10.log",
                           "audit-20261129T213001Z.log",
                           // not rotated files of audit.log:
                           "audit-20261129T213000Z-02.log", "audit-20261329T213000Z.log", "audit-x-20261129T213000Z.log",
                           "audit-20261129T213000Z.log.head", "audit-20261129T213000Z.txt", "audit.log.head"})
    std::ofstream(dir.file(name)) << "";
  ASSERT_OK_AND_ASSIGN(auto rotated, RotatedFiles(path));
  std::vector<std::string> names;
  for (const auto& r : rotated) names.push_back(Base(r.path));
  EXPECT_THAT(names, ElementsAre("audit-20261129T213000Z.log", "audit-20261129T213000Z-2.log",
                                 "audit-20261129T213000Z-10.log", "audit-20261129T213001Z.log"));
  EXPECT_EQ(RotatedName("/x/audit", std::chrono::floor<std::chrono::seconds>(At("2026-01-02", 3h + 4min + 5s)), 3), "/x/audit-20260102T030405Z-3");
  EXPECT_FALSE(ParseDate("2026-02-30"));
  EXPECT_FALSE(ParseDate("2026-1-01"));
  EXPECT_EQ(FormatTime(At("2026-11-29", 21h) + 123456us), "2026-11-29T21:00:00.123456Z");
}

// ---- tampering -------------------------------------------------------------------------------

class TamperTest : public FileSinkTest {
 protected:
  void SetUp() override {
    FileSink sink(Options(/*max_bytes=*/8192));
    for (int i = 0; i < 120; i += 6) ASSERT_OK(sink.Write(Batch(i, 6, clock.now)));
    ASSERT_OK_AND_ASSIGN(files, ChainFiles(path));
    ASSERT_GE(files.size(), 4u);
    ASSERT_GE(Lines(path).size(), 3u);
    ASSERT_OK_AND_ASSIGN(ChainVerdict v, Check());
    ASSERT_TRUE(v.intact) << v.problem;
  }
  Result<ChainVerdict> Check() { return VerifySink(path, &key); }
  ChainVerdict Broken() {
    auto v = Check();
    EXPECT_TRUE(v.ok()) << v.error().message;
    if (!v.ok()) return {};
    EXPECT_FALSE(v->intact);
    return v.value();
  }
  SecureBytes key = Key();
  std::vector<std::string> files;
};

TEST_F(TamperTest, AModifiedRecordInARotatedFile) {
  auto lines = Lines(files[1]);
  lines[2].replace(lines[2].find("KeySign"), 7, "KeyHide");
  Rewrite(files[1], lines);
  ChainVerdict v = Broken();
  EXPECT_EQ(v.where, files[1] + ":3");
  EXPECT_THAT(v.problem, HasSubstr("record 3 was modified"));
  EXPECT_EQ(v.files.size(), 1u);  // the file before is intact
}

TEST_F(TamperTest, ADeletedRecord) {
  auto lines = Lines(files[2]);
  lines.erase(lines.begin() + 1);
  Rewrite(files[2], lines);
  EXPECT_THAT(Broken().problem, HasSubstr("records 2 to 2 are missing here"));
}

TEST_F(TamperTest, AnInsertedRecord) {
  auto lines = Lines(files[1]);
  lines.insert(lines.begin() + 3, Lines(files[0])[1]);
  Rewrite(files[1], lines);
  EXPECT_THAT(Broken().problem, HasSubstr("inserted or reordered"));
}

TEST_F(TamperTest, ReorderedRecords) {
  auto lines = Lines(files[1]);
  std::swap(lines[1], lines[2]);
  Rewrite(files[1], lines);
  EXPECT_EQ(Broken().where, files[1] + ":2");
}

TEST_F(TamperTest, ADeletedRotatedFileInTheMiddle) {
  const std::string next = files[2];
  ASSERT_EQ(unlink(files[1].c_str()), 0);
  ChainVerdict v = Broken();
  EXPECT_EQ(v.where, next + ":1");
  EXPECT_THAT(v.problem, HasSubstr("does not continue from the previous file"));
}

TEST_F(TamperTest, RecordsDeletedFromTheEndOfTheCurrentFile) {
  auto lines = Lines(path);
  const size_t n = lines.size();
  lines.pop_back();
  Rewrite(path, lines);
  ChainVerdict v = Broken();
  EXPECT_EQ(v.where, fmt::format("{}:{}", path, n - 1));
  EXPECT_THAT(v.problem, HasSubstr(fmt::format("records were deleted from the end of {}: its head names record {}", path, n)));
  // The chain alone sees nothing.
  ASSERT_OK_AND_ASSIGN(ChainVerdict chain_only, VerifyChain(files, nullptr));
  EXPECT_TRUE(chain_only.intact);
}

TEST_F(TamperTest, TheWholeCurrentFileDeleted) {
  ASSERT_EQ(unlink(path.c_str()), 0);
  EXPECT_THAT(Broken().problem, HasSubstr("records were deleted from the end of " + path));
}

TEST_F(TamperTest, TheLastRecordRewritten) {
  auto lines = Lines(path);
  lines.back().replace(lines.back().find("KeySign"), 7, "KeyHide");
  Rewrite(path, lines);
  EXPECT_THAT(Broken().problem, HasSubstr("is not the one the head signed"));
}

TEST_F(TamperTest, TheCurrentFileReplacedByAnotherChain) {
  FileSinkOptions o = Options();
  o.path = dir.file("other/audit.log");
  std::filesystem::create_directory(dir.file("other"));
  FileSink other(o);
  ASSERT_OK(other.Write(Batch(0, static_cast<int>(Lines(path).size()), clock.now)));
  std::filesystem::copy_file(o.path, path, std::filesystem::copy_options::overwrite_existing);
  ChainVerdict v = Broken();
  EXPECT_EQ(v.where, path + ":1");
  EXPECT_THAT(v.problem, HasSubstr("does not continue from the previous file"));
}

TEST_F(TamperTest, AForgedHead) {
  auto head = Json::parse(ReadAll(HeadPath(path)));
  head["seq"] = head["seq"].get<uint64_t>() - 1;
  head["hash"] = LineHash(Lines(path)[head["seq"].get<size_t>() - 1]);
  std::ofstream(HeadPath(path), std::ios::trunc) << head.dump() << "\n";
  ChainVerdict v = Broken();
  EXPECT_EQ(v.where, HeadPath(path));
  EXPECT_EQ(v.problem, "the head's MAC does not match (forged, or signed with another key)");
  // Signed with another key.
  SecureBytes other = Key(9);
  ASSERT_OK_AND_ASSIGN(ChainVerdict w, VerifySink(path, &other));
  EXPECT_FALSE(w.intact);
  EXPECT_THAT(w.problem, HasSubstr("MAC does not match"));
}

// `vaultp11 store reseal` rotates the head key: the head is re-signed only when it verifies
// under the old key, and then verifies under the new one only.
TEST_F(TamperTest, AHeadReSignedWithANewKeyVerifiesUnderItOnly) {
  SecureBytes next = Key(11);
  const std::string before = ReadAll(HeadPath(path));
  EXPECT_THAT(ResignHead(path, next, Key(12)), RvIs(CKR_SIGNATURE_INVALID));  // not signed with `next`
  EXPECT_EQ(ReadAll(HeadPath(path)), before);
  ASSERT_OK_AND_ASSIGN(bool resigned, ResignHead(path, key, next));
  EXPECT_TRUE(resigned);
  EXPECT_EQ(ModeOf(HeadPath(path)), 0600u);
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &next));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_TRUE(v.head_checked);
  EXPECT_FALSE(Broken().intact);  // the old key no longer verifies it
  // A sink without a head: nothing to do.
  ASSERT_EQ(unlink(HeadPath(path).c_str()), 0);
  ASSERT_OK_AND_ASSIGN(bool none, ResignHead(path, key, next));
  EXPECT_FALSE(none);
}

TEST_F(TamperTest, ADeletedOrDamagedHead) {
  std::ofstream(HeadPath(path), std::ios::trunc) << "{}";
  EXPECT_THAT(Broken().problem, HasSubstr("is not an audit head"));
  ASSERT_EQ(unlink(HeadPath(path).c_str()), 0);
  EXPECT_THAT(Broken().problem, HasSubstr("missing: the end of the chain cannot be checked"));
}

// A writer that stopped between the batch and the head (or between a rotation and the head)
// leaves records the head does not cover: a note, not a break.
// Writes two more records through a sink with `o`, then puts the head from before them back,
// as a writer stopped before signing would leave it.
void WriteUnderAnOldHead(const std::string& path, FileSinkOptions o, Clock::time_point now) {
  const std::string saved = ReadAll(HeadPath(path));
  {
    FileSink sink(std::move(o));
    ASSERT_OK(sink.Write(Batch(500, 2, now)));
  }
  std::ofstream(HeadPath(path), std::ios::trunc) << saved;
}

TEST_F(TamperTest, RecordsAfterTheHeadAreANote) {
  WriteUnderAnOldHead(path, Options(), clock.now);
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, Check());
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_THAT(v.notes, ElementsAre(HasSubstr("were written after the head was signed")));
}

TEST_F(TamperTest, AHeadFromBeforeTheLastRotationIsANote) {
  WriteUnderAnOldHead(path, Options(/*max_bytes=*/4096), clock.now);
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, Check());
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_THAT(v.notes, ElementsAre(HasSubstr("signed before the last rotation")));
}

// The writer is the first to see a cut end: it says so before the chain goes on.
TEST_F(TamperTest, TheWriterWarnsAboutACutEnd) {
  auto lines = Lines(path);
  lines.resize(1);
  Rewrite(path, lines);
  const std::string log_path = dir.file("vaultp11.log");
  log::Configure(log::Level::kWarning, "file:" + log_path);
  {
    FileSink sink(Options());
    EXPECT_OK(sink.Write(Batch(500, 1, clock.now)));
  }
  log::Configure(log::Level::kWarning, "stderr");
  EXPECT_THAT(ReadAll(log_path), HasSubstr("audit file " + path + ": records were deleted from its end"));
}

// ---- several writers, failures ---------------------------------------------------------------

TEST_F(FileSinkTest, TwoProcessesKeepOneChainAcrossRotations) {
  FileSinkOptions o = Options(/*max_bytes=*/16384);
  o.now = nullptr;  // the real clock in both
  auto write_all = [&](std::string_view who) {
    FileSink sink(o);
    for (int i = 0; i < 5000; i += 5) {
      Status st = sink.Write(Batch(i, 5, Clock::now(), who));
      if (!st.ok()) return st;
    }
    return OkStatus();
  };
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(write_all("child").ok() ? 0 : 1);
  EXPECT_OK(write_all("parent"));
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  SecureBytes key = Key();
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &key));
  EXPECT_TRUE(v.intact) << v.where << ": " << v.problem;
  EXPECT_TRUE(v.head_checked);
  EXPECT_GT(v.files.size(), 10u);
  EXPECT_EQ(Records(v), 10000u);
  std::set<std::string> seen;
  for (const auto& f : v.files)
    for (const std::string& l : Lines(f.path)) seen.insert(Json::parse(l)["correlationId"].get<std::string>());
  EXPECT_EQ(seen.size(), 10000u);
}

// Verification reads the current file and its head as they were at one moment, so it never
// sees a half-written batch, a head ahead of the file, or a rotation in between as damage.
TEST_F(FileSinkTest, VerifyingWhileAnotherProcessWritesFindsNoDamage) {
  FileSinkOptions o = Options(/*max_bytes=*/8192);
  o.now = nullptr;
  {
    FileSink first(o);
    ASSERT_OK(first.Write(Batch(0, 5, Clock::now())));
  }
  int done[2];
  ASSERT_EQ(pipe(done), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(done[0]);
    FileSink sink(o);
    for (int i = 5; i < 4000; i += 5)
      if (!sink.Write(Batch(i, 5, Clock::now(), "child")).ok()) _exit(1);
    _exit(0);  // closes done[1]: the parent's read returns 0
  }
  close(done[1]);
  SecureBytes key = Key();
  int checks = 0;
  for (;;) {
    ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &key));
    ASSERT_TRUE(v.intact) << "check " << checks << ": " << v.where << ": " << v.problem;
    ++checks;
    pollfd p{done[0], POLLIN, 0};
    if (poll(&p, 1, 0) == 1) break;  // the child has finished
  }
  close(done[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &key));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_EQ(Records(v), 4000u);
  EXPECT_GT(checks, 1);
}

TEST_F(FileSinkTest, ADeviceIsRefused) {
  const bool head_existed = std::filesystem::exists("/dev/full.head");
  FileSinkOptions o = Options(4096, true);
  o.path = "/dev/full";
  FileSink sink(o);
  Status open = sink.Open();
  EXPECT_FALSE(open.ok());
  EXPECT_THAT(open.error().message, HasSubstr("audit file /dev/full: not a regular file"));
  Status write = sink.Write(Batch(0, 3, clock.now));
  EXPECT_FALSE(write.ok());
  EXPECT_THAT(write.error().message, HasSubstr("/dev/full"));
  EXPECT_EQ(std::filesystem::exists("/dev/full.head"), head_existed);
  ASSERT_OK_AND_ASSIGN(auto rotated, RotatedFiles("/dev/full"));
  EXPECT_THAT(rotated, IsEmpty());
}

// A disk that fills in the middle of a batch (simulated with RLIMIT_FSIZE in a child): the part
// written is cut off again, the error names the file, and the chain goes on afterwards, also
// when the limit hits the new file of a rotation.
TEST_F(FileSinkTest, ABatchCutShortByAFullDiskLeavesTheChainIntact) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    FileSinkOptions o = Options(/*max_bytes=*/64 * 1024);
    FileSink sink(o);
    if (!sink.Open().ok() || !sink.Write(Batch(0, 10, clock.now)).ok()) _exit(10);
    const uint64_t before = SizeOf(path);
    rlimit small{before + 1000, RLIM_INFINITY};
    if (setrlimit(RLIMIT_FSIZE, &small) != 0) _exit(11);
    Status st = sink.Write(Batch(10, 50, clock.now));  // ~25 KiB: stops after 1000 bytes
    if (st.ok() || st.error().message.find("audit file " + path + ": writing 50 records failed") == std::string::npos)
      _exit(12);
    if (SizeOf(path) != before) _exit(13);
    // A rotation whose new file hits the limit keeps the old file current.
    rlimit tiny{500, RLIM_INFINITY};
    if (setrlimit(RLIMIT_FSIZE, &tiny) != 0) _exit(14);
    st = sink.Write(Batch(60, 200, clock.now));  // > 64 KiB with the file: rotates
    if (st.ok() || st.error().message.find("rotating failed") == std::string::npos) _exit(15);
    auto rotated = RotatedFiles(path);
    if (!rotated.ok() || !rotated->empty() || SizeOf(path) != before) _exit(16);
    rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
    if (setrlimit(RLIMIT_FSIZE, &unlimited) != 0) _exit(17);
    if (!sink.Write(Batch(260, 5, clock.now)).ok()) _exit(18);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  SecureBytes key = Key();
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &key));
  EXPECT_TRUE(v.intact) << v.where << ": " << v.problem;
  EXPECT_EQ(Records(v), 15u);
  std::vector<int> ns;
  for (const std::string& l : Lines(path)) ns.push_back(Json::parse(l)["n"].get<int>());
  EXPECT_THAT(ns, ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 260, 261, 262, 263, 264));
  // No temporary file is left behind.
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_THAT(e.path().filename().string(), Not(HasSubstr(".new-"))) << e.path();
}

TEST_F(FileSinkTest, APartialLastLineIsCutOffByTheNextWrite) {
  FileSink sink(Options());
  ASSERT_OK(sink.Write(Batch(0, 3, clock.now)));
  std::ofstream(path, std::ios::app) << R"({"time":"2026-11-29T21:30:00.000000Z","operat)";
  FileSink other(Options());
  EXPECT_OK(other.Open());  // a warning only
  ASSERT_OK(other.Write(Batch(3, 2, clock.now)));
  SecureBytes key = Key();
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, &key));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_EQ(Records(v), 5u);
}

TEST_F(FileSinkTest, OpenChecksTheFileAndItsDirectory) {
  FileSinkOptions o = Options();
  o.path = dir.file("missing/audit.log");
  FileSink missing(o);
  Status st = missing.Open();
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.error().message, "audit file " + o.path + ": cannot open: No such file or directory");
  EXPECT_FALSE(missing.Write(Batch(0, 1, clock.now)).ok());

  std::ofstream(path) << "not an audit record\n";
  FileSink bad(Options());
  st = bad.Open();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr("audit file " + path + ": does not end with an audit record"));
  st = bad.Write(Batch(0, 1, clock.now));
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, HasSubstr(path));
  EXPECT_EQ(Lines(path).size(), 1u);

  ASSERT_EQ(unlink(path.c_str()), 0);
  FileSink good(Options());
  EXPECT_OK(good.Open());
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_EQ(good.Describe(), "file " + path);
}

TEST_F(FileSinkTest, AnEmptiedCurrentFileContinuesTheNewestRotatedFile) {
  FileSink sink(Options(4096));
  for (int i = 0; i < 30; i += 5) ASSERT_OK(sink.Write(Batch(i, 5, clock.now)));
  ASSERT_EQ(truncate(path.c_str(), 0), 0);
  ASSERT_OK(sink.Write(Batch(100, 1, clock.now)));
  ASSERT_OK_AND_ASSIGN(ChainVerdict v, VerifySink(path, nullptr));
  EXPECT_TRUE(v.intact) << v.where << ": " << v.problem;
}

TEST_F(FileSinkTest, TheHeadNamesTheLastRecord) {
  FileSink sink(Options());
  ASSERT_OK(sink.Write(Batch(0, 4, clock.now)));
  auto head = Json::parse(ReadAll(HeadPath(path)));
  EXPECT_EQ(head["file"], "audit.log");
  EXPECT_EQ(head["seq"], 4);
  EXPECT_EQ(head["hash"], LineHash(Lines(path).back()));
  EXPECT_EQ(head["time"], FormatTime(clock.now));
  EXPECT_EQ(head["mac"].get<std::string>().size(), 64u);
  // Without a key there is no head.
  FileSinkOptions o = Options();
  o.path = dir.file("plain.log");
  o.head_key.reset();
  FileSink plain(o);
  ASSERT_OK(plain.Write(Batch(0, 1, clock.now)));
  EXPECT_FALSE(std::filesystem::exists(HeadPath(o.path)));
}

}  // namespace
}  // namespace vaultp11::audit
