// The audit file's hash chain: appends from several threads keep one chain; every kind of
// tampering (a record modified, deleted, inserted, reordered; a file cut at its start; a file
// that does not continue the previous one) is found and located.
#include "audit/chain.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "audit/event.h"
#include "matchers.h"
#include "temp_dir.h"
#include "text_lines.h"

namespace vaultp11::audit {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

using vaultp11::testing::Lines;
using vaultp11::testing::Rewrite;

class ChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path = dir.file("audit.log");
    std::vector<Json> batch;
    for (int i = 0; i < 10; ++i) batch.push_back({{"operationName", "KeySign"}, {"n", i}});
    ASSERT_OK(Append(path, batch));
  }
  testing::TempDir dir;
  std::string path;
};

TEST_F(ChainTest, AnIntactFileVerifies) {
  ASSERT_OK_AND_ASSIGN(Verdict v, VerifyFile(path));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_EQ(v.records, 10u);
  EXPECT_EQ(v.last_hash, LineHash(Lines(path).back()));
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ChainTest, ThreadsAppendingKeepOneChain) {
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) EXPECT_OK(Append(path, std::vector<Json>{{{"t", t}, {"i", i}}}));
    });
  for (auto& t : ts) t.join();
  ASSERT_OK_AND_ASSIGN(Verdict v, VerifyFile(path));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_EQ(v.records, 210u);
}

TEST_F(ChainTest, EachKindOfTamperingIsFoundWhereItIs) {
  const auto good = Lines(path);
  auto verdict = [&](const std::vector<std::string>& lines) {
    Rewrite(path, lines);
    auto v = VerifyFile(path);
    EXPECT_TRUE(v.ok());
    return v.ok() ? v.value() : Verdict{};
  };
  auto modified = good;
  modified[4].replace(modified[4].find("KeySign"), 7, "KeyHide");
  Verdict m = verdict(modified);
  EXPECT_FALSE(m.intact);
  EXPECT_EQ(m.line, 5u);
  EXPECT_THAT(m.problem, HasSubstr("record 5 was modified"));

  auto deleted = good;
  deleted.erase(deleted.begin() + 3);
  Verdict d = verdict(deleted);
  EXPECT_FALSE(d.intact);
  EXPECT_THAT(d.problem, HasSubstr("records 4 to 4 are missing here (deleted or moved)"));

  auto inserted = good;
  inserted.insert(inserted.begin() + 6, good[2]);
  Verdict i = verdict(inserted);
  EXPECT_FALSE(i.intact);
  EXPECT_THAT(i.problem, HasSubstr("inserted or reordered"));

  auto reordered = good;
  std::swap(reordered[2], reordered[3]);
  Verdict r = verdict(reordered);
  EXPECT_FALSE(r.intact);
  EXPECT_EQ(r.line, 3u);

  auto cut = good;
  cut.erase(cut.begin(), cut.begin() + 2);
  EXPECT_THAT(verdict(cut).problem, HasSubstr("records before it were deleted"));

  auto garbage = good;
  garbage[7] = "not json";
  EXPECT_THAT(verdict(garbage).problem, HasSubstr("not an audit record"));
}

// Records written before events carried "host" and records that carry it make one chain, and
// the host is covered by it like every other field.
TEST(ChainHostTest, OldRecordsWithoutTheHostVerifyAndTheHostIsChained) {
  testing::TempDir dir;
  const std::string path = dir.file("audit.log");
  const Json old_record = Json::parse(
      R"({"time":"2026-11-29T21:30:00.123456Z","correlationId":"5d1e0a7c-94b2-31f0-0000000000000029",)"
      R"("operationName":"KeySign","operationVersion":"1.0","category":"AuditEvent","resultType":"Success",)"
      R"("resultSignature":"OK","resultDescription":"","durationMs":0.031,)"
      R"("identity":{"principal":"app","authMethod":"client_secret"},)"
      R"("caller":{"pid":4242,"uid":1000,"executable":"/usr/sbin/nginx"},)"
      R"("properties":{"vault":"payments","rv":"CKR_OK"}})");
  ASSERT_OK(Append(path, std::vector<Json>{old_record, old_record}));
  ASSERT_OK_AND_ASSIGN(Verdict before, VerifyFile(path));
  EXPECT_TRUE(before.intact) << before.problem;
  Event e = Start("KeySign");
  e.Finish(CKR_OK);
  ASSERT_OK(Append(path, std::vector<Json>{ToJson(e, Caller::Self(), "c-1"), ToJson(e, Caller::Self(), "c-2")}));
  ASSERT_OK_AND_ASSIGN(Verdict mixed, VerifyFile(path));
  EXPECT_TRUE(mixed.intact) << mixed.problem;
  EXPECT_EQ(mixed.records, 4u);
  const auto lines = Lines(path);
  EXPECT_FALSE(Json::parse(lines[1]).contains("host"));
  EXPECT_EQ(Json::parse(lines[2])["host"], HostName());

  // Another host written into a record breaks the chain there.
  auto moved = lines;
  const std::string was = "\"host\":\"" + HostName() + "\"";
  ASSERT_NE(moved[2].find(was), std::string::npos);
  moved[2].replace(moved[2].find(was), was.size(), "\"host\":\"elsewhere\"");
  Rewrite(path, moved);
  ASSERT_OK_AND_ASSIGN(Verdict edited, VerifyFile(path));
  EXPECT_FALSE(edited.intact);
  EXPECT_EQ(edited.line, 3u);
  EXPECT_THAT(edited.problem, HasSubstr("record 3 was modified"));
}

TEST_F(ChainTest, AFollowingFileMustContinueThePreviousOne) {
  ASSERT_OK_AND_ASSIGN(Verdict first, VerifyFile(path));
  const std::string next = dir.file("audit.1.log");
  ASSERT_OK(Append(next, std::vector<Json>{{{"x", 1}}}, first.last_hash));
  ASSERT_OK_AND_ASSIGN(Verdict ok, VerifyFile(next, first.last_hash));
  EXPECT_TRUE(ok.intact) << ok.problem;
  ASSERT_OK_AND_ASSIGN(Verdict other, VerifyFile(next, kGenesisHash));
  EXPECT_FALSE(other.intact);
  EXPECT_THAT(other.problem, HasSubstr("does not continue from the previous file"));
}

TEST_F(ChainTest, TheFirstRecordsPrevHashIsReported) {
  ASSERT_OK_AND_ASSIGN(Verdict v, VerifyFile(path));
  EXPECT_EQ(v.first_prev, kGenesisHash);
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  auto third = RecordHash(fd, 1 << 20, 3);
  auto eleventh = RecordHash(fd, 1 << 20, 11);
  // Only the first 4 lines, as if the file had been 4 lines long when its size was taken.
  const uint64_t four_lines = Lines(path)[0].size() + Lines(path)[1].size() + Lines(path)[2].size() +
                              Lines(path)[3].size() + 4;
  auto prefix = VerifyOpenFile(fd, four_lines);
  close(fd);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third.value(), LineHash(Lines(path)[2]));
  EXPECT_FALSE(eleventh.ok());
  ASSERT_TRUE(prefix.ok());
  EXPECT_TRUE(prefix->intact);
  EXPECT_EQ(prefix->records, 4u);
  EXPECT_EQ(prefix->last_hash, LineHash(Lines(path)[3]));
}

// ReadEnd finds the last complete line however long it is, and where a cut-off line starts.
TEST(ChainEndTest, ReadEndFindsTheLastCompleteLine) {
  testing::TempDir dir;
  const std::string path = dir.file("f");
  auto end_of = [&](const std::string& text) {
    std::ofstream(path, std::ios::trunc | std::ios::binary) << text;
    int fd = open(path.c_str(), O_RDONLY);
    auto e = ReadEnd(fd);
    close(fd);
    EXPECT_TRUE(e.ok());
    return e.ok() ? e.value() : FileEnd{};
  };
  FileEnd e = end_of("");
  EXPECT_EQ(e.size, 0u);
  EXPECT_EQ(e.complete, 0u);
  e = end_of("one\ntwo\n");
  EXPECT_EQ(e.last_line, "two");
  EXPECT_EQ(e.complete, 8u);
  e = end_of("one\ntwo\nthr");
  EXPECT_EQ(e.last_line, "two");
  EXPECT_EQ(e.complete, 8u);
  EXPECT_EQ(e.size, 11u);
  e = end_of("partial only");
  EXPECT_EQ(e.last_line, "");
  EXPECT_EQ(e.complete, 0u);
  const std::string long_line(10000, 'x');
  e = end_of("a\n" + long_line + "\n" + std::string(9000, 'y'));
  EXPECT_EQ(e.last_line, long_line);
  EXPECT_EQ(e.complete, 10003u);
  e = end_of(long_line + "\n");
  EXPECT_EQ(e.last_line, long_line);
}

TEST(ChainEndTest, ChainLinesContinueFromTheGivenRecord) {
  uint64_t seq = 41;
  std::string prev = LineHash("the line before");
  const std::string start = prev;
  std::string out = ChainLines(std::vector<Json>{{{"a", 1}}, {{"b", 2}}}, seq, prev);
  EXPECT_EQ(seq, 43u);
  std::istringstream in(out);
  std::string first, second;
  std::getline(in, first);
  std::getline(in, second);
  EXPECT_EQ(Json::parse(first)["seq"], 42);
  EXPECT_EQ(Json::parse(first)["prevHash"], start);
  EXPECT_EQ(Json::parse(second)["prevHash"], LineHash(first));
  EXPECT_EQ(prev, LineHash(second));
  ASSERT_OK_AND_ASSIGN(uint64_t s, RecordSeq(second));
  EXPECT_EQ(s, 43u);
  EXPECT_FALSE(RecordSeq("{\"seq\": 1}").ok());
}

}  // namespace
}  // namespace vaultp11::audit
