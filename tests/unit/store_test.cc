// Tests of the store: persistence, encryption at rest, change tracking, use by several stores at
// once, names and versions, record MACs, the master key file.
//
// Every behavioural test runs on both backends (store/db.h), value-parameterised:
// Backends/StoreTest.Foo/sqlite and Backends/StoreTest.Foo/postgresql (likewise RecordMacTest).
// PostgreSQL runs use one real server for the binary (tests/fixtures/pg_server.h), a fresh
// database per test, and two Store objects on one database stand for two hosts. What is about
// the SQLite file itself stays SQLite-only, in SqliteStoreTest and SqliteRecordMacTest: the
// file's modes, corrupt, short, missing or read-only files, the busy timeout, stores written
// by earlier versions and their upgrades (PRAGMA user_version, dropped columns and tables, the
// v1 data-key AAD), and other processes forked onto the file. The PostgreSQL store's own
// matters (standbys, failover, notifications, a dump of the database, schema versions) are in
// store_pg_test.cc.
#include "store/store.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "matchers.h"
#include "pg_primary.h"
#include "pg_server.h"
#include "store_records.h"
#include "temp_dir.h"
#include "util/strings.h"

namespace vaultp11::store {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::vaultp11::testing::PgServer;
using std::string_view_literals::operator""sv;
using Backend = Options::Backend;

constexpr char kCanary[] = "VAULTP11-PLAINTEXT-CANARY-7f3a9c1e5b";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

mode_t FileMode(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

using ::vaultp11::store::testing::Record;
using ::vaultp11::store::testing::Secret;

using ::vaultp11::testing::PgPrimary;

struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;
using PgResultPtr = std::unique_ptr<PGresult, PgResultDeleter>;

// What every store test has: a store of backend_ (a file in dir_, or a fresh database on the
// PostgreSQL primary), its master key file in dir_, and a second connection to it that bypasses
// the store (another program editing the database).
class StoreTestBase : public ::testing::Test {
 protected:
  explicit StoreTestBase(Backend backend = Backend::kSqlite) : backend_(backend) {}

  void SetUp() override {
    if (!pg()) return;
    std::string why;
    pg_ = PgPrimary::Get(&why);
    ASSERT_NE(pg_, nullptr) << why;
    db_ = DatabaseName();
    ASSERT_TRUE(pg_->CreateDatabase(db_, &why)) << why;
  }

  bool pg() const { return backend_ == Backend::kPostgres; }
  std::string db_path() const { return dir_.file("vault.db"); }
  std::string key_path() const { return dir_.file("master.key"); }

  Options options() const {
    Options o;
    o.backend = backend_;
    o.master_key_file = key_path();
    if (pg()) {
      o.dsn = pg_->Dsn(db_);
      o.password_file = pg_->password_file();
    } else {
      o.path = db_path();
    }
    return o;
  }

  Result<std::unique_ptr<Store>> OpenStore(bool create = true) { return Store::Open(options(), create); }

  // Another store, of nothing this test's store has (another file; another database), with its
  // master key file in `dir`.
  Result<std::unique_ptr<Store>> OpenOtherStore(const ::vaultp11::testing::TempDir& dir) {
    Options o = options();
    o.master_key_file = dir.file("master.key");
    if (pg()) {
      std::string why;
      if (!pg_->CreateDatabase(db_ + "_2", &why)) return Err(CKR_DEVICE_ERROR, "creating a database: {}", why);
      o.dsn = pg_->Dsn(db_ + "_2");
    } else {
      o.path = dir.file("vault.db");
    }
    return Store::Open(o, true);
  }

  // The test's database on the server: from the suite and test names, lowercase, at most 60
  // characters (so that "_2" still fits PostgreSQL's 63), a hash of the whole name keeping
  // shortened names apart.
  static std::string DatabaseName() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string suite = info->test_suite_name(), test = info->name();
    suite = suite.substr(suite.rfind('/') + 1);  // without the instantiation's "Backends/"
    test = test.substr(0, test.find('/'));       // without the parameter's "/postgresql"
    std::string name = suite + "_" + test;
    for (char& c : name)
      c = std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(static_cast<unsigned char>(c)))
                                                      : '_';
    if (name.size() > 60) {
      char hash[16];
      snprintf(hash, sizeof hash, "%08zx", std::hash<std::string>{}(name) & 0xffffffffu);
      name = name.substr(0, 51) + "_" + hash;
    }
    return name;
  }

  // ---- Another program's connection ----------------------------------------------------------
  PgConnPtr RawPg() const {
    const char* keys[] = {"dbname", "password", nullptr};
    const std::string dsn = pg_->Dsn(db_);
    const char* values[] = {dsn.c_str(), PgServer::kPassword, nullptr};
    PgConnPtr c(PQconnectdbParams(keys, values, /*expand_dbname=*/1));
    if (c == nullptr || PQstatus(c.get()) != CONNECTION_OK) {
      ADD_FAILURE() << "cannot connect to " << dsn << ": " << (c ? PQerrorMessage(c.get()) : "no memory");
      return nullptr;
    }
    return c;
  }

  // Runs statements (';'-separated) through a separate connection (like another program would).
  void RawExec(const std::string& sql) {
    if (pg()) {
      PgConnPtr c = RawPg();
      ASSERT_NE(c, nullptr);
      PgResultPtr r(PQexec(c.get(), sql.c_str()));
      ASSERT_EQ(PQresultStatus(r.get()), PGRES_COMMAND_OK) << PQerrorMessage(c.get()) << sql;
      return;
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    std::string msg = err != nullptr ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << msg;
  }

  // A single-integer query through a separate connection; -1 when it gives no row.
  int64_t RawInt(const std::string& sql) {
    int64_t out = -1;
    if (pg()) {
      PgConnPtr c = RawPg();
      if (c == nullptr) return out;
      PgResultPtr r(PQexec(c.get(), sql.c_str()));
      if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
        ADD_FAILURE() << PQerrorMessage(c.get()) << sql;
        return out;
      }
      if (PQntuples(r.get()) > 0 && PQgetisnull(r.get(), 0, 0) == 0)
        out = std::strtoll(PQgetvalue(r.get(), 0, 0), nullptr, 10);
      return out;
    }
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        out = sqlite3_column_int64(st, 0);
      sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return out;
  }

  // A single-blob query through a separate connection.
  Bytes RawBlob(const std::string& sql) {
    if (pg()) {
      PgConnPtr c = RawPg();
      if (c == nullptr) return {};
      PgResultPtr r(PQexecParams(c.get(), sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, /*resultFormat=*/1));
      if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) < 1) {
        ADD_FAILURE() << "no row: " << PQerrorMessage(c.get()) << sql;
        return {};
      }
      const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(r.get(), 0, 0));
      return Bytes(p, p + PQgetlength(r.get(), 0, 0));
    }
    Bytes out;
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
      const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(st, 0));
      out = Bytes(p, p + sqlite3_column_bytes(st, 0));
    } else {
      ADD_FAILURE() << "no row: " << sqlite3_errmsg(db) << sql;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  }

  // ---- What the SQL dialects write differently -----------------------------------------------
  // A BLOB / BYTEA literal.
  std::string BlobLiteral(const Bytes& b) const {
    return pg() ? "'\\x" + HexOf(b) + "'::bytea" : "X'" + HexOf(b) + "'";
  }
  // The length in bytes of a blob column.
  std::string ByteLength(const std::string& column) const {
    return (pg() ? "octet_length(" : "length(") + column + ")";
  }
  // A LIKE pattern for the used_jtis values that start with `prefix` (PostgreSQL keeps them as
  // hex, auth_state.cc; the hex of a prefix is a prefix of the hex).
  std::string JtiPrefixPattern(const std::string& prefix) const {
    return "'" + (pg() ? HexOf(ToBytes(prefix)) : prefix) + "%'";
  }
  // Whether the store's tables exist.
  bool HaveSchema() {
    if (pg())
      return RawInt("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'objects'") == 1;
    return Exists(db_path()) &&
           RawInt("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'objects'") == 1;
  }
  // Makes sure `store` has read what the server sent it. A PostgreSQL store learns of other
  // hosts' commits from notifications, which are on their way when the commit returns but may
  // not be in the store's socket yet; any query (a round trip) reads them in. SQLite's
  // data_version needs nothing.
  void Sync(Store& store) {
    if (pg()) ASSERT_OK(store.Revision().status());
  }

  // ---- SQLite only ---------------------------------------------------------------------------
  // The read-only checks run in a child that drops to uid 65534 when the tests run as root; the
  // master key file must then be that user's (Store::Open refuses a key file of another user,
  // and one readable by others). Restored by KeyBackToUs.
  void KeyToReadOnlyChild() {
    ASSERT_EQ(chmod(key_path().c_str(), 0400), 0);
    if (geteuid() == 0) {
      ASSERT_EQ(chown(key_path().c_str(), 65534, 65534), 0);
    }
  }
  void KeyBackToUs() {
    if (geteuid() == 0) {
      ASSERT_EQ(chown(key_path().c_str(), 0, 0), 0);
    }
    ASSERT_EQ(chmod(key_path().c_str(), 0600), 0);
  }

  // Turns the store into what the previous version wrote: data keys wrapped with the old AAD
  // ("vaultp11-data-key:<vault>", no record MACs) and no objects.mac column.
  void MakePreviousVersion() {
    ASSERT_FALSE(pg()) << "earlier versions were SQLite only";
    SecureBytes mk = Secret(ReadFile(key_path()));
    ASSERT_EQ(mk.size(), 32u);
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    std::vector<std::pair<std::string, Bytes>> vaults;
    sqlite3_stmt* sel = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT name, wrapped_data_key FROM vaults", -1, &sel, nullptr), SQLITE_OK);
    while (sqlite3_step(sel) == SQLITE_ROW) {
      const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(sel, 1));
      vaults.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(sel, 0)),
                          Bytes(p, p + sqlite3_column_bytes(sel, 1)));
    }
    sqlite3_finalize(sel);
    for (auto& [name, wrapped] : vaults) {
      std::string v2 = "vaultp11-data-key-v2:" + name, v1 = "vaultp11-data-key:" + name;
      ASSERT_OK_AND_ASSIGN(SecureBytes dk, ossl::OpenAesGcm(mk, wrapped, ToBytes(v2)));
      ASSERT_OK_AND_ASSIGN(Bytes old, ossl::SealAesGcm(mk, dk, ToBytes(v1)));
      sqlite3_stmt* upd = nullptr;
      ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE vaults SET wrapped_data_key = ? WHERE name = ?", -1, &upd, nullptr),
                SQLITE_OK);
      sqlite3_bind_blob(upd, 1, old.data(), static_cast<int>(old.size()), SQLITE_TRANSIENT);
      sqlite3_bind_text(upd, 2, name.c_str(), -1, SQLITE_TRANSIENT);
      EXPECT_EQ(sqlite3_step(upd), SQLITE_DONE);
      sqlite3_finalize(upd);
    }
    EXPECT_EQ(sqlite3_exec(db, "ALTER TABLE objects DROP COLUMN mac", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }

  const Backend backend_;
  const PgServer* pg_ = nullptr;
  std::string db_;  // PostgreSQL: the test's database
  ::vaultp11::testing::TempDir dir_;
};

// The behavioural tests: each on both backends.
class StoreTest : public StoreTestBase, public ::testing::WithParamInterface<Backend> {
 protected:
  StoreTest() : StoreTestBase(GetParam()) {}
};

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kPostgres ? "postgresql" : "sqlite";
}
INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres), BackendName);

// About the SQLite file itself (see the top of the file): SQLite only.
class SqliteStoreTest : public StoreTestBase {};

TEST_P(StoreTest, OpenCreatesTheDatabaseAndReopens) {
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    EXPECT_FALSE(store->read_only());
    ASSERT_OK_AND_ASSIGN(int64_t rev, store->Revision());
    EXPECT_EQ(rev, 0);
    ASSERT_OK_AND_ASSIGN(auto vaults, store->Vaults());
    EXPECT_THAT(vaults, IsEmpty());
  }
  EXPECT_TRUE(HaveSchema());
  ASSERT_OK_AND_ASSIGN(auto again, OpenStore(/*create=*/false));
  ASSERT_OK_AND_ASSIGN(int64_t rev, again->Revision());
  EXPECT_EQ(rev, 0);
}

TEST_P(StoreTest, MasterKeyFileIsCreatedPrivateWith32Bytes) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  EXPECT_EQ(FileMode(key_path()), 0600u);
  EXPECT_EQ(ReadFile(key_path()).size(), 32u);
  // No temporary files are left behind.
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path()))
    names.push_back(e.path().filename().string());
  for (const auto& n : names) EXPECT_THAT(n, ::testing::Not(HasSubstr(".tmp"))) << n;
}

TEST_P(StoreTest, ReopeningKeepsTheSameMasterKey) {
  { ASSERT_OK_AND_ASSIGN(auto store, OpenStore()); }
  std::string first = ReadFile(key_path());
  { ASSERT_OK_AND_ASSIGN(auto store, OpenStore()); }
  EXPECT_EQ(ReadFile(key_path()), first);
}

// SQLite only: the modes of the database file and its -wal and -shm (PostgreSQL keeps its files
// in the server's data directory).
TEST_F(SqliteStoreTest, DatabaseFilesArePrivate) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(auto rec, store->Insert(Record("v", "k"), Secret("s")));
  EXPECT_EQ(FileMode(db_path()), 0600u);
  ASSERT_TRUE(Exists(db_path() + "-wal"));
  EXPECT_EQ(FileMode(db_path() + "-wal"), 0600u);
  EXPECT_EQ(FileMode(db_path() + "-shm"), 0600u);
}

TEST_P(StoreTest, InsertedRecordIsLoadedBackWithIdAndRevision) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "key1"), Secret("top secret")));
  EXPECT_GT(rec.id, 0);
  EXPECT_GT(rec.revision, 0);
  EXPECT_TRUE(rec.has_secret);

  ASSERT_OK_AND_ASSIGN(auto objects, store->LoadVault("v"));
  ASSERT_EQ(objects.size(), 1u);
  const ObjectRecord& got = objects[0];
  EXPECT_EQ(got.id, rec.id);
  EXPECT_EQ(got.vault, "v");
  EXPECT_EQ(got.object_class, static_cast<CK_OBJECT_CLASS>(CKO_SECRET_KEY));
  EXPECT_EQ(got.label, "key1");
  EXPECT_EQ(got.ck_id, ToBytes("id-key1"));
  EXPECT_EQ(got.attributes, ToBytes("attrs-key1"));
  EXPECT_TRUE(got.has_secret);
  EXPECT_EQ(got.revision, rec.revision);
}

TEST_P(StoreTest, LoadSecretReturnsThePlaintext) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret(kCanary)));
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, store->LoadSecret(rec.id));
  EXPECT_EQ(std::string(secret.begin(), secret.end()), kCanary);
}

TEST_P(StoreTest, SecretsSurviveReopening) {
  int64_t id = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK(store->EnsureVault("v"));
    ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret(kCanary)));
    id = rec.id;
  }
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore(/*create=*/false));
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, store->LoadSecret(id));
  EXPECT_EQ(std::string(secret.begin(), secret.end()), kCanary);
}

TEST_P(StoreTest, PublicObjectHasNoSecret) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord rec,
                       store->Insert(Record("v", "pub", CKO_PUBLIC_KEY), SecureBytes()));
  EXPECT_FALSE(rec.has_secret);
  ASSERT_OK_AND_ASSIGN(auto objects, store->LoadVault("v"));
  ASSERT_EQ(objects.size(), 1u);
  EXPECT_FALSE(objects[0].has_secret);
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, store->LoadSecret(rec.id));
  EXPECT_TRUE(secret.empty());
}

TEST_P(StoreTest, UpdateReplacesLabelIdAndAttributesAndBumpsRevision) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "old"), Secret("s")));
  ASSERT_OK(store->Update(rec.id, "new", ToBytes("new-id"), ToBytes("new-attrs")));
  ASSERT_OK_AND_ASSIGN(auto objects, store->LoadVault("v"));
  ASSERT_EQ(objects.size(), 1u);
  EXPECT_EQ(objects[0].label, "new");
  EXPECT_EQ(objects[0].ck_id, ToBytes("new-id"));
  EXPECT_EQ(objects[0].attributes, ToBytes("new-attrs"));
  EXPECT_EQ(objects[0].revision, rec.revision + 1);
  // The secret is untouched.
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, store->LoadSecret(rec.id));
  EXPECT_EQ(secret, Secret("s"));
}

TEST_P(StoreTest, DeleteRemovesTheObjectAndItsSecret) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord a, store->Insert(Record("v", "a"), Secret("sa")));
  ASSERT_OK_AND_ASSIGN(ObjectRecord b, store->Insert(Record("v", "b"), Secret("sb")));
  ASSERT_OK(store->Delete(a.id));
  ASSERT_OK_AND_ASSIGN(auto objects, store->LoadVault("v"));
  ASSERT_EQ(objects.size(), 1u);
  EXPECT_EQ(objects[0].id, b.id);
  EXPECT_THAT(store->LoadSecret(a.id), RvIs(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_THAT(store->Delete(a.id), RvIs(CKR_OBJECT_HANDLE_INVALID));
}

TEST_P(StoreTest, IdsAreNeverReusedAfterDelete) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord a, store->Insert(Record("v", "a"), Secret("sa")));
  ASSERT_OK(store->Delete(a.id));
  ASSERT_OK_AND_ASSIGN(ObjectRecord b, store->Insert(Record("v", "b"), Secret("sb")));
  EXPECT_GT(b.id, a.id);
}

// SQLite: the file and its WAL, before and after a checkpoint. PostgreSQL: a dump of the
// database (bytea is dumped as hex).
TEST_P(StoreTest, DatabaseFilesNeverContainPlaintextSecretsOrTheMasterKey) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(ObjectRecord rec,
                         store->Insert(Record("v", "k" + std::to_string(i)), Secret(kCanary)));
  }
  std::string key = ReadFile(key_path());
  ASSERT_EQ(key.size(), 32u);
  if (pg()) {
    std::string dump;
    ASSERT_TRUE(pg_->Dump(db_, &dump)) << dump;
    ASSERT_THAT(dump, HasSubstr("CREATE TABLE public.objects"));
    for (const std::string& plain : {std::string(kCanary), key}) {
      EXPECT_EQ(dump.find(plain), std::string::npos);
      EXPECT_EQ(dump.find(HexOf(ToBytes(plain))), std::string::npos);
    }
    return;
  }
  std::string db = ReadFile(db_path());
  std::string wal = ReadFile(db_path() + "-wal");
  ASSERT_FALSE(db.empty() && wal.empty());
  for (const std::string* file : {&db, &wal}) {
    EXPECT_EQ(file->find(kCanary), std::string::npos);
    EXPECT_EQ(file->find(key), std::string::npos);
  }
  // Also after a checkpoint moves everything into the main file.
  store.reset();
  db = ReadFile(db_path());
  EXPECT_EQ(db.find(kCanary), std::string::npos);
  EXPECT_EQ(db.find(key), std::string::npos);
}

TEST_P(StoreTest, TamperedSecretFailsWithDeviceError) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret(kCanary)));
  // Flip one bit of the ciphertext (byte 20: after the 12-byte IV), as another program would.
  Bytes sealed = RawBlob("SELECT secret FROM objects WHERE id = " + std::to_string(rec.id));
  ASSERT_GT(sealed.size(), 28u);
  sealed[20] ^= 0x01;
  RawExec("UPDATE objects SET secret = " + BlobLiteral(sealed) + " WHERE id = " + std::to_string(rec.id));
  auto secret = store->LoadSecret(rec.id);
  EXPECT_THAT(secret, RvIs(CKR_DEVICE_ERROR));
  if (!secret.ok()) {
    EXPECT_THAT(secret.error().message, ::testing::Not(HasSubstr(kCanary)));
  }
}

TEST_P(StoreTest, SecretCopiedToAnotherRowFailsAuthentication) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord a, store->Insert(Record("v", "a"), Secret("secret-a")));
  ASSERT_OK_AND_ASSIGN(ObjectRecord b, store->Insert(Record("v", "b"), Secret("secret-b")));
  RawExec("UPDATE objects SET secret = (SELECT secret FROM objects WHERE id = " +
          std::to_string(a.id) + ") WHERE id = " + std::to_string(b.id));
  EXPECT_THAT(store->LoadSecret(b.id), RvIs(CKR_DEVICE_ERROR));
  ASSERT_OK_AND_ASSIGN(SecureBytes sa, store->LoadSecret(a.id));
  EXPECT_EQ(sa, Secret("secret-a"));
}

TEST_P(StoreTest, WrongMasterKeyFailsWithDeviceError) {
  int64_t id = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK(store->EnsureVault("v"));
    ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret(kCanary)));
    id = rec.id;
  }
  WriteFile(key_path(), std::string(32, 'x'));
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore(/*create=*/false));
  auto secret = store->LoadSecret(id);
  EXPECT_THAT(secret, RvIs(CKR_DEVICE_ERROR));
  if (!secret.ok()) {
    EXPECT_THAT(secret.error().message, HasSubstr(key_path()));
  }
  EXPECT_THAT(store->Insert(Record("v", "k2"), Secret("s")), RvIs(CKR_DEVICE_ERROR));
}

TEST_P(StoreTest, MasterKeyFileOfWrongSizeIsDeviceErrorNamingTheFile) {
  { ASSERT_OK_AND_ASSIGN(auto store, OpenStore()); }
  WriteFile(key_path(), std::string(31, 'x'));
  auto store = OpenStore();
  ASSERT_THAT(store, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(store.error().message, HasSubstr(key_path()));
  WriteFile(key_path(), std::string(33, 'x'));
  EXPECT_THAT(OpenStore(), RvIs(CKR_DEVICE_ERROR));
}

TEST_P(StoreTest, MissingMasterKeyOfADatabaseWithVaultsIsNotReplaced) {
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK(store->EnsureVault("v"));
  }
  ASSERT_EQ(unlink(key_path().c_str()), 0);
  auto store = OpenStore();
  ASSERT_THAT(store, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(store.error().message, HasSubstr(key_path()));
  EXPECT_FALSE(Exists(key_path()));
}

TEST_P(StoreTest, RevisionIncrementsOnEveryChange) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK_AND_ASSIGN(int64_t r0, store->Revision());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(int64_t r1, store->Revision());
  EXPECT_EQ(r1, r0 + 1);
  ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret("s")));
  EXPECT_EQ(rec.revision, r1 + 1);
  ASSERT_OK(store->Update(rec.id, "l", {}, {}));
  ASSERT_OK(store->Delete(rec.id));
  ASSERT_OK_AND_ASSIGN(int64_t r2, store->Revision());
  EXPECT_EQ(r2, r1 + 3);
}

TEST_P(StoreTest, FailedChangesLeaveTheRevisionAlone) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(int64_t before, store->Revision());
  EXPECT_THAT(store->Update(12345, "l", {}, {}), RvIs(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_THAT(store->Delete(12345), RvIs(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_THAT(store->Insert(Record("nope", "k"), Secret("s")), RvIs(CKR_GENERAL_ERROR));
  ASSERT_OK_AND_ASSIGN(int64_t after, store->Revision());
  EXPECT_EQ(after, before);
  ASSERT_OK_AND_ASSIGN(auto deleted, store->DeletedSince("v", 0));
  EXPECT_THAT(deleted, IsEmpty());
}

TEST_P(StoreTest, ChangedSinceAndDeletedSinceReportExactlyTheChanges) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v1"));
  ASSERT_OK(store->EnsureVault("v2"));
  ASSERT_OK_AND_ASSIGN(int64_t r0, store->Revision());
  ASSERT_OK_AND_ASSIGN(ObjectRecord a, store->Insert(Record("v1", "a"), Secret("sa")));
  ASSERT_OK_AND_ASSIGN(ObjectRecord b, store->Insert(Record("v1", "b"), Secret("sb")));
  ASSERT_OK_AND_ASSIGN(ObjectRecord c, store->Insert(Record("v2", "c"), Secret("sc")));
  ASSERT_OK_AND_ASSIGN(ObjectRecord d, store->Insert(Record("v1", "d"), Secret("sd")));
  ASSERT_OK_AND_ASSIGN(int64_t r1, store->Revision());
  EXPECT_EQ(r1, r0 + 4);

  ASSERT_OK_AND_ASSIGN(auto since0, store->ChangedSince("v1", r0));
  std::vector<int64_t> ids;
  for (const auto& r : since0) ids.push_back(r.id);
  EXPECT_THAT(ids, ElementsAre(a.id, b.id, d.id));

  ASSERT_OK(store->Update(a.id, "a2", ToBytes("x"), ToBytes("y")));
  ASSERT_OK(store->Delete(b.id));
  ASSERT_OK(store->Delete(c.id));

  ASSERT_OK_AND_ASSIGN(auto changed, store->ChangedSince("v1", r1));
  ASSERT_EQ(changed.size(), 1u);
  EXPECT_EQ(changed[0].id, a.id);
  EXPECT_EQ(changed[0].label, "a2");
  ASSERT_OK_AND_ASSIGN(auto deleted, store->DeletedSince("v1", r1));
  EXPECT_THAT(deleted, ElementsAre(b.id));
  ASSERT_OK_AND_ASSIGN(auto deleted2, store->DeletedSince("v2", r1));
  EXPECT_THAT(deleted2, ElementsAre(c.id));
  ASSERT_OK_AND_ASSIGN(auto changed2, store->ChangedSince("v2", r1));
  EXPECT_THAT(changed2, IsEmpty());

  ASSERT_OK_AND_ASSIGN(int64_t r2, store->Revision());
  ASSERT_OK_AND_ASSIGN(auto none, store->ChangedSince("v1", r2));
  EXPECT_THAT(none, IsEmpty());
  ASSERT_OK_AND_ASSIGN(auto none_deleted, store->DeletedSince("v1", r2));
  EXPECT_THAT(none_deleted, IsEmpty());
}

TEST_P(StoreTest, SecondStoreOnTheSameFileSeesChangesOfTheFirst) {
  ASSERT_OK_AND_ASSIGN(auto one, OpenStore());
  ASSERT_OK_AND_ASSIGN(auto two, OpenStore());
  ASSERT_OK(one->EnsureVault("v"));
  Sync(*two);
  ASSERT_OK_AND_ASSIGN(bool first, two->ExternalChange());
  EXPECT_TRUE(first);
  ASSERT_OK_AND_ASSIGN(bool quiet, two->ExternalChange());
  EXPECT_FALSE(quiet);
  ASSERT_OK_AND_ASSIGN(int64_t since, two->Revision());

  ASSERT_OK_AND_ASSIGN(ObjectRecord rec, one->Insert(Record("v", "k"), Secret(kCanary)));

  Sync(*two);
  ASSERT_OK_AND_ASSIGN(bool changed, two->ExternalChange());
  EXPECT_TRUE(changed);
  ASSERT_OK_AND_ASSIGN(bool again, two->ExternalChange());
  EXPECT_FALSE(again);
  ASSERT_OK_AND_ASSIGN(auto seen, two->ChangedSince("v", since));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].id, rec.id);
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, two->LoadSecret(rec.id));
  EXPECT_EQ(std::string(secret.begin(), secret.end()), kCanary);

  ASSERT_OK(one->Delete(rec.id));
  Sync(*two);
  ASSERT_OK_AND_ASSIGN(bool changed2, two->ExternalChange());
  EXPECT_TRUE(changed2);
  ASSERT_OK_AND_ASSIGN(auto deleted, two->DeletedSince("v", since));
  EXPECT_THAT(deleted, ElementsAre(rec.id));
}

TEST_P(StoreTest, ConcurrentInsertsThroughTwoStoresAreAllKeptWithDistinctIds) {
  ASSERT_OK_AND_ASSIGN(auto one, OpenStore());
  ASSERT_OK_AND_ASSIGN(auto two, OpenStore());
  ASSERT_OK(one->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(int64_t r0, one->Revision());
  constexpr int kThreadsPerStore = 4;
  constexpr int kPerThread = 50;
  std::vector<std::vector<int64_t>> ids(2 * kThreadsPerStore);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2 * kThreadsPerStore; ++t) {
    Store* store = t < kThreadsPerStore ? one.get() : two.get();
    threads.emplace_back([store, t, &ids] {
      for (int i = 0; i < kPerThread; ++i) {
        std::string label = "t" + std::to_string(t) + "-" + std::to_string(i);
        auto rec = store->Insert(Record("v", label), Secret("secret-" + label));
        EXPECT_TRUE(rec.ok()) << rec.error().message;
        if (rec.ok()) ids[t].push_back(rec->id);
      }
    });
  }
  for (auto& t : threads) t.join();

  std::set<int64_t> distinct;
  for (const auto& v : ids)
    for (int64_t id : v) distinct.insert(id);
  EXPECT_EQ(distinct.size(), 400u);
  ASSERT_OK_AND_ASSIGN(auto objects, two->LoadVault("v"));
  EXPECT_EQ(objects.size(), 400u);
  ASSERT_OK_AND_ASSIGN(int64_t r1, one->Revision());
  EXPECT_EQ(r1, r0 + 400);
  // Spot-check a secret written through the other store.
  ASSERT_FALSE(ids[kThreadsPerStore].empty());
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, one->LoadSecret(ids[kThreadsPerStore][7]));
  EXPECT_EQ(std::string(secret.begin(), secret.end()),
            "secret-t" + std::to_string(kThreadsPerStore) + "-7");
}

TEST_P(StoreTest, EnsureVaultIsIdempotent) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret("s")));
  ASSERT_OK_AND_ASSIGN(int64_t before, store->Revision());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(int64_t after, store->Revision());
  EXPECT_EQ(after, before);
  ASSERT_OK(store->EnsureVault("w"));
  ASSERT_OK_AND_ASSIGN(auto vaults, store->Vaults());
  EXPECT_THAT(vaults, ElementsAre("v", "w"));
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, store->LoadSecret(rec.id));
  EXPECT_EQ(secret, Secret("s"));
}

TEST_P(StoreTest, RacingEnsureVaultThroughTwoStoresEndsWithOneDataKey) {
  ASSERT_OK_AND_ASSIGN(auto one, OpenStore());
  ASSERT_OK_AND_ASSIGN(auto two, OpenStore());
  for (int round = 0; round < 10; ++round) {
    std::string vault = "race" + std::to_string(round);
    std::thread t1([&] { EXPECT_OK(one->EnsureVault(vault)); });
    std::thread t2([&] { EXPECT_OK(two->EnsureVault(vault)); });
    t1.join();
    t2.join();
    // Whoever won, both stores use the same key: a secret written by one opens in the other.
    ASSERT_OK_AND_ASSIGN(ObjectRecord rec, one->Insert(Record(vault, "k"), Secret("s")));
    ASSERT_OK_AND_ASSIGN(SecureBytes secret, two->LoadSecret(rec.id));
    EXPECT_EQ(secret, Secret("s"));
  }
  ASSERT_OK_AND_ASSIGN(auto vaults, one->Vaults());
  EXPECT_EQ(vaults.size(), 10u);
}

TEST_P(StoreTest, ManyStoresOpeningAFreshFileAtOnceAgreeOnOneMasterKey) {
  // Like nginx workers that all load the module at start-up.
  constexpr int kStores = 8;
  std::vector<std::unique_ptr<Store>> stores(kStores);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStores; ++i) {
    threads.emplace_back([this, i, &stores] {
      auto store = OpenStore();
      EXPECT_TRUE(store.ok()) << "rv " << store.rv() << ": " << store.error().message;
      if (!store.ok()) return;
      EXPECT_OK((*store)->EnsureVault("v"));
      stores[i] = std::move(store).value();
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& s : stores) ASSERT_NE(s, nullptr);
  EXPECT_EQ(ReadFile(key_path()).size(), 32u);
  // Every store can read what any other wrote: one master key, one data key.
  for (int i = 0; i < kStores; ++i) {
    ASSERT_OK_AND_ASSIGN(ObjectRecord rec, stores[i]->Insert(Record("v", "k" + std::to_string(i)), Secret("s")));
    ASSERT_OK_AND_ASSIGN(SecureBytes secret, stores[(i + 1) % kStores]->LoadSecret(rec.id));
    EXPECT_EQ(secret, Secret("s"));
  }
  ASSERT_OK_AND_ASSIGN(auto vaults, stores[0]->Vaults());
  EXPECT_THAT(vaults, ElementsAre("v"));
}

// SQLite only: SQLite's busy timeout on the file's write lock (PostgreSQL writers queue on an
// advisory lock without a timeout). Takes the busy timeout (10 s) to run.
TEST_F(SqliteStoreTest, WriteBlockedPastTheBusyTimeoutIsDeviceErrorSayingBusy) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(int64_t before, store->Revision());
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open_v2(db_path().c_str(), &other, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);

  // Readers are not blocked by a writer (WAL).
  ASSERT_OK_AND_ASSIGN(auto objects, store->LoadVault("v"));
  EXPECT_THAT(objects, IsEmpty());
  auto rec = store->Insert(Record("v", "k"), Secret("s"));
  ASSERT_THAT(rec, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(rec.error().message, HasSubstr("busy"));
  EXPECT_THAT(rec.error().message, HasSubstr(db_path()));

  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  ASSERT_OK_AND_ASSIGN(int64_t after, store->Revision());
  EXPECT_EQ(after, before);
  ASSERT_OK_AND_ASSIGN(ObjectRecord ok, store->Insert(Record("v", "k"), Secret("s")));
  EXPECT_EQ(ok.revision, before + 1);
}

// SQLite only (this and the next three): what is wrong with the database file or its folder.
TEST_F(SqliteStoreTest, CorruptFileIsDeviceErrorNamingTheFile) {
  std::string garbage;
  for (int i = 0; i < 4096; ++i) garbage.push_back(static_cast<char>((i * 7919 + 13) & 0xff));
  WriteFile(db_path(), garbage);
  for (bool create : {true, false}) {
    auto store = OpenStore(create);
    ASSERT_THAT(store, RvIs(CKR_DEVICE_ERROR));
    EXPECT_THAT(store.error().message, HasSubstr(db_path()));
  }
  EXPECT_EQ(ReadFile(db_path()), garbage);  // left untouched
}

TEST_F(SqliteStoreTest, ShortTextFileIsDeviceErrorNamingTheFile) {
  WriteFile(db_path(), "this is not a database\n");
  auto store = OpenStore();
  ASSERT_THAT(store, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(store.error().message, HasSubstr(db_path()));
}

TEST_F(SqliteStoreTest, MissingFileWithoutCreateIsTokenNotPresent) {
  auto store = OpenStore(/*create=*/false);
  ASSERT_THAT(store, RvIs(CKR_TOKEN_NOT_PRESENT));
  EXPECT_THAT(store.error().message, HasSubstr(db_path()));
  EXPECT_FALSE(Exists(db_path()));
  EXPECT_FALSE(Exists(key_path()));
}

TEST_F(SqliteStoreTest, MissingDirectoryIsDeviceError) {
  auto store = Store::Open(dir_.file("no/such/dir/vault.db"), key_path(), true);
  ASSERT_THAT(store, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(store.error().message, HasSubstr("no/such/dir/vault.db"));
}

TEST_P(StoreTest, UnknownIdsAreObjectHandleInvalid) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  EXPECT_THAT(store->LoadSecret(999), RvIs(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_THAT(store->Update(999, "l", {}, {}), RvIs(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_THAT(store->Delete(999), RvIs(CKR_OBJECT_HANDLE_INVALID));
}

TEST_P(StoreTest, InsertIntoAVaultNeverEnsuredIsGeneralError) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  auto rec = store->Insert(Record("ghost", "k"), Secret("s"));
  ASSERT_THAT(rec, RvIs(CKR_GENERAL_ERROR));
  EXPECT_THAT(rec.error().message, HasSubstr("ghost"));
  ASSERT_OK_AND_ASSIGN(auto objects, store->LoadVault("ghost"));
  EXPECT_THAT(objects, IsEmpty());
}

// SQLite only: another process forked onto the file (two hosts on one PostgreSQL database are
// SecondStoreOnTheSameFileSeesChangesOfTheFirst and the other two-store tests).
TEST_F(SqliteStoreTest, ChildProcessInsertIsSeenByTheParent) {
  {
    ASSERT_OK_AND_ASSIGN(auto setup, OpenStore());
    ASSERT_OK(setup->EnsureVault("v"));
  }
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: no SQLite connection was inherited (the parent opens its own after the fork).
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(10);
    auto store = OpenStore(/*create=*/false);
    if (!store.ok()) _exit(11);
    auto rec = (*store)->Insert(Record("v", "from-child"), Secret("child secret"));
    if (!rec.ok()) _exit(12);
    store->reset();
    _exit(0);
  }
  close(go[0]);
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore(/*create=*/false));
  ASSERT_OK_AND_ASSIGN(bool first, store->ExternalChange());
  EXPECT_TRUE(first);
  ASSERT_OK_AND_ASSIGN(int64_t since, store->Revision());
  ASSERT_EQ(write(go[1], "x", 1), 1);
  close(go[1]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);

  ASSERT_OK_AND_ASSIGN(bool changed, store->ExternalChange());
  EXPECT_TRUE(changed);
  ASSERT_OK_AND_ASSIGN(auto seen, store->ChangedSince("v", since));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].label, "from-child");
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, store->LoadSecret(seen[0].id));
  EXPECT_EQ(secret, Secret("child secret"));
}

// SQLite only: a read-only file (a read-only PostgreSQL store is one on a standby:
// store_pg_test.cc). Root bypasses file permissions, so the read-only checks run in a child that
// drops to an unprivileged user when the tests run as root.
TEST_F(SqliteStoreTest, ReadOnlyFileOpensReadOnlyAndRefusesWrites) {
  int64_t id = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK(store->EnsureVault("v"));
    ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret("ro secret")));
    id = rec.id;
  }
  ASSERT_EQ(chmod(db_path().c_str(), 0444), 0);
  KeyToReadOnlyChild();
  ASSERT_EQ(chmod(dir_.path().c_str(), 0777), 0);  // lets the unprivileged child create -shm
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(20);
    auto store = OpenStore(/*create=*/false);
    if (!store.ok()) _exit(21);
    Store& s = **store;
    if (!s.read_only()) _exit(22);
    auto objects = s.LoadVault("v");
    if (!objects.ok() || objects->size() != 1) _exit(23);
    auto secret = s.LoadSecret(id);
    if (!secret.ok() || *secret != Secret("ro secret")) _exit(24);
    if (s.Insert(Record("v", "k2"), Secret("x")).rv() != CKR_TOKEN_WRITE_PROTECTED) _exit(25);
    if (s.Update(id, "l", {}, {}).rv() != CKR_TOKEN_WRITE_PROTECTED) _exit(26);
    if (s.Delete(id).rv() != CKR_TOKEN_WRITE_PROTECTED) _exit(27);
    if (s.EnsureVault("new").rv() != CKR_TOKEN_WRITE_PROTECTED) _exit(28);
    if (!s.EnsureVault("v").ok()) _exit(29);  // already there: nothing to write
    auto changed = s.ExternalChange();
    if (!changed.ok() || !*changed) _exit(30);
    store->reset();
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "child failed check " << WEXITSTATUS(status);
  chmod(dir_.path().c_str(), 0700);
}

// ---- Authentication state ---------------------------------------------------------------

constexpr int64_t kNow = 1'700'000'000;

bool IsLowerHex32(const std::string& s) {
  return s.size() == 32 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

TEST_P(StoreTest, DeploymentIdIs128BitHexAndStableAcrossReopen) {
  std::string first;
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK_AND_ASSIGN(first, store->DeploymentId());
    EXPECT_TRUE(IsLowerHex32(first)) << first;
    ASSERT_OK_AND_ASSIGN(std::string again, store->DeploymentId());
    EXPECT_EQ(again, first);
    ASSERT_OK_AND_ASSIGN(int64_t rev, store->Revision());
    EXPECT_EQ(rev, 0);  // not an object change
  }
  ASSERT_OK_AND_ASSIGN(auto reopened, OpenStore(/*create=*/false));
  ASSERT_OK_AND_ASSIGN(std::string later, reopened->DeploymentId());
  EXPECT_EQ(later, first);
}

TEST_P(StoreTest, DeploymentIdsOfDifferentStoresDiffer) {
  ASSERT_OK_AND_ASSIGN(auto one, OpenStore());
  ASSERT_OK_AND_ASSIGN(std::string a, one->DeploymentId());
  ::vaultp11::testing::TempDir other;
  ASSERT_OK_AND_ASSIGN(auto two, OpenOtherStore(other));
  ASSERT_OK_AND_ASSIGN(std::string b, two->DeploymentId());
  EXPECT_NE(a, b);
}

TEST_P(StoreTest, StoresOpeningAFreshFileAtOnceAgreeOnOneDeploymentId) {
  constexpr int kStores = 8;
  std::vector<std::string> ids(kStores);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStores; ++i) {
    threads.emplace_back([this, i, &ids] {
      auto store = OpenStore();
      EXPECT_TRUE(store.ok()) << store.error().message;
      if (!store.ok()) return;
      auto id = (*store)->DeploymentId();
      EXPECT_TRUE(id.ok()) << id.error().message;
      if (id.ok()) ids[i] = *id;
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& id : ids) EXPECT_EQ(id, ids[0]);
  EXPECT_TRUE(IsLowerHex32(ids[0]));
}

// SQLite only: the upgrade of a store an earlier version wrote (PostgreSQL stores start with
// every table).
TEST_F(SqliteStoreTest, StoreMadeBeforeTheAuthenticationTablesUpgradesInPlace) {
  int64_t id = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK(store->EnsureVault("v"));
    ASSERT_OK_AND_ASSIGN(ObjectRecord rec, store->Insert(Record("v", "k"), Secret("old secret")));
    id = rec.id;
  }
  // What a store written by the previous version looks like.
  RawExec(
      "DROP TABLE used_jtis; DROP TABLE login_failures; "
      "DELETE FROM meta WHERE key = 'deployment_id'");
  ASSERT_EQ(RawInt("SELECT count(*) FROM sqlite_master WHERE name = 'used_jtis'"), 0);

  ASSERT_OK_AND_ASSIGN(auto one, OpenStore(/*create=*/false));
  ASSERT_OK_AND_ASSIGN(auto two, OpenStore(/*create=*/false));
  ASSERT_OK_AND_ASSIGN(std::string a, one->DeploymentId());
  ASSERT_OK_AND_ASSIGN(std::string b, two->DeploymentId());
  EXPECT_EQ(a, b);
  EXPECT_TRUE(IsLowerHex32(a));
  ASSERT_OK_AND_ASSIGN(bool fresh, one->UseJti("iss\0jti"sv, kNow + 60, kNow));
  EXPECT_TRUE(fresh);
  ASSERT_OK_AND_ASSIGN(LoginFailures f, two->RecordLoginFailure("alice", kNow, 10, 900));
  EXPECT_EQ(f.failures, 1);
  // The old data is untouched.
  ASSERT_OK_AND_ASSIGN(SecureBytes secret, two->LoadSecret(id));
  EXPECT_EQ(secret, Secret("old secret"));
  EXPECT_EQ(RawInt("PRAGMA user_version"), 1);
}

TEST_P(StoreTest, UseJtiAcceptsOnceThenReportsTheReplay) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK_AND_ASSIGN(bool first, store->UseJti("https://issuer\0abc"sv, kNow + 300, kNow));
  EXPECT_TRUE(first);
  ASSERT_OK_AND_ASSIGN(bool replay, store->UseJti("https://issuer\0abc"sv, kNow + 300, kNow + 10));
  EXPECT_FALSE(replay);
  // Still a replay at the expiry second itself, and whatever expiry the replay claims.
  ASSERT_OK_AND_ASSIGN(bool at_expiry,
                       store->UseJti("https://issuer\0abc"sv, kNow + 999, kNow + 300));
  EXPECT_FALSE(at_expiry);
  // Other values are independent.
  ASSERT_OK_AND_ASSIGN(bool other, store->UseJti("https://issuer\0abd"sv, kNow + 300, kNow));
  EXPECT_TRUE(other);
  ASSERT_OK_AND_ASSIGN(int64_t rev, store->Revision());
  EXPECT_EQ(rev, 0);
}

TEST_P(StoreTest, UseJtiSeesValuesRecordedThroughAnotherStore) {
  ASSERT_OK_AND_ASSIGN(auto one, OpenStore());
  ASSERT_OK_AND_ASSIGN(auto two, OpenStore());
  ASSERT_OK_AND_ASSIGN(bool first, one->UseJti("iss|j1", kNow + 60, kNow));
  EXPECT_TRUE(first);
  ASSERT_OK_AND_ASSIGN(bool replay, two->UseJti("iss|j1", kNow + 60, kNow));
  EXPECT_FALSE(replay);
}

TEST_P(StoreTest, UseJtiPurgesExpiredValues) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK_AND_ASSIGN(bool a, store->UseJti("iss|old1", kNow + 10, kNow));
  ASSERT_OK_AND_ASSIGN(bool b, store->UseJti("iss|old2", kNow + 20, kNow));
  ASSERT_OK_AND_ASSIGN(bool c, store->UseJti("iss|later", kNow + 1000, kNow));
  EXPECT_TRUE(a && b && c);
  EXPECT_EQ(RawInt("SELECT count(*) FROM used_jtis"), 3);
  // At kNow + 21 both short-lived values are past their expiry: gone, so usable again.
  ASSERT_OK_AND_ASSIGN(bool unrelated, store->UseJti("iss|new", kNow + 1000, kNow + 21));
  EXPECT_TRUE(unrelated);
  EXPECT_EQ(RawInt("SELECT count(*) FROM used_jtis"), 2);
  EXPECT_EQ(RawInt("SELECT count(*) FROM used_jtis WHERE value LIKE " + JtiPrefixPattern("iss|old")), 0);
  EXPECT_EQ(RawInt("SELECT count(*) FROM used_jtis WHERE value LIKE " + JtiPrefixPattern("iss|later")), 1);
  ASSERT_OK_AND_ASSIGN(bool again, store->UseJti("iss|old1", kNow + 1000, kNow + 21));
  EXPECT_TRUE(again);
  ASSERT_OK_AND_ASSIGN(bool still, store->UseJti("iss|later", kNow + 1000, kNow + 21));
  EXPECT_FALSE(still);
}

TEST_P(StoreTest, UseJtiRefusesEmptyAndTooLongValues) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  std::string max(kMaxJtiBytes, 'x');
  ASSERT_OK_AND_ASSIGN(bool ok, store->UseJti(max, kNow + 60, kNow));
  EXPECT_TRUE(ok);
  EXPECT_THAT(store->UseJti(max + "x", kNow + 60, kNow), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(store->UseJti("", kNow + 60, kNow), RvIs(CKR_ARGUMENTS_BAD));
}

TEST_P(StoreTest, RacingUseJtiThroughTwoStoresAcceptsEachValueOnce) {
  ASSERT_OK_AND_ASSIGN(auto one, OpenStore());
  ASSERT_OK_AND_ASSIGN(auto two, OpenStore());
  constexpr int kValues = 50;
  std::vector<int> accepted(kValues, 0);
  std::mutex mu;
  auto run = [&](Store* store) {
    for (int i = 0; i < kValues; ++i) {
      auto r = store->UseJti("iss|" + std::to_string(i), kNow + 60, kNow);
      EXPECT_TRUE(r.ok()) << r.error().message;
      if (r.ok() && *r) {
        std::lock_guard<std::mutex> l(mu);
        ++accepted[i];
      }
    }
  };
  std::thread t1(run, one.get());
  std::thread t2(run, two.get());
  t1.join();
  t2.join();
  for (int i = 0; i < kValues; ++i) EXPECT_EQ(accepted[i], 1) << i;
}

TEST_P(StoreTest, LoginFailuresCountLockAndReset) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK_AND_ASSIGN(LoginFailures none, store->GetLoginFailures("alice"));
  EXPECT_EQ(none, LoginFailures{});
  for (int64_t i = 1; i <= 2; ++i) {
    ASSERT_OK_AND_ASSIGN(LoginFailures f, store->RecordLoginFailure("alice", kNow + i, 3, 900));
    EXPECT_EQ(f, (LoginFailures{i, kNow + i, 0}));
  }
  ASSERT_OK_AND_ASSIGN(LoginFailures locked, store->RecordLoginFailure("alice", kNow + 3, 3, 900));
  EXPECT_EQ(locked, (LoginFailures{3, kNow + 3, kNow + 903}));
  ASSERT_OK_AND_ASSIGN(LoginFailures read, store->GetLoginFailures("alice"));
  EXPECT_EQ(read, locked);
  // Failures during the lockout keep counting and push its end out.
  ASSERT_OK_AND_ASSIGN(LoginFailures more, store->RecordLoginFailure("alice", kNow + 10, 3, 900));
  EXPECT_EQ(more, (LoginFailures{4, kNow + 10, kNow + 910}));
  // Other principals are separate.
  ASSERT_OK_AND_ASSIGN(LoginFailures bob, store->GetLoginFailures("bob"));
  EXPECT_EQ(bob, LoginFailures{});

  ASSERT_OK(store->ResetLoginFailures("alice"));
  ASSERT_OK_AND_ASSIGN(LoginFailures cleared, store->GetLoginFailures("alice"));
  EXPECT_EQ(cleared, LoginFailures{});
  ASSERT_OK(store->ResetLoginFailures("nobody"));  // nothing recorded: fine
  ASSERT_OK_AND_ASSIGN(int64_t rev, store->Revision());
  EXPECT_EQ(rev, 0);
}

TEST_P(StoreTest, FailureAfterAnEndedLockoutStartsCountingAgain) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  for (int i = 0; i < 3; ++i) ASSERT_OK(store->RecordLoginFailure("alice", kNow, 3, 60).status());
  ASSERT_OK_AND_ASSIGN(LoginFailures locked, store->GetLoginFailures("alice"));
  EXPECT_EQ(locked.locked_until, kNow + 60);
  ASSERT_OK_AND_ASSIGN(LoginFailures f, store->RecordLoginFailure("alice", kNow + 60, 3, 60));
  EXPECT_EQ(f, (LoginFailures{1, kNow + 60, 0}));
}

TEST_P(StoreTest, NonPositiveLockAfterNeverLocks) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  LoginFailures f;
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK_AND_ASSIGN(f, store->RecordLoginFailure("alice", kNow, 0, 60));
  }
  EXPECT_EQ(f, (LoginFailures{20, kNow, 0}));
}

TEST_P(StoreTest, ConcurrentFailuresThroughTwoStoresAreAllCounted) {
  ASSERT_OK_AND_ASSIGN(auto one, OpenStore());
  ASSERT_OK_AND_ASSIGN(auto two, OpenStore());
  constexpr int kPerThread = 50;
  std::vector<int64_t> seen[2];
  auto run = [&](Store* store, std::vector<int64_t>* out) {
    for (int i = 0; i < kPerThread; ++i) {
      auto r = store->RecordLoginFailure("alice", kNow, 1000, 900);
      EXPECT_TRUE(r.ok()) << r.error().message;
      if (r.ok()) out->push_back(r->failures);
    }
  };
  std::thread t1(run, one.get(), &seen[0]);
  std::thread t2(run, two.get(), &seen[1]);
  t1.join();
  t2.join();
  ASSERT_OK_AND_ASSIGN(LoginFailures f, one->GetLoginFailures("alice"));
  EXPECT_EQ(f.failures, 2 * kPerThread);
  // Every increment returned a distinct count: none was lost or seen twice.
  std::set<int64_t> distinct(seen[0].begin(), seen[0].end());
  distinct.insert(seen[1].begin(), seen[1].end());
  EXPECT_EQ(distinct.size(), 2u * kPerThread);
  EXPECT_EQ(*distinct.begin(), 1);
  EXPECT_EQ(*distinct.rbegin(), 2 * kPerThread);
}

// SQLite only: a forked child on the file (ConcurrentFailuresThroughTwoStoresAreAllCounted is
// the same through two stores on either backend).
TEST_F(SqliteStoreTest, ChildProcessFailuresAreCountedByTheParent) {
  { ASSERT_OK_AND_ASSIGN(auto setup, OpenStore()); }
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child and parent each open their own connection after the fork, and write at once.
    auto child = OpenStore(/*create=*/false);
    if (!child.ok()) _exit(11);
    for (int i = 0; i < 50; ++i)
      if (!(*child)->RecordLoginFailure("alice", kNow, 1000, 900).ok()) _exit(12);
    child->reset();
    _exit(0);
  }
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore(/*create=*/false));
  for (int i = 0; i < 50; ++i)
    ASSERT_OK(store->RecordLoginFailure("alice", kNow, 1000, 900).status());
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_OK_AND_ASSIGN(LoginFailures f, store->GetLoginFailures("alice"));
  EXPECT_EQ(f.failures, 100);
}

// SQLite only, like ReadOnlyFileOpensReadOnlyAndRefusesWrites: a read-only file, the checks in
// an unprivileged child.
TEST_F(SqliteStoreTest, ReadOnlyStoreReadsAuthenticationStateAndWritesNothing) {
  std::string deployment_id;
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK_AND_ASSIGN(deployment_id, store->DeploymentId());
    ASSERT_OK(store->RecordLoginFailure("alice", kNow, 3, 900).status());
    ASSERT_OK_AND_ASSIGN(bool fresh, store->UseJti("iss|j", kNow + 60, kNow));
    ASSERT_TRUE(fresh);
  }
  ASSERT_EQ(chmod(db_path().c_str(), 0444), 0);
  KeyToReadOnlyChild();
  ASSERT_EQ(chmod(dir_.path().c_str(), 0777), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(20);
    auto store = OpenStore(/*create=*/false);
    if (!store.ok()) _exit(21);
    Store& s = **store;
    if (!s.read_only()) _exit(22);
    auto id = s.DeploymentId();
    if (!id.ok() || *id != deployment_id) _exit(23);
    auto got = s.GetLoginFailures("alice");
    if (!got.ok() || *got != (LoginFailures{1, kNow, 0})) _exit(24);
    auto next = s.RecordLoginFailure("alice", kNow + 5, 2, 900);
    if (!next.ok() || *next != (LoginFailures{2, kNow + 5, kNow + 905})) _exit(25);
    if (!s.ResetLoginFailures("alice").ok()) _exit(26);
    auto after = s.GetLoginFailures("alice");
    if (!after.ok() || *after != (LoginFailures{1, kNow, 0})) _exit(27);  // nothing written
    if (s.UseJti("iss|k", kNow + 60, kNow).rv() != CKR_TOKEN_WRITE_PROTECTED) _exit(28);
    if (s.UseJti("", kNow + 60, kNow).rv() != CKR_ARGUMENTS_BAD) _exit(29);
    store->reset();
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "child failed check " << WEXITSTATUS(status);
  chmod(dir_.path().c_str(), 0700);
}

// SQLite only: a read-only file of an earlier version.
TEST_F(SqliteStoreTest, ReadOnlyStoreMadeBeforeTheAuthenticationTablesStillWorks) {
  { ASSERT_OK_AND_ASSIGN(auto store, OpenStore()); }
  RawExec(
      "DROP TABLE used_jtis; DROP TABLE login_failures; "
      "DELETE FROM meta WHERE key = 'deployment_id'");
  ASSERT_EQ(chmod(db_path().c_str(), 0444), 0);
  KeyToReadOnlyChild();
  ASSERT_EQ(chmod(dir_.path().c_str(), 0777), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(20);
    auto store = OpenStore(/*create=*/false);
    if (!store.ok()) _exit(21);
    Store& s = **store;
    if (!s.read_only()) _exit(22);
    if (s.DeploymentId().rv() != CKR_TOKEN_WRITE_PROTECTED) _exit(23);
    auto got = s.GetLoginFailures("alice");
    if (!got.ok() || *got != LoginFailures{}) _exit(24);
    auto next = s.RecordLoginFailure("alice", kNow, 1, 60);
    if (!next.ok() || *next != (LoginFailures{1, kNow, kNow + 60})) _exit(25);
    if (!s.ResetLoginFailures("alice").ok()) _exit(26);
    if (s.UseJti("iss|k", kNow + 60, kNow).rv() != CKR_TOKEN_WRITE_PROTECTED) _exit(27);
    store->reset();
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "child failed check " << WEXITSTATUS(status);
  chmod(dir_.path().c_str(), 0700);
}

}  // namespace
}  // namespace vaultp11::store

// ---- names and versions ----------------------------------------------------------------------

namespace vaultp11::store {
namespace {

ObjectRecord Labelled(const std::string& label, CK_OBJECT_CLASS cls, const std::string& ck_id) {
  ObjectRecord r = Record("v", label, cls);
  r.ck_id = ToBytes(ck_id);
  return r;
}

TEST_P(StoreTest, ALabelInUseTakesANewVersionOrJoinsTheCurrentOne) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  std::vector<ObjectRecord> pair = {Labelled("k", CKO_PRIVATE_KEY, "1"), Labelled("k", CKO_PUBLIC_KEY, "1")};
  ASSERT_OK_AND_ASSIGN(auto v1, store->InsertVersion(pair, {Secret("s"), SecureBytes()}, false));
  ASSERT_EQ(v1.size(), 2u);
  EXPECT_EQ(v1[0].version.size(), 32u);
  EXPECT_EQ(v1[0].version, v1[1].version);
  // The same again: the current version has both classes already.
  EXPECT_THAT(store->InsertVersion(pair, {Secret("s"), SecureBytes()}, false), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  // A certificate with the key's id joins; with another id it is refused.
  EXPECT_THAT(store->Insert(Labelled("k", CKO_CERTIFICATE, "2"), SecureBytes()), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  ASSERT_OK_AND_ASSIGN(auto cert, store->Insert(Labelled("k", CKO_CERTIFICATE, "1"), SecureBytes()));
  EXPECT_EQ(cert.version, v1[0].version);
  // A new version must bring its own id, and be of the item's kind: now a certificate.
  std::vector<ObjectRecord> triple = {Labelled("k", CKO_PRIVATE_KEY, "1"), Labelled("k", CKO_PUBLIC_KEY, "1"),
                                      Labelled("k", CKO_CERTIFICATE, "1")};
  EXPECT_THAT(store->InsertVersion(triple, {Secret("s"), SecureBytes(), SecureBytes()}, true),
              RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  std::vector<ObjectRecord> pair2 = {Labelled("k", CKO_PRIVATE_KEY, "2"), Labelled("k", CKO_PUBLIC_KEY, "2")};
  EXPECT_THAT(store->InsertVersion(pair2, {Secret("s2"), SecureBytes()}, true), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(store->Insert(Labelled("k", CKO_DATA, "2"), Secret("d"), true), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  pair2.push_back(Labelled("k", CKO_CERTIFICATE, "2"));
  ASSERT_OK_AND_ASSIGN(auto v2, store->InsertVersion(pair2, {Secret("s2"), SecureBytes(), SecureBytes()}, true));
  EXPECT_NE(v2[0].version, v1[0].version);

  ASSERT_OK_AND_ASSIGN(auto versions, store->VersionsOf("v", "k"));
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_EQ(versions[0].version, v1[0].version);
  EXPECT_THAT(versions[0].classes, ElementsAre(CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_CERTIFICATE));
  EXPECT_FALSE(versions[0].current);
  EXPECT_EQ(versions[1].version, v2[0].version);
  EXPECT_TRUE(versions[1].current);
  ASSERT_OK_AND_ASSIGN(auto none, store->VersionsOf("v", "nothing"));
  EXPECT_THAT(none, IsEmpty());
}

TEST_P(StoreTest, RelabellingFollowsTheNameRules) {
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK(store->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(auto a, store->Insert(Labelled("a", CKO_PRIVATE_KEY, "1"), Secret("s")));
  ASSERT_OK_AND_ASSIGN(auto unnamed, store->Insert(Labelled("", CKO_PUBLIC_KEY, "1"), SecureBytes()));
  EXPECT_EQ(unnamed.version, "");
  ASSERT_OK_AND_ASSIGN(auto other, store->Insert(Labelled("", CKO_PRIVATE_KEY, "9"), Secret("s")));
  // Joining "a": the right id and a free class.
  EXPECT_THAT(store->Update(other.id, "a", ToBytes("9"), ToBytes("x")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  ASSERT_OK_AND_ASSIGN(std::string joined, store->Update(unnamed.id, "a", ToBytes("1"), ToBytes("x")));
  EXPECT_EQ(joined, a.version);
  // A free name: a new item with a version of its own; back to no label: no version.
  ASSERT_OK_AND_ASSIGN(std::string named, store->Update(other.id, "b", ToBytes("9"), ToBytes("x")));
  EXPECT_EQ(named.size(), 32u);
  ASSERT_OK_AND_ASSIGN(std::string dropped, store->Update(other.id, "", ToBytes("9"), ToBytes("x")));
  EXPECT_EQ(dropped, "");
}

// SQLite only: the upgrade of a store made before versions (a dropped column, the v1 data-key
// AAD).
TEST_F(SqliteStoreTest, AStoreMadeBeforeVersionsGetsThemOnOpen) {
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
    ASSERT_OK(store->EnsureVault("v"));
    ASSERT_OK(store->Insert(Labelled("k", CKO_PRIVATE_KEY, "1"), Secret("s")).status());
    ASSERT_OK(store->Insert(Labelled("k", CKO_PUBLIC_KEY, "1"), SecureBytes()).status());
    // Before versions, a label could name several keys.
    ASSERT_OK(store->Insert(Labelled("k", CKO_PRIVATE_KEY, "2"), Secret("s"), /*new_version=*/true).status());
    ASSERT_OK(store->Insert(Labelled("", CKO_SECRET_KEY, "3"), Secret("s")).status());
  }
  MakePreviousVersion();
  RawExec("ALTER TABLE objects DROP COLUMN version");
  // Mounted read-only first (checked in an unprivileged child, as root could write): readable,
  // no versions yet.
  ASSERT_EQ(chmod(db_path().c_str(), 0444), 0);
  KeyToReadOnlyChild();
  ASSERT_EQ(chmod(dir_.path().c_str(), 0777), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(20);
    auto ro = OpenStore(/*create=*/false);
    if (!ro.ok() || !(*ro)->read_only()) _exit(21);
    auto recs = (*ro)->LoadVault("v");
    if (!recs.ok() || recs->size() != 4) _exit(22);
    for (const auto& r : *recs)
      if (!r.version.empty()) _exit(23);
    ro->reset();
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "child failed check " << WEXITSTATUS(status);
  ASSERT_EQ(chmod(dir_.path().c_str(), 0700), 0);
  ASSERT_EQ(chmod(db_path().c_str(), 0600), 0);
  KeyBackToUs();
  for (const char* side : {"-wal", "-shm"}) chmod((db_path() + side).c_str(), 0600);
  ASSERT_OK_AND_ASSIGN(auto store, OpenStore());
  ASSERT_OK_AND_ASSIGN(auto versions, store->VersionsOf("v", "k"));
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_THAT(versions[0].classes, ElementsAre(CKO_PRIVATE_KEY, CKO_PUBLIC_KEY));
  EXPECT_EQ(versions[0].ck_id, ToBytes("1"));
  EXPECT_THAT(versions[1].classes, ElementsAre(CKO_PRIVATE_KEY));
  EXPECT_TRUE(versions[1].current);
  ASSERT_OK_AND_ASSIGN(auto recs, store->LoadVault("v"));
  for (const auto& r : recs) EXPECT_EQ(r.version.empty(), r.label.empty()) << r.id;
}

}  // namespace
}  // namespace vaultp11::store

// ---- Record authentication (issue 16 item 6) -----------------------------------------------------

namespace vaultp11::store {
namespace {

// Every row the store hands out is checked against its HMAC (store.cc RecordMac): an edit of
// the database by another program is CKR_DEVICE_ERROR naming the vault and row.
template <class Base>
class RecordMacFixture : public Base {
 protected:
  void SetUp() override {
    Base::SetUp();
    if (::testing::Test::HasFatalFailure()) return;
    ASSERT_OK_AND_ASSIGN(store_, this->OpenStore());
    ASSERT_OK(store_->EnsureVault("v"));
    ASSERT_OK(store_->EnsureVault("w"));
    ASSERT_OK_AND_ASSIGN(a_, store_->Insert(Labelled("a", CKO_SECRET_KEY, "1"), Secret("secret-a")));
    ASSERT_OK_AND_ASSIGN(b_, store_->Insert(Labelled("b", CKO_DATA, "2"), Secret("secret-b")));
    ASSERT_OK_AND_ASSIGN(auto all, store_->LoadVault("v"));
    ASSERT_EQ(all.size(), 2u);
  }
  static ObjectRecord Labelled(const std::string& label, CK_OBJECT_CLASS cls, const std::string& ck_id) {
    ObjectRecord r = Record("v", label, cls);
    r.ck_id = ToBytes(ck_id);
    return r;
  }
  // Every way of reading row `id` refuses it with CKR_DEVICE_ERROR naming vault and row.
  void ExpectRefused(const ObjectRecord& r) {
    EXPECT_THAT(store_->LoadVault("v"), RvIs(CKR_DEVICE_ERROR));
    auto item = store_->LoadByLabel("v", r.label);
    ASSERT_THAT(item, RvIs(CKR_DEVICE_ERROR));
    EXPECT_THAT(item.error().message, HasSubstr("object " + std::to_string(r.id) + " of vault 'v'"));
    EXPECT_THAT(item.error().message, HasSubstr("failed authentication"));
    EXPECT_THAT(store_->LoadById("v", r.ck_id), RvIs(CKR_DEVICE_ERROR));
    EXPECT_THAT(store_->ChangedSince("v", 0), RvIs(CKR_DEVICE_ERROR));
    EXPECT_THAT(store_->VersionsOf("v", r.label), RvIs(CKR_DEVICE_ERROR));
    // Changing it would MAC the tampered row anew: refused too.
    EXPECT_THAT(store_->Update(r.id, r.label, r.ck_id, ToBytes("new")), RvIs(CKR_DEVICE_ERROR));
  }
  std::unique_ptr<Store> store_;
  ObjectRecord a_, b_;
};
// On both backends.
class RecordMacTest : public RecordMacFixture<StoreTest> {};
INSTANTIATE_TEST_SUITE_P(Backends, RecordMacTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         BackendName);
// The upgrade of a store the previous version wrote (no MACs, v1 data-key AAD): SQLite only,
// as earlier versions were.
class SqliteRecordMacTest : public RecordMacFixture<SqliteStoreTest> {};

TEST_P(RecordMacTest, UntouchedRowsAreReadAndUpdatedAsBefore) {
  ASSERT_OK(store_->Update(a_.id, "a", a_.ck_id, ToBytes("changed")).status());
  ASSERT_OK_AND_ASSIGN(auto rows, store_->LoadByLabel("v", "a"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].attributes, ToBytes("changed"));
  ASSERT_OK_AND_ASSIGN(auto again, OpenStore(/*create=*/false));
  ASSERT_OK_AND_ASSIGN(auto all, again->LoadVault("v"));
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(RawInt("SELECT count(*) FROM objects WHERE " + ByteLength("mac") + " = 32"), 2);
}

TEST_P(RecordMacTest, ChangedAttributesAreRefused) {
  RawExec("UPDATE objects SET attributes = " + BlobLiteral({0x00}) + " || attributes WHERE id = " +
          std::to_string(a_.id));
  ExpectRefused(a_);
}

TEST_P(RecordMacTest, SwappedAttributeBlobsAreRefused) {
  const std::string a = std::to_string(a_.id), b = std::to_string(b_.id);
  RawExec("CREATE TEMP TABLE t AS SELECT id, attributes FROM objects WHERE id IN (" + a + ", " + b +
          "); UPDATE objects SET attributes = (SELECT attributes FROM t WHERE t.id = CASE objects.id WHEN " + a +
          " THEN " + b + " ELSE " + a + " END) WHERE id IN (" + a + ", " + b + ")");
  ASSERT_EQ(RawInt("SELECT count(*) FROM objects WHERE id = " + a + " AND attributes = " +
                   BlobLiteral(ToBytes("attrs-b"))),
            1);
  ExpectRefused(a_);
  ExpectRefused(b_);
}

TEST_P(RecordMacTest, EachColumnThatMattersIsCovered) {
  for (const std::string& edit : {"class = " + std::to_string(CKO_PRIVATE_KEY), std::string("label = 'a'"),
                                  "ck_id = " + BlobLiteral(ToBytes("1")), std::string("version = 'x'"),
                                  std::string("created = created - 86400"), std::string("secret = NULL"),
                                  std::string("mac = NULL"), "mac = " + BlobLiteral({0x00})}) {
    SCOPED_TRACE(edit);
    ASSERT_OK_AND_ASSIGN(auto fresh,
                         store_->Insert(Labelled("t" + edit.substr(0, 3), CKO_SECRET_KEY, "9" + edit), Secret("s")));
    RawExec("UPDATE objects SET " + edit + " WHERE id = " + std::to_string(fresh.id));
    EXPECT_THAT(store_->LoadVault("v"), RvIs(CKR_DEVICE_ERROR));
    RawExec("DELETE FROM objects WHERE id = " + std::to_string(fresh.id));
    ASSERT_OK(store_->LoadVault("v").status());
  }
}

TEST_P(RecordMacTest, RowsMovedToAnotherIdOrVaultAreRefused) {
  RawExec("UPDATE objects SET id = 1000 WHERE id = " + std::to_string(a_.id));
  a_.id = 1000;
  ExpectRefused(a_);
  RawExec("UPDATE objects SET id = " + std::to_string(b_.id + 1000) + ", vault = 'w' WHERE id = " +
          std::to_string(b_.id));
  auto w = store_->LoadVault("w");
  ASSERT_THAT(w, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(w.error().message, HasSubstr("of vault 'w'"));
}

TEST_F(SqliteRecordMacTest, PreviousVersionStoreIsAuthenticatedOnceOnTheFirstWritableOpen) {
  store_.reset();
  MakePreviousVersion();
  ASSERT_EQ(RawInt("SELECT count(*) FROM pragma_table_info('objects') WHERE name = 'mac'"), 0);
  {
    ASSERT_OK_AND_ASSIGN(auto upgraded, OpenStore(/*create=*/false));
    ASSERT_OK_AND_ASSIGN(auto all, upgraded->LoadVault("v"));
    EXPECT_EQ(all.size(), 2u);
    ASSERT_OK_AND_ASSIGN(SecureBytes sa, upgraded->LoadSecret(a_.id));
    EXPECT_EQ(sa, Secret("secret-a"));
  }
  EXPECT_EQ(RawInt("SELECT count(*) FROM objects WHERE " + ByteLength("mac") + " = 32"), 2);
  // From now on an edit is refused.
  RawExec("UPDATE objects SET attributes = X'01' WHERE id = " + std::to_string(a_.id));
  ASSERT_OK_AND_ASSIGN(store_, OpenStore(/*create=*/false));
  ExpectRefused(a_);
}

// The attack on the upgrade: put the "previous version" state back (the old wrapped data key from
// a copy taken before the upgrade, no MACs) together with an edit, so the next open would MAC the
// edit. The upgrade gave the vault a fresh data key and sealed its secrets anew, so the old key
// opens none of them: the upgrade fails and nothing is MACed. Resetting schema numbers or dropping
// the column alone leaves the v2-wrapped key, whose vault's rows must carry MACs.
TEST_F(SqliteRecordMacTest, PuttingThePreviousVersionStateBackDoesNotLaunderAnEdit) {
  store_.reset();
  MakePreviousVersion();
  Bytes old_wrapped;
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT wrapped_data_key FROM vaults WHERE name = 'v'", -1, &st, nullptr),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(st, 0));
    old_wrapped = Bytes(p, p + sqlite3_column_bytes(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  { ASSERT_OK_AND_ASSIGN(auto upgraded, OpenStore(/*create=*/false)); }

  // Dropping the MACs alone: refused.
  RawExec("ALTER TABLE objects DROP COLUMN mac");
  RawExec("UPDATE objects SET attributes = X'01' WHERE id = " + std::to_string(a_.id));
  {
    ASSERT_OK_AND_ASSIGN(auto s, OpenStore(/*create=*/false));
    EXPECT_THAT(s->LoadVault("v"), RvIs(CKR_DEVICE_ERROR));
  }
  // And with the old wrapped key put back: the upgrade fails, nothing is MACed.
  RawExec("ALTER TABLE objects DROP COLUMN mac");
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE vaults SET wrapped_data_key = ? WHERE name = 'v'", -1, &st, nullptr),
              SQLITE_OK);
    sqlite3_bind_blob(st, 1, old_wrapped.data(), static_cast<int>(old_wrapped.size()), SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  auto s = OpenStore(/*create=*/false);
  ASSERT_THAT(s, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(s.error().message, HasSubstr("vault 'v'"));
  EXPECT_EQ(RawInt("SELECT count(*) FROM objects WHERE mac IS NOT NULL"), 0);
}

}  // namespace
}  // namespace vaultp11::store

// ---- The master key file (issue 16 item 6) ------------------------------------------------------

namespace vaultp11::store {
namespace {

// Master key file rules (as ssh's for a private key): refused, naming the file and the fix.
TEST_P(StoreTest, MasterKeyFileReadableOrWritableByOthersIsRefused) {
  { ASSERT_OK_AND_ASSIGN(auto store, OpenStore()); }
  for (mode_t mode : {0644, 0640, 0604, 0620, 0602, 0660}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(chmod(key_path().c_str(), mode), 0);
    auto store = OpenStore();
    ASSERT_THAT(store, RvIs(CKR_DEVICE_ERROR));
    EXPECT_THAT(store.error().message, HasSubstr(key_path()));
    EXPECT_THAT(store.error().message, HasSubstr(fmt::format("mode {:04o}", mode)));
    EXPECT_THAT(store.error().message, HasSubstr("chmod 600"));
    EXPECT_THAT(DeriveKeyFromMasterKeyFile(key_path(), "audit-head"), RvIs(CKR_DEVICE_ERROR));
  }
  for (mode_t mode : {0600, 0400, 0700}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(chmod(key_path().c_str(), mode), 0);
    EXPECT_OK(OpenStore().status());
  }
}

TEST_P(StoreTest, MasterKeyFileOfAnotherUserIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give the file to another user";
  { ASSERT_OK_AND_ASSIGN(auto store, OpenStore()); }
  ASSERT_EQ(chown(key_path().c_str(), 65534, 65534), 0);
  auto store = OpenStore();
  ASSERT_THAT(store, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(store.error().message, HasSubstr(key_path()));
  EXPECT_THAT(store.error().message, HasSubstr("owned by uid 65534"));
  EXPECT_THAT(DeriveKeyFromMasterKeyFile(key_path(), "audit-head"), RvIs(CKR_DEVICE_ERROR));
  ASSERT_EQ(chown(key_path().c_str(), 0, 0), 0);
  EXPECT_OK(OpenStore().status());
}

}  // namespace
}  // namespace vaultp11::store
