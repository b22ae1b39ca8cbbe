// Tests of moving and checking a store (store/migrate.cc, store/check.cc): Store::MigrateFrom
// copies a SQLite store into an empty store (PostgreSQL, the case `vaultp11 store migrate`
// serves, and SQLite, which the Store function supports as well) and Store::Check finds what is
// wrong with a store of either backend. PostgreSQL runs use one real server for the binary
// (tests/fixtures/pg_server.h) and a fresh database per test.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "matchers.h"
#include "pg_primary.h"
#include "pg_server.h"
#include "store/store.h"
#include "store_records.h"
#include "temp_dir.h"
#include "util/strings.h"

namespace vaultp11::store {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::vaultp11::testing::PgServer;
using ::vaultp11::testing::TempDir;
using Backend = Options::Backend;

using ::vaultp11::testing::PgPrimary;

MATCHER_P(IsOkAndHolds, value, "") { return arg.ok() && arg.value() == value; }
MATCHER_P(IsErrorWithRv, rv, "") { return !arg.ok() && arg.rv() == static_cast<CK_RV>(rv); }

using ::vaultp11::store::testing::Secret;

ObjectRecord Record(const std::string& vault, const std::string& label, CK_OBJECT_CLASS cls, const std::string& id) {
  ObjectRecord r;
  r.vault = vault;
  r.object_class = cls;
  r.label = label;
  r.ck_id = ToBytes(id);
  r.attributes = ToBytes("attrs-" + label + "-" + id);
  return r;
}

// The test's database name: from the test's name, lowercase, at most 63 characters.
std::string DatabaseName(const std::string& suffix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "_" + info->name();
  for (char& c : name)
    c = std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(static_cast<unsigned char>(c)))
                                                    : '_';
  name += suffix;
  if (name.size() > 60) {
    char hash[16];
    snprintf(hash, sizeof hash, "%08zx", std::hash<std::string>{}(name) & 0xffffffffu);
    name = name.substr(0, 51) + "_" + hash;
  }
  return name;
}

// A store of one backend (a file in the test's folder, or a fresh database), its master key
// file, and a connection beside it that edits the tables as another program would.
class Place {
 public:
  Place(Backend backend, const TempDir& dir, const std::string& name) : backend_(backend) {
    options_.backend = backend;
    options_.master_key_file = dir.file(name + ".masterkey");
    if (backend == Backend::kPostgres) {
      std::string why;
      pg_ = PgPrimary::Get(&why);
      if (pg_ == nullptr) {
        ADD_FAILURE() << why;
        return;
      }
      db_ = DatabaseName("_" + name);
      if (!pg_->CreateDatabase(db_, &why)) ADD_FAILURE() << why;
      options_.dsn = pg_->Dsn(db_);
      options_.password_file = pg_->password_file();
    } else {
      options_.path = dir.file(name + ".db");
      options_.master_key_file = options_.path + ".masterkey";
    }
  }
  const Options& options() const { return options_; }
  Result<std::unique_ptr<Store>> Open(bool create = true) const { return Store::Open(options_, create); }
  bool pg() const { return backend_ == Backend::kPostgres; }

  void Exec(const std::string& sql) const {
    if (pg()) {
      PGconn* c = Connect();
      ASSERT_NE(c, nullptr);
      PGresult* r = PQexec(c, sql.c_str());
      const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
      const std::string err = PQerrorMessage(c);
      PQclear(r);
      PQfinish(c);
      ASSERT_TRUE(ok) << err << sql;
      return;
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(options_.path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    char* err = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    const std::string msg = err != nullptr ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << msg << sql;
  }
  // A single integer; -1 when there is no row.
  int64_t Int(const std::string& sql) const {
    int64_t out = -1;
    if (pg()) {
      PGconn* c = Connect();
      if (c == nullptr) return out;
      PGresult* r = PQexec(c, sql.c_str());
      if (PQresultStatus(r) != PGRES_TUPLES_OK) ADD_FAILURE() << PQerrorMessage(c) << sql;
      else if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) out = std::strtoll(PQgetvalue(r, 0, 0), nullptr, 10);
      PQclear(r);
      PQfinish(c);
      return out;
    }
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(options_.path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) ADD_FAILURE() << sqlite3_errmsg(db);
      else if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        out = sqlite3_column_int64(st, 0);
      sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return out;
  }
  // A blob literal of the backend's dialect.
  std::string BlobLiteral(const std::string& hex) const { return pg() ? "'\\x" + hex + "'::bytea" : "X'" + hex + "'"; }

 private:
  PGconn* Connect() const {
    const char* keys[] = {"dbname", "password", nullptr};
    const char* values[] = {options_.dsn.c_str(), PgServer::kPassword, nullptr};
    PGconn* c = PQconnectdbParams(keys, values, 1);
    if (c == nullptr || PQstatus(c) != CONNECTION_OK) {
      ADD_FAILURE() << "cannot connect: " << (c ? PQerrorMessage(c) : "no memory");
      PQfinish(c);
      return nullptr;
    }
    return c;
  }

  Backend backend_;
  const PgServer* pg_ = nullptr;
  std::string db_;
  Options options_;
};

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kPostgres ? "postgresql" : "sqlite";
}

// What Populate wrote, to compare the target with.
struct Written {
  int64_t key_v1 = 0, key_v2 = 0;        // the private keys of the two versions of "signing"
  std::string key_current;               // its current version
  int64_t secret_v1 = 0, secret_v2 = 0;  // the two versions of "db-password"
  int64_t deleted_row = 0;               // the soft-deleted "old-token"
  int64_t purged_id = 0;                 // the newest id, deleted (a tombstone only)
};

// A source with every kind of state: a key with two versions (key pair each), a secret with two
// versions, a soft-deleted item, a hard-deleted object (the highest id, in a tombstone only), a
// policy, a notice, purge protection, a failed login, a used JWT id and an audit anchor.
Written Populate(Store& st) {
  Written w;
  EXPECT_OK(st.EnsureVault("dev"));
  EXPECT_OK(st.EnsureVault("prod"));
  auto v1 = st.InsertVersion({Record("dev", "signing", CKO_PRIVATE_KEY, "k-1"), Record("dev", "signing", CKO_PUBLIC_KEY, "k-1")},
                             {Secret("private-key-one"), SecureBytes{}}, false);
  EXPECT_OK(v1.status());
  if (v1.ok()) w.key_v1 = (*v1)[0].id;
  auto v2 = st.InsertVersion({Record("dev", "signing", CKO_PRIVATE_KEY, "k-2"), Record("dev", "signing", CKO_PUBLIC_KEY, "k-2")},
                             {Secret("private-key-two"), SecureBytes{}}, true);
  EXPECT_OK(v2.status());
  if (v2.ok()) {
    w.key_v2 = (*v2)[0].id;
    w.key_current = (*v2)[0].version;
  }
  auto s1 = st.Insert(Record("dev", "db-password", CKO_DATA, ""), Secret("hunter2-one"));
  EXPECT_OK(s1.status());
  if (s1.ok()) w.secret_v1 = s1->id;
  auto s2 = st.Insert(Record("dev", "db-password", CKO_DATA, ""), Secret("hunter2-two"), true);
  EXPECT_OK(s2.status());
  if (s2.ok()) w.secret_v2 = s2->id;
  auto old = st.Insert(Record("prod", "old-token", CKO_DATA, ""), Secret("old-token-value"));
  EXPECT_OK(old.status());
  if (old.ok()) w.deleted_row = old->id;
  EXPECT_OK(st.SoftDeleteItem("prod", "old-token", 1000, 2000).status());
  auto tmp = st.Insert(Record("dev", "", CKO_DATA, "tmp"), Secret("scratch"));
  EXPECT_OK(tmp.status());
  if (tmp.ok()) {
    w.purged_id = tmp->id;
    EXPECT_OK(st.Delete(tmp->id));
  }
  EXPECT_OK(st.SetPolicy("dev", "signing", R"({"rotate_after_days":90})"));
  EXPECT_OK(st.ClaimNotice("dev", "signing", w.key_current, "near-expiry").status());
  EXPECT_OK(st.EnablePurgeProtection("prod"));
  EXPECT_OK(st.RecordLoginFailure("alice", 5000, 5, 60).status());
  EXPECT_OK(st.UseJti(std::string_view("issuer\0jti-1", 12), 4102444800, 5000).status());
  EXPECT_OK(st.AdvanceAuditAnchor("/var/log/vaultp11/audit.log", {1, 2, 3, std::string(64, 'a')}));
  return w;
}

// ---- migration -------------------------------------------------------------------------------

// The source is a SQLite file; the target of the parameter's backend.
class MigrateTest : public ::testing::TestWithParam<Backend> {
 protected:
  MigrateTest() : source_(Backend::kSqlite, dir_, "source"), target_(GetParam(), dir_, "target") {}
  TempDir dir_;
  Place source_;
  Place target_;
};
INSTANTIATE_TEST_SUITE_P(Targets, MigrateTest, ::testing::Values(Backend::kPostgres, Backend::kSqlite), BackendName);

TEST_P(MigrateTest, CopiesEveryRowAndTheTargetReadsIt) {
  ASSERT_OK_AND_ASSIGN(auto src, source_.Open());
  const Written w = Populate(*src);
  ASSERT_OK_AND_ASSIGN(int64_t source_revision, src->Revision());
  ASSERT_OK_AND_ASSIGN(std::string deployment, src->DeploymentId());
  ASSERT_OK_AND_ASSIGN(auto dst, target_.Open());

  ASSERT_OK_AND_ASSIGN(Store::StoreCounts c, dst->MigrateFrom(*src));
  EXPECT_EQ(c.vaults, 2);
  EXPECT_EQ(c.items, 3);     // signing, db-password, old-token
  EXPECT_EQ(c.versions, 5);  // 2 + 2 + 1
  EXPECT_EQ(c.objects, 7);   // 4 + 2 + 1
  EXPECT_EQ(c.secrets, 5);
  EXPECT_EQ(c.deleted_items, 1);
  EXPECT_EQ(c.policies, 1);
  EXPECT_EQ(c.notices, 1);
  EXPECT_EQ(c.tombstones, 2);  // the soft-deleted row and the deleted one
  EXPECT_EQ(c.purge_protected, 1);
  EXPECT_EQ(c.login_failures, 1);
  EXPECT_EQ(c.used_jtis, 1);
  EXPECT_EQ(c.audit_anchors, 1);
  EXPECT_GT(c.revision, source_revision);

  // Each vault's rows as the source has them: same ids, versions, attributes.
  for (const char* vault : {"dev", "prod"}) {
    ASSERT_OK_AND_ASSIGN(auto want, src->LoadVault(vault));
    ASSERT_OK_AND_ASSIGN(auto got, dst->LoadVault(vault));
    ASSERT_EQ(got.size(), want.size()) << vault;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].id, want[i].id);
      EXPECT_EQ(got[i].label, want[i].label);
      EXPECT_EQ(got[i].version, want[i].version);
      EXPECT_EQ(got[i].created, want[i].created);
      EXPECT_EQ(got[i].attributes, want[i].attributes);
      EXPECT_EQ(got[i].has_secret, want[i].has_secret);
    }
  }
  // Secrets open under the target's master key, each at its id.
  EXPECT_THAT(dst->LoadSecret(w.key_v1), IsOkAndHolds(Secret("private-key-one")));
  EXPECT_THAT(dst->LoadSecret(w.key_v2), IsOkAndHolds(Secret("private-key-two")));
  EXPECT_THAT(dst->LoadSecret(w.secret_v1), IsOkAndHolds(Secret("hunter2-one")));
  EXPECT_THAT(dst->LoadSecret(w.secret_v2), IsOkAndHolds(Secret("hunter2-two")));
  // The rotation's current version stays current.
  ASSERT_OK_AND_ASSIGN(auto versions, dst->VersionsOf("dev", "signing"));
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_FALSE(versions[0].current);
  EXPECT_TRUE(versions[1].current);
  EXPECT_EQ(versions[1].version, w.key_current);
  // The soft-deleted item stays deleted, with its rows, and can be recovered there.
  ASSERT_OK_AND_ASSIGN(auto deleted, dst->DeletedItems("prod"));
  ASSERT_EQ(deleted.size(), 1u);
  EXPECT_EQ(deleted[0].name, "old-token");
  EXPECT_EQ(deleted[0].purge_after, 2000);
  ASSERT_EQ(deleted[0].objects.size(), 1u);
  EXPECT_EQ(deleted[0].objects[0].id, w.deleted_row);
  ASSERT_OK(dst->RecoverItem("prod", "old-token"));
  EXPECT_THAT(dst->LoadSecret(w.deleted_row), IsOkAndHolds(Secret("old-token-value")));
  // Policies, purge protection, login state, JWT ids, the deployment id, audit anchors.
  EXPECT_THAT(dst->Policy("dev", "signing"), IsOkAndHolds(std::string(R"({"rotate_after_days":90})")));
  EXPECT_THAT(dst->ClaimNotice("dev", "signing", w.key_current, "near-expiry"), IsOkAndHolds(false));
  EXPECT_THAT(dst->PurgeProtection("prod"), IsOkAndHolds(true));
  EXPECT_THAT(dst->PurgeProtection("dev"), IsOkAndHolds(false));
  ASSERT_OK_AND_ASSIGN(LoginFailures f, dst->GetLoginFailures("alice"));
  EXPECT_EQ(f.failures, 1);
  EXPECT_EQ(f.last_failure, 5000);
  EXPECT_THAT(dst->UseJti(std::string_view("issuer\0jti-1", 12), 4102444800, 6000), IsOkAndHolds(false))
      << "a JWT id used before the migration is a replay after it";
  EXPECT_THAT(dst->DeploymentId(), IsOkAndHolds(deployment));
  ASSERT_OK_AND_ASSIGN(auto anchor, dst->GetAuditAnchor("/var/log/vaultp11/audit.log"));
  ASSERT_TRUE(anchor.has_value());
  EXPECT_EQ(anchor->seq, 3);
  // The data keys are wrapped under the target's master key, not the source's.
  auto with_source_key = target_.options();
  with_source_key.master_key_file = source_.options().master_key_file;
  ASSERT_OK_AND_ASSIGN(auto wrong, Store::Open(with_source_key, false));
  EXPECT_THAT(wrong->LoadSecret(w.key_v1), IsErrorWithRv(CKR_DEVICE_ERROR));
  // And the whole target checks clean.
  ASSERT_OK_AND_ASSIGN(Store::CheckReport report, dst->Check());
  EXPECT_THAT(report.problems, IsEmpty());
}

TEST_P(MigrateTest, NewObjectsGetIdsAboveEveryCopiedOne) {
  ASSERT_OK_AND_ASSIGN(auto src, source_.Open());
  const Written w = Populate(*src);
  ASSERT_OK_AND_ASSIGN(auto dst, target_.Open());
  ASSERT_OK(dst->MigrateFrom(*src).status());
  // The newest source id was deleted (only its tombstone says it existed): still never reused.
  ASSERT_OK_AND_ASSIGN(ObjectRecord fresh, dst->Insert(Record("dev", "after", CKO_DATA, ""), Secret("new")));
  EXPECT_GT(fresh.id, w.purged_id);
  EXPECT_THAT(dst->LoadSecret(fresh.id), IsOkAndHolds(Secret("new")));
  // Another host of the target (a second Store) sees it, and the copied rows.
  ASSERT_OK_AND_ASSIGN(auto other, target_.Open(false));
  ASSERT_OK_AND_ASSIGN(auto rows, other->LoadByLabel("dev", "after"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].id, fresh.id);
  ASSERT_OK_AND_ASSIGN(Store::CheckReport report, other->Check());
  EXPECT_THAT(report.problems, IsEmpty());
}

TEST_P(MigrateTest, RefusesANonEmptyTargetAndLeavesItAsItWas) {
  ASSERT_OK_AND_ASSIGN(auto src, source_.Open());
  Populate(*src);
  ASSERT_OK_AND_ASSIGN(auto dst, target_.Open());
  ASSERT_OK(dst->EnsureVault("live"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord mine, dst->Insert(Record("live", "mine", CKO_DATA, ""), Secret("keep me")));
  ASSERT_OK_AND_ASSIGN(int64_t revision, dst->Revision());
  ASSERT_OK_AND_ASSIGN(std::string deployment, dst->DeploymentId());

  auto migrated = dst->MigrateFrom(*src);
  EXPECT_THAT(migrated, IsErrorWithRv(CKR_FUNCTION_REJECTED));
  EXPECT_THAT(migrated.error().message, AllOf(HasSubstr("is not empty"), HasSubstr("1 vaults rows"),
                                                       HasSubstr("1 objects rows"), HasSubstr("nothing was changed")));
  ASSERT_OK_AND_ASSIGN(auto vaults, dst->Vaults());
  EXPECT_THAT(vaults, ElementsAre("live"));
  EXPECT_EQ(target_.Int("SELECT count(*) FROM objects"), 1);
  EXPECT_EQ(target_.Int("SELECT count(*) FROM tombstones"), 0);
  EXPECT_EQ(target_.Int("SELECT count(*) FROM item_policies"), 0);
  EXPECT_THAT(dst->Revision(), IsOkAndHolds(revision));
  EXPECT_THAT(dst->DeploymentId(), IsOkAndHolds(deployment));
  EXPECT_THAT(dst->LoadSecret(mine.id), IsOkAndHolds(Secret("keep me")));
}

TEST_P(MigrateTest, ATamperedSourceRowStopsTheMigrationBeforeAnythingIsWritten) {
  ASSERT_OK_AND_ASSIGN(auto src, source_.Open());
  const Written w = Populate(*src);
  source_.Exec("UPDATE objects SET attributes = X'00' WHERE id = " + std::to_string(w.secret_v1));
  ASSERT_OK_AND_ASSIGN(auto dst, target_.Open());
  auto migrated = dst->MigrateFrom(*src);
  EXPECT_THAT(migrated, IsErrorWithRv(CKR_DEVICE_ERROR));
  EXPECT_THAT(migrated.error().message,
              AllOf(HasSubstr("object " + std::to_string(w.secret_v1)), HasSubstr("failed authentication")));
  EXPECT_EQ(target_.Int("SELECT count(*) FROM vaults"), 0);
  EXPECT_EQ(target_.Int("SELECT count(*) FROM objects"), 0);
}

TEST_P(MigrateTest, ATamperedSourceSecretStopsTheMigration) {
  ASSERT_OK_AND_ASSIGN(auto src, source_.Open());
  const Written w = Populate(*src);
  // The secret of one row put in another's place (a valid ciphertext, for another id).
  source_.Exec("UPDATE objects SET secret = (SELECT secret FROM objects WHERE id = " + std::to_string(w.secret_v1) +
               ") WHERE id = " + std::to_string(w.secret_v2));
  ASSERT_OK_AND_ASSIGN(auto dst, target_.Open());
  auto migrated = dst->MigrateFrom(*src);
  EXPECT_THAT(migrated, IsErrorWithRv(CKR_DEVICE_ERROR));
  EXPECT_THAT(migrated.error().message,
              AllOf(HasSubstr("secret of object " + std::to_string(w.secret_v2)), HasSubstr("nothing was migrated")));
  EXPECT_EQ(target_.Int("SELECT count(*) FROM objects"), 0);
}

TEST_P(MigrateTest, TheSourceNeedsItsOwnMasterKey) {
  {
    ASSERT_OK_AND_ASSIGN(auto src, source_.Open());
    Populate(*src);
  }
  // Another key file in the source key's place.
  const std::string other = dir_.path() + "/other.key";
  {
    SecureBytes key(32);
    ASSERT_OK(ossl::RandomBytes(key));
    std::ofstream(other, std::ios::binary).write(reinterpret_cast<const char*>(key.data()), 32);
    ASSERT_EQ(chmod(other.c_str(), 0600), 0);
  }
  ASSERT_OK_AND_ASSIGN(auto src, Store::Open(source_.options().path, other, false));
  ASSERT_OK_AND_ASSIGN(auto dst, target_.Open());
  auto migrated = dst->MigrateFrom(*src);
  EXPECT_THAT(migrated, IsErrorWithRv(CKR_DEVICE_ERROR));
  EXPECT_THAT(migrated.error().message, AllOf(HasSubstr("vault 'dev'"), HasSubstr("wrong root key: master key file")));
  EXPECT_EQ(target_.Int("SELECT count(*) FROM vaults"), 0);
}

TEST_P(MigrateTest, AnEmptySourceMakesAnEmptyTargetThatWorks) {
  ASSERT_OK_AND_ASSIGN(auto src, source_.Open());
  ASSERT_OK_AND_ASSIGN(auto dst, target_.Open());
  ASSERT_OK_AND_ASSIGN(Store::StoreCounts c, dst->MigrateFrom(*src));
  EXPECT_EQ(c.vaults, 0);
  EXPECT_EQ(c.objects, 0);
  ASSERT_OK(dst->EnsureVault("dev"));
  ASSERT_OK(dst->Insert(Record("dev", "x", CKO_DATA, ""), Secret("x")).status());
}

// ---- checking ----------------------------------------------------------------------------------

class CheckTest : public ::testing::TestWithParam<Backend> {
 protected:
  CheckTest() : place_(GetParam(), dir_, "store") {}
  void SetUp() override {
    auto st = place_.Open();
    ASSERT_OK(st.status());
    w_ = Populate(**st);
  }
  Store::CheckReport Check() {
    auto st = place_.Open(false);
    EXPECT_OK(st.status());
    if (!st.ok()) return {};
    auto report = (*st)->Check();
    EXPECT_OK(report.status());
    return report.ok() ? std::move(report).value() : Store::CheckReport{};
  }
  TempDir dir_;
  Place place_;
  Written w_;
};
INSTANTIATE_TEST_SUITE_P(Backends, CheckTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres), BackendName);

TEST_P(CheckTest, ACleanStoreHasNoProblems) {
  Store::CheckReport r = Check();
  EXPECT_THAT(r.problems, IsEmpty());
  EXPECT_EQ(r.counts.vaults, 2);
  EXPECT_EQ(r.counts.items, 3);
  EXPECT_EQ(r.counts.versions, 5);
  EXPECT_EQ(r.counts.objects, 7);
  EXPECT_EQ(r.counts.secrets, 5);
  EXPECT_EQ(r.counts.deleted_items, 1);
  EXPECT_EQ(r.counts.policies, 1);
  EXPECT_EQ(r.counts.tombstones, 2);
  EXPECT_EQ(r.counts.audit_anchors, 1);
}

TEST_P(CheckTest, ATamperedRowIsNamed) {
  place_.Exec("UPDATE objects SET attributes = " + place_.BlobLiteral("00") + " WHERE id = " +
              std::to_string(w_.key_v2));
  Store::CheckReport r = Check();
  EXPECT_THAT(r.problems, ElementsAre(AllOf(HasSubstr("vault \"dev\" item \"signing\" object " + std::to_string(w_.key_v2)),
                                            HasSubstr("record MAC does not match"))));
}

TEST_P(CheckTest, ATamperedSecretIsNamed) {
  // One byte of the ciphertext flipped (the row's MAC does not cover the ciphertext: the AEAD does).
  if (place_.pg())
    place_.Exec("UPDATE objects SET secret = set_byte(secret, 20, get_byte(secret, 20) # 1) WHERE id = " +
                std::to_string(w_.secret_v2));
  else  // another row's ciphertext (valid, but for another id)
    place_.Exec("UPDATE objects SET secret = (SELECT secret FROM objects WHERE id = " + std::to_string(w_.secret_v1) +
                ") WHERE id = " + std::to_string(w_.secret_v2));
  Store::CheckReport r = Check();
  EXPECT_THAT(r.problems,
              ElementsAre(AllOf(HasSubstr("vault \"dev\" item \"db-password\" object " + std::to_string(w_.secret_v2)),
                                HasSubstr("secret does not decrypt"))));
  // What a secret holds is never in a problem.
  for (const std::string& p : r.problems) EXPECT_THAT(p, ::testing::Not(HasSubstr("hunter2")));
}

TEST_P(CheckTest, AWrongMasterKeyNamesEveryVault) {
  SecureBytes key(32);
  ASSERT_OK(ossl::RandomBytes(key));
  const std::string& path = place_.options().master_key_file;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(key.data()), 32);
  Store::CheckReport r = Check();
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("vault \"dev\""), HasSubstr("data key does not open"))));
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("vault \"prod\""), HasSubstr("data key does not open"))));
  EXPECT_THAT(r.problems, Contains(HasSubstr("objects not checked")));
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("audit anchor"), HasSubstr("does not match its MAC"))));
}

TEST_P(CheckTest, ARevisionAboveTheCounterIsNamed) {
  place_.Exec("UPDATE objects SET revision = 100000 WHERE id = " + std::to_string(w_.secret_v1));
  place_.Exec("UPDATE tombstones SET revision = 100001 WHERE id = " + std::to_string(w_.purged_id));
  Store::CheckReport r = Check();
  EXPECT_THAT(r.problems,
              ElementsAre(AllOf(HasSubstr("object " + std::to_string(w_.secret_v1)), HasSubstr("revision 100000"),
                                HasSubstr("above the store's revision counter")),
                          AllOf(HasSubstr("deletion of object " + std::to_string(w_.purged_id)),
                                HasSubstr("revision 100001"))));
}

TEST_P(CheckTest, InconsistentVersionsAndDeletionsAreNamed) {
  // A version's public key given another CKA_ID, a live row with a tombstone, a deleted item
  // without rows, a labelled object without a version. MACs fail for the edited rows as well.
  place_.Exec("UPDATE objects SET ck_id = " + place_.BlobLiteral("ff") + " WHERE vault = 'dev' AND label = 'signing' "
              "AND class = " + std::to_string(CKO_PUBLIC_KEY) + " AND id > " + std::to_string(w_.key_v2));
  place_.Exec("INSERT INTO tombstones(id, vault, revision) VALUES(" + std::to_string(w_.secret_v1) + ", 'dev', 1)");
  place_.Exec("INSERT INTO deleted_items(vault, name, deleted, purge_after) VALUES('dev', 'ghost', 1, 2)");
  place_.Exec("UPDATE objects SET version = '' WHERE id = " + std::to_string(w_.secret_v2));
  Store::CheckReport r = Check();
  EXPECT_THAT(r.problems, Contains(HasSubstr("another CKA_ID than the version's other objects")));
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("object " + std::to_string(w_.secret_v1)),
                                         HasSubstr("live but recorded as deleted"))));
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("deleted item \"ghost\""), HasSubstr("has no objects"))));
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("item \"db-password\": object " + std::to_string(w_.secret_v2)),
                                         HasSubstr("has a label but no version"))));
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("item \"db-password\": no current version"))));
}

}  // namespace
}  // namespace vaultp11::store
