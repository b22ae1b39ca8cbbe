// The store's root key held by an HSM seal (store.seal) and moved by reseal, on both backends,
// with a real SoftHSMv2 token as the seal HSM (softhsm_fixture.h) and a real PostgreSQL server
// (pg_server.h).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "backend/ossl/ossl_backend.h"
#include "matchers.h"
#include "pg_server.h"
#include "softhsm_fixture.h"
#include "store/impl.h"
#include "store/seal.h"
#include "store/store.h"
#include "store_records.h"
#include "temp_dir.h"
#include "util/strings.h"

namespace vaultp11::store {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::vaultp11::testing::PgServer;
using ::vaultp11::testing::SoftHsmEnvironment;

constexpr char kCanary[] = "VAULTP11-SEAL-PLAINTEXT-CANARY-7be20f";
constexpr char kPin[] = "seal-pin-4417";

const auto* const kHsm = ::testing::AddGlobalTestEnvironment(
    new SoftHsmEnvironment({{"seal", kPin, "so-seal-4417"}, {"other", "other-pin-1", "so-other-1"}}));

class Servers : public ::testing::Environment {
 public:
  void SetUp() override {
    std::string why;
    primary = PgServer::StartPrimary(&why);
    ASSERT_NE(primary, nullptr) << why;
  }
  void TearDown() override { primary.reset(); }
  static std::unique_ptr<PgServer> primary;
};
std::unique_ptr<PgServer> Servers::primary;
[[maybe_unused]] const ::testing::Environment* const kServers = ::testing::AddGlobalTestEnvironment(new Servers());

using ::vaultp11::store::testing::Record;
using ::vaultp11::store::testing::Secret;

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::optional<Bytes> Unhex(std::string_view s) {
  if (s.size() % 2 != 0) return std::nullopt;
  Bytes out;
  for (size_t i = 0; i < s.size(); i += 2) {
    auto nib = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    int hi = nib(s[i]), lo = nib(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<uint8_t>(hi << 4 | lo));
  }
  return out;
}

enum class Backend { kSqlite, kPostgres };

class SealTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (!SoftHsmEnvironment::Instance()->available()) GTEST_SKIP() << SoftHsmEnvironment::Instance()->skip_reason();
    pin_file_ = dir_.file("seal.pin");
    std::ofstream(pin_file_) << kPin << "\n";
    chmod(pin_file_.c_str(), 0600);
    label_ = std::string("seal-") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : label_)
      if (c == '/') c = '-';
    if (GetParam() == Backend::kPostgres) {
      ASSERT_NE(Servers::primary, nullptr);
      static int n = 0;
      db_ = "seal_" + std::to_string(++n);
      std::string why;
      ASSERT_TRUE(Servers::primary->CreateDatabase(db_, &why)) << why;
    }
  }
  bool pg() const { return GetParam() == Backend::kPostgres; }

  // The store with a master key file only.
  Options FileOnly() const {
    Options o;
    if (pg()) {
      o.backend = Options::Backend::kPostgres;
      o.dsn = Servers::primary->Dsn(db_);
      o.password_file = Servers::primary->password_file();
    } else {
      o.path = dir_.file("store.db");
    }
    o.master_key_file = dir_.file("master.key");
    return o;
  }
  // The store with the seal only (no master key file), as `vaultp11 init` opens it.
  Options SealOnly(const std::string& label = "", bool create_key = true) const {
    Options o = FileOnly();
    o.master_key_file.clear();
    o.seal.hsm = "seal-hsm";
    o.seal.key_label = label.empty() ? label_ : label;
    o.seal.module = SoftHsmEnvironment::Instance()->module_path();
    o.seal.token = "seal";
    o.seal.pin_file = pin_file_;
    o.seal.quirks = {"no-deinit"};
    o.create_seal_key = create_key;
    return o;
  }
  Options Both() const {
    Options o = SealOnly();
    o.master_key_file = dir_.file("master.key");
    return o;
  }

  // Every 32-byte string a thief finds in the database: raw bytes of the SQLite file (pages),
  // or every hex run of the PostgreSQL dump decoded (bytea and meta text), plus the raw text.
  std::vector<Bytes> Candidates(std::string* dump_out = nullptr) {
    std::string raw;
    if (pg()) {
      EXPECT_TRUE(Servers::primary->Dump(db_, &raw)) << raw;
    } else {
      raw = ReadFileBytes(dir_.file("store.db"));
    }
    if (dump_out) *dump_out = raw;
    std::vector<Bytes> out;
    for (size_t i = 0; i + kKeyLen <= raw.size(); ++i)
      out.emplace_back(raw.begin() + static_cast<long>(i), raw.begin() + static_cast<long>(i + kKeyLen));
    size_t i = 0;
    while (i < raw.size()) {
      size_t j = i;
      while (j < raw.size() && std::isxdigit(static_cast<unsigned char>(raw[j])) && !std::isupper(raw[j])) ++j;
      if (j - i >= 2 * kKeyLen) {
        for (size_t k = i; k + 2 * kKeyLen <= j; ++k) {
          auto b = Unhex(std::string_view(raw).substr(k, 2 * kKeyLen));
          if (b) out.push_back(*b);
        }
      }
      i = j + 1;
    }
    return out;
  }

  // The vault's wrapped data key and one object's sealed secret, read from the database.
  void ReadSealed(const std::string& vault, int64_t id, Bytes* wrapped, Bytes* secret) {
    if (pg()) {
      std::string dump;
      ASSERT_TRUE(Servers::primary->Dump(db_, &dump));
      std::istringstream in(dump);
      std::string line, table;
      std::vector<std::string> cols;
      while (std::getline(in, line)) {
        if (line.rfind("COPY public.", 0) == 0) {
          table = line.substr(12, line.find(' ', 12) - 12);
          cols.clear();
          std::string c = line.substr(line.find('(') + 1, line.find(')') - line.find('(') - 1);
          std::stringstream cs(c);
          std::string col;
          while (std::getline(cs, col, ',')) cols.push_back(col.substr(col.find_first_not_of(' ')));
          continue;
        }
        if (line == "\\.") {
          table.clear();
          continue;
        }
        if (table.empty()) continue;
        std::vector<std::string> f;
        std::stringstream ls(line);
        std::string v;
        while (std::getline(ls, v, '\t')) f.push_back(v);
        std::map<std::string, std::string> row;
        for (size_t k = 0; k < cols.size() && k < f.size(); ++k) row[cols[k]] = f[k];
        auto bytea = [](const std::string& s) { return *Unhex(s.substr(3)); };  // "\\x..."
        if (table == "vaults" && row["name"] == vault) *wrapped = bytea(row["wrapped_data_key"]);
        if (table == "objects" && row["id"] == std::to_string(id)) *secret = bytea(row["secret"]);
      }
      return;
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(dir_.file("store.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    auto blob = [&](const std::string& sql, Bytes* out) {
      sqlite3_stmt* st = nullptr;
      ASSERT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK);
      ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
      const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(st, 0));
      out->assign(p, p + sqlite3_column_bytes(st, 0));
      sqlite3_finalize(st);
    };
    blob("SELECT wrapped_data_key FROM vaults WHERE name = '" + vault + "'", wrapped);
    blob("SELECT secret FROM objects WHERE id = " + std::to_string(id), secret);
    sqlite3_close(db);
  }

  ::vaultp11::testing::TempDir dir_;
  std::string pin_file_, label_, db_;
};

TEST_P(SealTest, ASealedStoreOpensWithTheHsmAndNoMasterKeyFile) {
  int64_t id = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto st, Store::Open(SealOnly(), true));
    EXPECT_TRUE(st->Root().sealed);
    EXPECT_THAT(st->Root().source, HasSubstr(label_));
    ASSERT_OK(st->EnsureVault("v"));
    ASSERT_OK_AND_ASSIGN(auto rec, st->Insert(Record("v", "k"), Secret(kCanary)));
    id = rec.id;
    ASSERT_OK(st->CheckRootKey());
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.file("master.key")));
  ASSERT_OK_AND_ASSIGN(auto again, Store::Open(SealOnly("", /*create_key=*/false), false));
  ASSERT_OK_AND_ASSIGN(SecureBytes back, again->LoadSecret(id));
  EXPECT_EQ(std::string(back.begin(), back.end()), kCanary);
  // Same derived keys in every process (audit heads, backups).
  ASSERT_OK_AND_ASSIGN(auto head, again->DeriveKey("audit-head"));
  ASSERT_OK_AND_ASSIGN(auto head2, DeriveKeyFromOptions(SealOnly("", false), "audit-head"));
  EXPECT_EQ(head, head2);
}

TEST_P(SealTest, TheModuleNeverCreatesTheSealKeyAndNamesHsmAndLabel) {
  auto st = Store::Open(SealOnly("", /*create_key=*/false), /*create_if_missing=*/true);
  ASSERT_THAT(st, RvIs(CKR_KEY_HANDLE_INVALID));
  EXPECT_THAT(st.error().message, HasSubstr("seal-hsm"));
  EXPECT_THAT(st.error().message, HasSubstr(label_));
  // Nothing was made: not the key, not a root key in the store.
  auto seal = HsmSeal::Open(SealOnly().seal, /*create=*/false);
  EXPECT_THAT(seal, RvIs(CKR_KEY_HANDLE_INVALID));
}

TEST_P(SealTest, AWrongKeyLabelIsAClearError) {
  { ASSERT_OK(Store::Open(SealOnly(), true).status()); }
  auto st = Store::Open(SealOnly(label_ + "-typo", false), false);
  ASSERT_THAT(st, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(st.error().message, HasSubstr(label_ + "-typo"));
  EXPECT_THAT(st.error().message, HasSubstr("sealed by the HSM key"));
  // Another AES key under the right label (the HSM's key replaced) does not open it either.
  Options other = SealOnly();
  other.seal.token = "other";
  std::ofstream(pin_file_) << "other-pin-1\n";
  ASSERT_OK(HsmSeal::Open(other.seal, /*create=*/true).status());
  auto st2 = Store::Open(other, false);
  ASSERT_FALSE(st2.ok());
  EXPECT_THAT(st2.error().message, HasSubstr("does not open with"));
}

TEST_P(SealTest, AStolenDatabaseAndHostFilesWithoutTheHsmOpenNothing) {
  int64_t id = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto st, Store::Open(SealOnly(), true));
    ASSERT_OK(st->EnsureVault("v"));
    ASSERT_OK_AND_ASSIGN(auto rec, st->Insert(Record("v", "k"), Secret(kCanary)));
    id = rec.id;
  }
  // The thief has the config and every host file, but not the HSM's PIN (nor the HSM).
  std::ofstream(pin_file_) << "not-the-pin\n";
  auto st = Store::Open(SealOnly("", false), false);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.error().message, Not(HasSubstr("not-the-pin")));
  EXPECT_THAT(st.error().message, Not(HasSubstr(kPin)));
  // A master key file of their own making opens nothing either: the store says it is sealed.
  {
    std::ofstream key(dir_.file("master.key"), std::ios::binary);
    key << std::string(32, 'k');
  }
  chmod(dir_.file("master.key").c_str(), 0600);
  auto by_file = Store::Open(FileOnly(), true);
  ASSERT_THAT(by_file, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(by_file.error().message, HasSubstr("sealed by the HSM key"));
  // No 32 bytes anywhere in the database (or its dump) unwrap the data key or open the secret.
  Bytes wrapped, secret;
  ReadSealed("v", id, &wrapped, &secret);
  ASSERT_FALSE(wrapped.empty());
  ASSERT_FALSE(secret.empty());
  std::string raw;
  const std::vector<Bytes> candidates = Candidates(&raw);
  ASSERT_GT(candidates.size(), 1000u);
  EXPECT_EQ(raw.find(kCanary), std::string::npos);
  for (const Bytes& c : candidates) {
    ASSERT_FALSE(ossl::OpenAesGcm(c, wrapped, AsBytes(DataKeyAad("v"))).ok()) << "a root key in the clear";
    ASSERT_FALSE(ossl::OpenAesGcm(c, secret, AsBytes(ObjectAad("v", id))).ok()) << "a data key in the clear";
  }
}

TEST_P(SealTest, ResealToTheSealAndBackLosesNothingAndRetiresTheOldFile) {
  int64_t id = 0;
  SecureBytes old_backup_key;
  {
    ASSERT_OK_AND_ASSIGN(auto st, Store::Open(FileOnly(), true));
    ASSERT_OK(st->EnsureVault("v"));
    ASSERT_OK(st->EnsureVault("w"));
    ASSERT_OK_AND_ASSIGN(auto rec, st->Insert(Record("v", "k"), Secret(kCanary)));
    id = rec.id;
    ASSERT_OK(st->AdvanceAuditAnchor("/var/log/a.log", Store::AuditAnchor{0, 0, 7, std::string(64, 'a')}));
    ASSERT_OK_AND_ASSIGN(old_backup_key, st->DeriveKey("backup"));
  }
  const std::string old_file = ReadFileBytes(dir_.file("master.key"));
  ASSERT_EQ(old_file.size(), kKeyLen);
  {
    ASSERT_OK_AND_ASSIGN(auto st, Store::Open(Both(), false));
    EXPECT_FALSE(st->Root().sealed);  // on the file until the move
    ASSERT_OK_AND_ASSIGN(auto r, st->Reseal(Store::SealTarget::kSeal));
    EXPECT_EQ(r.generation, 1);
    EXPECT_EQ(r.vaults, 2u);
    EXPECT_EQ(r.anchors, 1u);
    EXPECT_TRUE(st->Root().sealed);
    ASSERT_OK_AND_ASSIGN(SecureBytes back, st->LoadSecret(id));
    EXPECT_EQ(std::string(back.begin(), back.end()), kCanary);
    // Refused the second time: nothing to move.
    EXPECT_THAT(st->Reseal(Store::SealTarget::kSeal), RvIs(CKR_ARGUMENTS_BAD));
  }
  // The old file opens nothing now: the store refuses it, and it unwraps no data key.
  auto by_file = Store::Open(FileOnly(), false);
  ASSERT_THAT(by_file, RvIs(CKR_DEVICE_ERROR));
  Bytes wrapped, secret;
  ReadSealed("v", id, &wrapped, &secret);
  EXPECT_FALSE(ossl::OpenAesGcm(ToBytes(old_file), wrapped, AsBytes(DataKeyAad("v"))).ok());
  {
    ASSERT_OK_AND_ASSIGN(auto st, Store::Open(SealOnly("", false), false));
    ASSERT_OK_AND_ASSIGN(SecureBytes back, st->LoadSecret(id));
    EXPECT_EQ(std::string(back.begin(), back.end()), kCanary);
    ASSERT_OK_AND_ASSIGN(auto anchor, st->GetAuditAnchor("/var/log/a.log"));
    ASSERT_TRUE(anchor.has_value());
    EXPECT_EQ(anchor->seq, 7);
    // Backups written before the move still open (the earlier root key is kept, wrapped).
    ASSERT_OK_AND_ASSIGN(auto keys, st->DeriveKeys("backup"));
    ASSERT_EQ(keys.size(), 2u);
    EXPECT_EQ(keys[1], old_backup_key);
    EXPECT_NE(keys[0], old_backup_key);
  }
  // And back to a (new) file.
  {
    ASSERT_OK_AND_ASSIGN(auto st, Store::Open(Both(), false));
    EXPECT_TRUE(st->Root().sealed);
    ASSERT_OK_AND_ASSIGN(auto r, st->Reseal(Store::SealTarget::kFile));
    EXPECT_EQ(r.generation, 2);
    EXPECT_FALSE(st->Root().sealed);
  }
  const std::string new_file = ReadFileBytes(dir_.file("master.key"));
  ASSERT_EQ(new_file.size(), kKeyLen);
  EXPECT_NE(new_file, old_file);
  struct stat kst {};
  ASSERT_EQ(stat(dir_.file("master.key").c_str(), &kst), 0);
  EXPECT_EQ(kst.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(dir_.file("master.key.reseal-2")));
  ASSERT_OK_AND_ASSIGN(auto st, Store::Open(FileOnly(), false));
  ASSERT_OK(st->CheckRootKey());
  ASSERT_OK_AND_ASSIGN(SecureBytes back, st->LoadSecret(id));
  EXPECT_EQ(std::string(back.begin(), back.end()), kCanary);
  ASSERT_OK_AND_ASSIGN(auto anchor, st->GetAuditAnchor("/var/log/a.log"));
  EXPECT_TRUE(anchor.has_value());
  ASSERT_OK_AND_ASSIGN(auto keys, st->DeriveKeys("backup"));
  ASSERT_EQ(keys.size(), 3u);
  EXPECT_EQ(keys[2], old_backup_key);
  // The sealed store rejects a seal-only config now (it is on the file).
  EXPECT_THAT(Store::Open(SealOnly("", false), false), RvIs(CKR_DEVICE_ERROR));
}

TEST_P(SealTest, ProcessesHoldingTheOldRootKeyNeverWrapUnderIt) {
  int64_t id = 0;
  ASSERT_OK_AND_ASSIGN(auto on_file, Store::Open(FileOnly(), true));  // started before the move
  ASSERT_OK(on_file->EnsureVault("v"));
  ASSERT_OK_AND_ASSIGN(auto rec, on_file->Insert(Record("v", "k"), Secret(kCanary)));
  id = rec.id;
  ASSERT_OK_AND_ASSIGN(auto both, Store::Open(Both(), false));  // a host with the new config
  ASSERT_OK_AND_ASSIGN(auto mover, Store::Open(Both(), false));
  ASSERT_OK(mover->Reseal(Store::SealTarget::kSeal).status());
  // The old process goes on with what it has (the data keys did not change) ...
  ASSERT_OK_AND_ASSIGN(SecureBytes back, on_file->LoadSecret(id));
  EXPECT_EQ(std::string(back.begin(), back.end()), kCanary);
  ASSERT_OK(on_file->Insert(Record("v", "k2"), Secret("written after the move")).status());
  // ... but never wraps a new vault's key, or MACs an anchor, under the old root key.
  auto refused = on_file->EnsureVault("new");
  ASSERT_THAT(refused, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(refused.error().message, HasSubstr("restart"));
  EXPECT_THAT(on_file->AdvanceAuditAnchor("/x.log", Store::AuditAnchor{0, 0, 1, std::string(64, 'b')}),
              RvIs(CKR_DEVICE_ERROR));
  // A process configured with the seal follows the move by itself.
  ASSERT_OK(both->EnsureVault("new"));
  ASSERT_OK(both->Insert(Record("new", "n"), Secret("n")).status());
  ASSERT_OK_AND_ASSIGN(auto fresh, Store::Open(SealOnly("", false), false));
  ASSERT_OK_AND_ASSIGN(auto all, fresh->LoadVault("v"));
  EXPECT_EQ(all.size(), 2u);  // the write made during the move's aftermath is there
  for (const auto& o : all) ASSERT_OK(fresh->LoadSecret(o.id).status());
  ASSERT_OK_AND_ASSIGN(auto n, fresh->LoadVault("new"));
  ASSERT_EQ(n.size(), 1u);
  ASSERT_OK(fresh->LoadSecret(n[0].id).status());
  EXPECT_FALSE(std::filesystem::exists(dir_.file("master.key.reseal-1")));
}

TEST_P(SealTest, AWrongMasterKeyFileIsNotVerifiedAndCreatesNoVault) {
  { ASSERT_OK_AND_ASSIGN(auto st, Store::Open(FileOnly(), true)); ASSERT_OK(st->EnsureVault("v")); }
  {
    std::ofstream key(dir_.file("master.key"), std::ios::binary | std::ios::trunc);
    key << std::string(32, 'w');
  }
  ASSERT_OK_AND_ASSIGN(auto st, Store::Open(FileOnly(), true));  // opens: first use reports
  auto check = st->CheckRootKey();
  ASSERT_THAT(check, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(check.error().message, HasSubstr(dir_.file("master.key")));
  auto made = st->EnsureVault("second");
  ASSERT_THAT(made, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(made.error().message, HasSubstr(dir_.file("master.key")));
  ASSERT_OK_AND_ASSIGN(auto vaults, st->Vaults());
  EXPECT_EQ(vaults, std::vector<std::string>{"v"});
}

TEST_P(SealTest, AFileOnlyConfigOnANewStoreNeverGetsASecondRootBesideASealedOne) {
  { ASSERT_OK(Store::Open(SealOnly(), true).status()); }  // sealed, no vault yet
  auto st = Store::Open(FileOnly(), true);
  ASSERT_THAT(st, RvIs(CKR_DEVICE_ERROR));
  EXPECT_FALSE(std::filesystem::exists(dir_.file("master.key")));
  // A seal-only config on a store that is on a file is told how to move it.
  ::vaultp11::testing::TempDir other;
  Options o = FileOnly();
  if (!pg()) {
    o.path = other.file("s.db");
    o.master_key_file = other.file("s.key");
    { ASSERT_OK_AND_ASSIGN(auto s, Store::Open(o, true)); ASSERT_OK(s->EnsureVault("v")); }
    Options sealed = SealOnly();
    sealed.path = o.path;
    auto refused = Store::Open(sealed, true);
    ASSERT_THAT(refused, RvIs(CKR_DEVICE_ERROR));
    EXPECT_THAT(refused.error().message, HasSubstr("store reseal --to seal"));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, SealTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const auto& info) { return info.param == Backend::kSqlite ? "Sqlite" : "Postgres"; });

}  // namespace
}  // namespace vaultp11::store
