// The PostgreSQL store against real servers (tests/fixtures/pg_server.h): what only a shared,
// replicated store has. Every other store rule runs on both backends in store_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "matchers.h"
#include "pg_server.h"
#include "store/store.h"
#include "store_records.h"
#include "temp_dir.h"
#include "util/strings.h"

namespace vaultp11::store {
namespace {

using ::testing::HasSubstr;
using ::vaultp11::testing::PgServer;

constexpr char kCanary[] = "VAULTP11-PG-PLAINTEXT-CANARY-41c9e2";

using ::vaultp11::store::testing::Record;
using ::vaultp11::store::testing::Secret;

// One primary with a synchronous hot standby for the whole binary.
class Servers : public ::testing::Environment {
 public:
  void SetUp() override {
    std::string why;
    primary = PgServer::StartPrimary(&why);
    ASSERT_NE(primary, nullptr) << why;
    standby = PgServer::StartStandby(*primary, &why);
    ASSERT_NE(standby, nullptr) << why;
    ASSERT_TRUE(primary->MakeSynchronous(&why)) << why;
  }
  void TearDown() override {
    standby.reset();
    primary.reset();
  }
  static std::unique_ptr<PgServer> primary, standby;
};
std::unique_ptr<PgServer> Servers::primary, Servers::standby;
[[maybe_unused]] const ::testing::Environment* const kServers = ::testing::AddGlobalTestEnvironment(new Servers());

class PgStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(Servers::primary, nullptr);
    db_ = std::string("t_") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : db_) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string why;
    ASSERT_TRUE(Servers::primary->CreateDatabase(db_, &why)) << why;
  }
  Options On(const std::string& dsn) const {
    Options o;
    o.backend = Options::Backend::kPostgres;
    o.dsn = dsn;
    o.password_file = Servers::primary->password_file();
    o.master_key_file = dir_.file("master.key");
    return o;
  }
  Options Primary() const { return On(Servers::primary->Dsn(db_)); }
  Options Standby() const { return On(Servers::standby->Dsn(db_)); }

  std::string db_;
  ::vaultp11::testing::TempDir dir_;
};

TEST_F(PgStoreTest, DumpOfTheDatabaseHoldsNoPlaintextSecretOrKey) {
  ASSERT_OK_AND_ASSIGN(auto st, Store::Open(Primary(), true));
  ASSERT_OK(st->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(auto rec, st->Insert(Record("v", "k"), Secret(kCanary)));
  ASSERT_OK_AND_ASSIGN(SecureBytes back, st->LoadSecret(rec.id));
  EXPECT_EQ(std::string(back.begin(), back.end()), kCanary);
  std::string dump;
  ASSERT_TRUE(Servers::primary->Dump(db_, &dump)) << dump;
  ASSERT_THAT(dump, HasSubstr("CREATE TABLE public.objects"));
  EXPECT_EQ(dump.find(kCanary), std::string::npos);
  EXPECT_EQ(dump.find(HexOf(ToBytes(kCanary))), std::string::npos);  // bytea is dumped as hex
  std::ifstream key_in(dir_.file("master.key"), std::ios::binary);
  const std::string key((std::istreambuf_iterator<char>(key_in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(key.size(), 32u);
  EXPECT_EQ(dump.find(HexOf(ToBytes(key))), std::string::npos);
}

TEST_F(PgStoreTest, MissingSchemaWithoutCreateIsTokenNotPresent) {
  auto st = Store::Open(Primary(), false);
  ASSERT_THAT(st, RvIs(CKR_TOKEN_NOT_PRESENT));
  EXPECT_THAT(st.error().message, HasSubstr("vaultp11 init"));
}

TEST_F(PgStoreTest, SchemaOfANewerVersionIsRefusedClearly) {
  { ASSERT_OK(Store::Open(Primary(), true).status()); }
  ASSERT_TRUE(Servers::primary->Sql(db_, "UPDATE meta SET value = '2' WHERE key = 'schema_version'"));
  auto st = Store::Open(Primary(), false);
  ASSERT_THAT(st, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(st.error().message, HasSubstr("schema version 2, made by a newer vaultp11"));
}

TEST_F(PgStoreTest, BadPasswordIsAClearErrorWithoutThePassword) {
  ::vaultp11::testing::TempDir d;
  const std::string pw = d.file("pw");
  std::ofstream(pw) << "not-the-password\n";
  chmod(pw.c_str(), 0600);
  Options o = Primary();
  o.password_file = pw;
  auto st = Store::Open(o, true);
  ASSERT_THAT(st, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(st.error().message, HasSubstr("password authentication failed"));
  EXPECT_THAT(st.error().message, ::testing::Not(HasSubstr("not-the-password")));
}

TEST_F(PgStoreTest, AnotherHostsChangeArrivesAsANotificationAndOwnWritesDoNot) {
  ASSERT_OK_AND_ASSIGN(auto a, Store::Open(Primary(), true));
  ASSERT_OK(a->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(auto b, Store::Open(Primary(), true));
  ASSERT_OK_AND_ASSIGN(bool first, b->ExternalChange());
  EXPECT_TRUE(first);
  ASSERT_OK_AND_ASSIGN(bool a_first, a->ExternalChange());
  EXPECT_TRUE(a_first);
  ASSERT_OK_AND_ASSIGN(bool quiet, b->ExternalChange());
  EXPECT_FALSE(quiet);
  ASSERT_OK(a->Insert(Record("v", "k"), Secret("s")).status());
  // Delivered on commit; b reads it from its socket on the next call. The notification is on
  // its way already when Insert returns, but may not be in b's socket yet: b asks the server
  // (a round trip) until it is, which a query does.
  ASSERT_OK(b->Revision().status());
  ASSERT_OK_AND_ASSIGN(bool changed, b->ExternalChange());
  EXPECT_TRUE(changed);
  ASSERT_OK_AND_ASSIGN(bool again, b->ExternalChange());
  EXPECT_FALSE(again);
  ASSERT_OK_AND_ASSIGN(auto rows, b->LoadByLabel("v", "k"));
  EXPECT_EQ(rows.size(), 1u);
  ASSERT_OK_AND_ASSIGN(bool own, a->ExternalChange());
  EXPECT_FALSE(own);  // a's own write is not "another host's"
}

TEST_F(PgStoreTest, StandbyIsReadOnlyButReadsEverything) {
  ASSERT_OK_AND_ASSIGN(auto p, Store::Open(Primary(), true));
  ASSERT_OK(p->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(auto rec, p->Insert(Record("v", "k"), Secret("standby-secret")));
  ASSERT_OK(p->RecordLoginFailure("alice", 100, 5, 60).status());
  ASSERT_OK_AND_ASSIGN(auto s, Store::Open(Standby(), true));
  EXPECT_TRUE(s->read_only());
  ASSERT_OK_AND_ASSIGN(auto rows, s->LoadVault("v"));
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, s->LoadSecret(rec.id));
  EXPECT_EQ(std::string(secret.begin(), secret.end()), "standby-secret");
  EXPECT_THAT(s->Insert(Record("v", "other"), Secret("x")), RvIs(CKR_TOKEN_WRITE_PROTECTED));
  EXPECT_THAT(s->DeleteItem("v", "k"), RvIs(CKR_TOKEN_WRITE_PROTECTED));
  EXPECT_THAT(s->EnsureVault("new"), RvIs(CKR_TOKEN_WRITE_PROTECTED));
  // Replay ids cannot be recorded: refused (fails closed).
  EXPECT_THAT(s->UseJti("iss\0jti", 200, 100), RvIs(CKR_TOKEN_WRITE_PROTECTED));
  // Failed logins are read and counted as if recorded (the lockout rules apply), not written.
  ASSERT_OK_AND_ASSIGN(LoginFailures f, s->RecordLoginFailure("alice", 101, 5, 60));
  EXPECT_EQ(f.failures, 2);
  ASSERT_OK_AND_ASSIGN(LoginFailures kept, p->GetLoginFailures("alice"));
  EXPECT_EQ(kept.failures, 1);
  EXPECT_OK(s->ResetLoginFailures("alice"));
}

// Its own primary and standby: the primary is stopped and the standby promoted.
TEST_F(PgStoreTest, FailoverToTheStandbyAndBackToWritesInTheSameStore) {
  std::string why;
  auto primary = PgServer::StartPrimary(&why);
  ASSERT_NE(primary, nullptr) << why;
  auto standby = PgServer::StartStandby(*primary, &why);
  ASSERT_NE(standby, nullptr) << why;
  ASSERT_TRUE(primary->MakeSynchronous(&why)) << why;
  Options o = On("host=127.0.0.1,127.0.0.1 port=" + std::to_string(primary->port()) + "," +
                 std::to_string(standby->port()) + " dbname=postgres user=" + PgServer::kUser);
  ASSERT_OK_AND_ASSIGN(auto st, Store::Open(o, true));
  EXPECT_FALSE(st->read_only());
  ASSERT_OK(st->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(auto before, st->Insert(Record("v", "before"), Secret("s1")));

  ASSERT_TRUE(primary->Stop(&why)) << why;
  // Reads go on from the standby.
  ASSERT_OK_AND_ASSIGN(auto rows, st->LoadVault("v"));
  EXPECT_EQ(rows.size(), 1u);
  EXPECT_TRUE(st->read_only());
  ASSERT_OK_AND_ASSIGN(SecureBytes s1, st->LoadSecret(before.id));
  EXPECT_EQ(std::string(s1.begin(), s1.end()), "s1");
  auto refused = st->Insert(Record("v", "during"), Secret("s2"));
  ASSERT_THAT(refused, RvIs(CKR_TOKEN_WRITE_PROTECTED));
  EXPECT_THAT(refused.error().message, HasSubstr("read-only"));

  ASSERT_TRUE(standby->Promote(&why)) << why;
  ASSERT_OK(st->Insert(Record("v", "after"), Secret("s3")).status());
  EXPECT_FALSE(st->read_only());
  ASSERT_OK_AND_ASSIGN(auto all, st->LoadVault("v"));
  EXPECT_EQ(all.size(), 2u);
}

}  // namespace
}  // namespace vaultp11::store

