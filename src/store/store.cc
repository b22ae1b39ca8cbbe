// Store: SQLite (WAL, one connection per Store, shared by processes) with AES-256-GCM at rest.
#include "store/store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string_view>
#include <thread>
#include <utility>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "backend/ossl/ossl_backend.h"
#include "util/log.h"
#include "util/ossl_ptr.h"
#include "util/read_all.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

constexpr int kSchemaVersion = 1;
constexpr int kBusyTimeoutMs = 10000;
constexpr size_t kKeyLen = 32;

constexpr const char* kSchemaSql = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS vaults(name TEXT PRIMARY KEY, wrapped_data_key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS objects(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  vault TEXT NOT NULL REFERENCES vaults(name),
  class INTEGER NOT NULL,
  label TEXT NOT NULL,
  ck_id BLOB NOT NULL,
  attributes BLOB NOT NULL,
  secret BLOB NULL,
  revision INTEGER NOT NULL,
  version TEXT NOT NULL DEFAULT '',
  created INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS objects_vault_revision ON objects(vault, revision);
CREATE INDEX IF NOT EXISTS objects_vault_label ON objects(vault, label);
CREATE INDEX IF NOT EXISTS objects_vault_ck_id ON objects(vault, ck_id);
CREATE TABLE IF NOT EXISTS tombstones(
  id INTEGER PRIMARY KEY,
  vault TEXT NOT NULL,
  revision INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_vault_revision ON tombstones(vault, revision);
INSERT OR IGNORE INTO meta(key, value) VALUES('revision', 0);
PRAGMA user_version = 1;
)sql";

// Authentication state, added after version 1 shipped: created IF NOT EXISTS on every writable
// open, so older stores upgrade in place without a schema version change.
constexpr const char* kAuthSchemaSql = R"sql(
CREATE TABLE IF NOT EXISTS used_jtis(value TEXT PRIMARY KEY, expires INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS used_jtis_expires ON used_jtis(expires);
CREATE TABLE IF NOT EXISTS login_failures(
  principal TEXT PRIMARY KEY,
  failures INTEGER NOT NULL,
  last_failure INTEGER NOT NULL,
  locked_until INTEGER NOT NULL);
)sql";
// The objects kAuthSchemaSql creates (their count in sqlite_master tells whether it ran).
constexpr const char* kAuthSchemaCheckSql =
    "SELECT count(*) FROM sqlite_master WHERE name IN "
    "('used_jtis', 'used_jtis_expires', 'login_failures')";
constexpr int64_t kAuthSchemaObjects = 3;

constexpr size_t kDeploymentIdBytes = 16;

// Soft-deleted items (all their versions): their rows stay in objects, hidden from LoadVault
// and ChangedSince, until recovered or purged. Created IF NOT EXISTS on writable opens.
constexpr const char* kDeletedItemsSql = R"sql(
CREATE TABLE IF NOT EXISTS deleted_items(
  vault TEXT NOT NULL,
  name TEXT NOT NULL,
  deleted INTEGER NOT NULL,
  purge_after INTEGER NOT NULL,
  PRIMARY KEY(vault, name));
)sql";
constexpr const char* kDeletedItemsCheckSql = "SELECT count(*) FROM sqlite_master WHERE name = 'deleted_items'";
// Item policies (rotation) and notices given (near-expiry), created IF NOT EXISTS on writable opens.
constexpr const char* kPoliciesSql = R"sql(
CREATE TABLE IF NOT EXISTS item_policies(
  vault TEXT NOT NULL, name TEXT NOT NULL, policy TEXT NOT NULL, PRIMARY KEY(vault, name));
CREATE TABLE IF NOT EXISTS notices(
  vault TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, what TEXT NOT NULL,
  PRIMARY KEY(vault, name, version, what));
)sql";
constexpr const char* kPoliciesCheckSql =
    "SELECT count(*) FROM sqlite_master WHERE name IN ('item_policies', 'notices')";
// What keeps a deleted item's rows out of LoadVault and ChangedSince.
constexpr const char* kLiveFilter =
    " AND NOT EXISTS (SELECT 1 FROM deleted_items d WHERE d.vault = objects.vault AND d.name = objects.label)";

// objects.version and objects.created, added after version 1 shipped (ALTER TABLE on the
// first writable open).
constexpr const char* kVersionColumnCheckSql =
    "SELECT count(*) FROM pragma_table_info('objects') WHERE name = 'version'";
constexpr const char* kCreatedColumnCheckSql =
    "SELECT count(*) FROM pragma_table_info('objects') WHERE name = 'created'";
// objects.mac (record authentication, see RecordMac), added by ALTER TABLE on the first writable
// open; the vaults' rows get their MACs right after (AuthenticateVault).
constexpr const char* kMacColumnCheckSql = "SELECT count(*) FROM pragma_table_info('objects') WHERE name = 'mac'";


bool IsDeploymentId(std::string_view s) {
  if (s.size() != 2 * kDeploymentIdBytes) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  return r;
}

// The state after one more failure at now (see Store::RecordLoginFailure).
LoginFailures NextLoginFailures(LoginFailures s, int64_t now, int64_t lock_after,
                                int64_t lock_seconds) {
  if (s.locked_until != 0 && s.locked_until <= now) {  // the lockout is over: start again
    s.failures = 0;
    s.locked_until = 0;
  }
  if (s.failures < std::numeric_limits<int64_t>::max()) ++s.failures;
  s.last_failure = now;
  if (lock_after > 0 && s.failures >= lock_after)
    s.locked_until =
        std::max(s.locked_until, SaturatingAdd(now, std::max<int64_t>(lock_seconds, 0)));
  return s;
}

// The columns ReadObject reads; a read-only store made before objects.version (created, mac)
// existed reads an empty version (0, no MAC) instead.
constexpr const char* kObjectColumns =
    "id, vault, class, label, ck_id, attributes, secret IS NOT NULL, revision, version, created, mac";
constexpr const char* kObjectColumnsNoVersion =
    "id, vault, class, label, ck_id, attributes, secret IS NOT NULL, revision, '', 0, NULL";
constexpr const char* kObjectColumnsNoCreated =
    "id, vault, class, label, ck_id, attributes, secret IS NOT NULL, revision, version, 0, NULL";
constexpr const char* kObjectColumnsNoMac =
    "id, vault, class, label, ck_id, attributes, secret IS NOT NULL, revision, version, created, NULL";

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string ObjectAad(const std::string& vault, int64_t id) {
  return "vaultp11-object:" + vault + ":" + std::to_string(id);
}

// A data key wrapped with the v2 AAD says "every row of this vault carries a MAC": the fact is
// sealed by the master key, so nobody without it can turn it off (a database edit, a reset
// schema number or a dropped column only makes the rows fail). A key wrapped with the v1 AAD
// is a vault written by an earlier version (no MACs yet); the first writable open upgrades it.
std::string DataKeyAad(const std::string& vault) { return "vaultp11-data-key-v2:" + vault; }
std::string LegacyDataKeyAad(const std::string& vault) { return "vaultp11-data-key:" + vault; }

// The key of the vault's record MACs, derived from its data key.
constexpr std::string_view kRecordMacPurpose = "record-mac";
constexpr size_t kMacLen = 32;

void AppendField(Bytes& out, std::span<const uint8_t> v) {
  const uint64_t n = v.size();
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), v.begin(), v.end());
}
void AppendField(Bytes& out, int64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * (7 - i)));
  AppendField(out, b);
}

// HMAC-SHA256 over every column of an object row that the module acts on, each length-prefixed
// (so no two rows encode alike): vault and row id (a row moved to another id or vault fails),
// class, label, CKA_ID, the serialized attributes (CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_PRIVATE,
// a certificate's value, ... all of them), whether a secret is stored, version and creation
// time. The revision is left out: it only drives change detection. The secret itself is sealed
// with AES-GCM bound to vault and id (ObjectAad) and never changes for a row.
using EvpMacPtr = std::unique_ptr<EVP_MAC, OsslDeleter<&EVP_MAC_free>>;
using EvpMacCtxPtr = std::unique_ptr<EVP_MAC_CTX, OsslDeleter<&EVP_MAC_CTX_free>>;

// An HMAC-SHA256 context keyed with `key`, duplicated for each record (half the cost of keying
// one per record, which matters when a search reads a whole vault).
Result<EvpMacCtxPtr> NewRecordMacContext(const SecureBytes& key) {
  EvpMacPtr hmac(EVP_MAC_fetch(ossl::LibCtx(), "HMAC", nullptr));
  if (hmac == nullptr) return Err(CKR_FUNCTION_FAILED, "HMAC is not available");
  EvpMacCtxPtr ctx(EVP_MAC_CTX_new(hmac.get()));
  if (ctx == nullptr) return Err(CKR_HOST_MEMORY, "HMAC context");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(ctx.get(), key.data(), key.size(), params) != 1)
    return Err(CKR_FUNCTION_FAILED, "HMAC-SHA256 key setup failed");
  return ctx;
}

Result<Bytes> RecordMac(const EVP_MAC_CTX* keyed, const ObjectRecord& r) {
  static constexpr std::string_view kContext = "vaultp11-object-record-v1";
  Bytes msg;
  msg.reserve(128 + r.vault.size() + r.label.size() + r.ck_id.size() + r.attributes.size() + r.version.size());
  AppendField(msg, AsBytes(kContext));
  AppendField(msg, AsBytes(r.vault));
  AppendField(msg, r.id);
  AppendField(msg, static_cast<int64_t>(r.object_class));
  AppendField(msg, AsBytes(r.label));
  AppendField(msg, r.ck_id);
  AppendField(msg, r.attributes);
  AppendField(msg, static_cast<int64_t>(r.has_secret ? 1 : 0));
  AppendField(msg, AsBytes(r.version));
  AppendField(msg, r.created);
  EvpMacCtxPtr ctx(EVP_MAC_CTX_dup(keyed));
  Bytes mac(EVP_MAX_MD_SIZE);
  size_t n = 0;
  if (ctx == nullptr || EVP_MAC_update(ctx.get(), msg.data(), msg.size()) != 1 ||
      EVP_MAC_final(ctx.get(), mac.data(), &n, mac.size()) != 1 || n != kMacLen)
    return Err(CKR_FUNCTION_FAILED, "HMAC-SHA256 failed");
  mac.resize(n);
  return mac;
}

// Error for a failed SQLite call; `what` says what was being done. Never includes bound values.
Error SqlError(sqlite3* db, int rc, const std::string& path, std::string_view what) {
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Err(CKR_DEVICE_ERROR,
                 "database {} busy (locked by another process for over {} ms) while {}", path,
                 kBusyTimeoutMs, what);
    case SQLITE_READONLY:
      return Err(CKR_TOKEN_WRITE_PROTECTED, "database {} is read-only ({}) while {}", path, msg,
                 what);
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return Err(CKR_DEVICE_ERROR,
                 "database file {} is corrupt or not a vaultp11 database ({}) while {}", path, msg,
                 what);
    case SQLITE_FULL:
      return Err(CKR_DEVICE_MEMORY, "database {} is full ({}) while {}", path, msg, what);
    case SQLITE_NOMEM:
      return Err(CKR_HOST_MEMORY, "out of memory in SQLite while {} on {}", what, path);
    default:
      return Err(CKR_DEVICE_ERROR, "database {}: {} while {}", path, msg, what);
  }
}

// A cached prepared statement borrowed for one use: reset and unbound when it goes away.
class Stmt {
 public:
  explicit Stmt(sqlite3_stmt* s) : s_(s) {}
  ~Stmt() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  void Bind(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void Bind(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void BindBlob(int i, std::span<const uint8_t> v) {
    // A zero-length blob (not NULL) even when the span has no storage.
    static const uint8_t kEmpty = 0;
    sqlite3_bind_blob(s_, i, v.empty() ? &kEmpty : v.data(), static_cast<int>(v.size()),
                      SQLITE_TRANSIENT);
  }
  int Step() { return sqlite3_step(s_); }
  int64_t Int(int col) { return sqlite3_column_int64(s_, col); }
  bool IsNull(int col) { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
  std::string Text(int col) {
    const unsigned char* p = sqlite3_column_text(s_, col);
    int n = sqlite3_column_bytes(s_, col);
    return p == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(p), n);
  }
  Bytes Blob(int col) {
    const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(s_, col));
    int n = sqlite3_column_bytes(s_, col);
    return p == nullptr ? Bytes() : Bytes(p, p + n);
  }

 private:
  sqlite3_stmt* s_;
};

// Reads the row selected with kObjectColumns (its MAC into `mac`, empty when none).
ObjectRecord ReadObject(Stmt& st, Bytes* mac = nullptr) {
  ObjectRecord r;
  r.id = st.Int(0);
  r.vault = st.Text(1);
  r.object_class = static_cast<CK_OBJECT_CLASS>(st.Int(2));
  r.label = st.Text(3);
  r.ck_id = st.Blob(4);
  r.attributes = st.Blob(5);
  r.has_secret = st.Int(6) != 0;
  r.revision = st.Int(7);
  r.version = st.Text(8);
  r.created = st.Int(9);
  if (mac != nullptr) *mac = st.IsNull(10) ? Bytes() : st.Blob(10);
  return r;
}

Status WriteAll(int fd, std::span<const uint8_t> data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return Err(CKR_DEVICE_ERROR, "cannot write master key file {}: {}", path, strerror(errno));
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0)
    return Err(CKR_DEVICE_ERROR, "cannot sync master key file {}: {}", path, strerror(errno));
  return OkStatus();
}

// Reads the master key file; exactly kKeyLen bytes, else CKR_DEVICE_ERROR naming the file.
Result<SecureBytes> ReadMasterKey(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);  // may be a symlink (e.g. a mounted secret)
  if (fd < 0)
    return Err(CKR_DEVICE_ERROR, "cannot open master key file {}: {}", path, strerror(errno));
  // Refused, not warned about (as ssh refuses a private key): anyone else who can read the
  // file can decrypt every vault, anyone who can write it can replace the key.
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    close(fd);
    return Err(CKR_DEVICE_ERROR, "cannot stat master key file {}: {}", path, strerror(e));
  }
  if ((st.st_mode & 066) != 0) {
    close(fd);
    return Err(CKR_DEVICE_ERROR,
               "refusing master key file {}: mode {:04o}: must not be readable or writable by group or others "
               "(chmod 600 {})",
               path, st.st_mode & 07777, path);
  }
  if (st.st_uid != geteuid()) {
    close(fd);
    return Err(CKR_DEVICE_ERROR,
               "refusing master key file {}: owned by uid {}, not by this process's user (uid {}) (chown {} {})",
               path, st.st_uid, geteuid(), geteuid(), path);
  }
  SecureBytes key(kKeyLen + 1);  // one spare byte detects a file that is too long
  const int e = ReadUpTo(fd, key);
  close(fd);
  if (e != 0) return Err(CKR_DEVICE_ERROR, "cannot read master key file {}: {}", path, strerror(e));
  if (key.size() != kKeyLen)
    return Err(CKR_DEVICE_ERROR, "master key file {} must hold exactly {} bytes", path, kKeyLen);
  return key;
}

// Creates the master key file with fresh random bytes, mode 0600, atomically: the key is
// written to a private temporary file and hard-linked into place, so a racing process never
// reads a partly written file; the loser of a race reads the winner's key.
Result<SecureBytes> CreateOrReadMasterKey(const std::string& path) {
  SecureBytes key(kKeyLen);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(key));
  uint8_t suffix_raw[8];
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(suffix_raw));
  std::string tmp = path + ".tmp-" + std::to_string(getpid());
  for (uint8_t b : suffix_raw) tmp += fmt::format("{:02x}", b);

  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  bool linked = false;
  if (fd >= 0) {
    Status w = fchmod(fd, 0600) == 0
                   ? WriteAll(fd, key, tmp)
                   : Status(Err(CKR_DEVICE_ERROR, "cannot chmod {}: {}", tmp, strerror(errno)));
    close(fd);
    if (!w.ok()) {
      unlink(tmp.c_str());
      return w.error();
    }
    int rc = link(tmp.c_str(), path.c_str());
    int e = errno;
    unlink(tmp.c_str());
    if (rc == 0) {
      linked = true;
    } else if (e == EEXIST) {
      return ReadMasterKey(path);  // lost the race
    }
    // Other failures (e.g. a file system without hard links): fall through to O_EXCL.
  }
  if (linked) {
    // Make the new name durable too.
    size_t slash = path.find_last_of('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    return key;
  }
  fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      // The winner may still be writing: give it a moment before judging the size.
      for (int i = 0; i < 50; ++i) {
        struct stat st {};
        if (stat(path.c_str(), &st) == 0 && st.st_size >= static_cast<off_t>(kKeyLen)) break;
        usleep(20000);
      }
      return ReadMasterKey(path);
    }
    return Err(CKR_DEVICE_ERROR, "cannot create master key file {}: {}", path, strerror(errno));
  }
  Status w = fchmod(fd, 0600) == 0
                 ? WriteAll(fd, key, path)
                 : Status(Err(CKR_DEVICE_ERROR, "cannot chmod {}: {}", path, strerror(errno)));
  close(fd);
  if (!w.ok()) {
    unlink(path.c_str());
    return w.error();
  }
  return key;
}

// One row of an item, as the name rules see it.
struct ItemRow {
  int64_t id;
  CK_OBJECT_CLASS cls;
  Bytes ck_id;
  std::string version;
  int64_t created;
};

bool HasClass(const std::vector<ItemRow>& rows, const std::string& version, CK_OBJECT_CLASS cls) {
  for (const auto& r : rows)
    if (r.version == version && r.cls == cls) return true;
  return false;
}

bool HasCkId(const std::vector<ItemRow>& rows, const std::string& version, const Bytes& ck_id) {
  for (const auto& r : rows)
    if (r.version == version && r.ck_id == ck_id) return true;
  return false;
}

// The version another version of the item already uses `ck_id` in, if any.
const ItemRow* OtherVersionWithId(const std::vector<ItemRow>& rows,
                                               const std::string& version, const Bytes& ck_id) {
  if (ck_id.empty()) return nullptr;
  for (const auto& r : rows)
    if (r.version != version && r.ck_id == ck_id) return &r;
  return nullptr;
}

}  // namespace

const char* KindOf(const std::vector<CK_OBJECT_CLASS>& classes) {
  bool key = false, data = false;
  for (CK_OBJECT_CLASS c : classes) {
    if (c == CKO_CERTIFICATE) return "certificate";
    key |= c == CKO_PRIVATE_KEY || c == CKO_PUBLIC_KEY || c == CKO_SECRET_KEY;
    data |= c == CKO_DATA;
  }
  // A key beside a data object is a certificate's pending version (its key pair and request).
  return key && data ? "certificate" : key ? "key" : "secret";
}

namespace {

std::vector<int64_t> IdsOf(const std::vector<ObjectRecord>& rows) {
  std::vector<int64_t> ids;
  for (const ObjectRecord& r : rows) ids.push_back(r.id);
  return ids;
}

Error NameExists(const std::string& vault, const std::string& label, const std::string& current, std::string_view why,
                 bool hint = true) {
  return Err(CKR_ATTRIBUTE_VALUE_INVALID, "an item named '{}' exists in vault {} (current version {}): {}{}", label,
             vault, current, why, hint ? "; to add a version, give CKA_VAULTP11_NEW_VERSION = CK_TRUE" : "");
}

}  // namespace

Result<SecureBytes> DeriveKey(const SecureBytes& master_key, std::string_view purpose) {
  EVP_KDF* kdf = EVP_KDF_fetch(ossl::LibCtx(), "HKDF", nullptr);
  if (kdf == nullptr) return Err(CKR_FUNCTION_FAILED, "HKDF is not available");
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (kctx == nullptr) return Err(CKR_HOST_MEMORY, "HKDF context");
  std::string info = "vaultp11 " + std::string(purpose);
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string("digest", digest, 0),
      OSSL_PARAM_construct_octet_string("key", const_cast<uint8_t*>(master_key.data()), master_key.size()),
      OSSL_PARAM_construct_octet_string("info", info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  SecureBytes out(32);
  int ok = EVP_KDF_derive(kctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(kctx);
  if (ok != 1) return Err(CKR_FUNCTION_FAILED, "HKDF failed");
  return out;
}

Result<SecureBytes> DeriveKeyFromMasterKeyFile(const std::string& master_key_path, std::string_view purpose) {
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes mk, ReadMasterKey(master_key_path));
  return DeriveKey(mk, purpose);
}

struct Store::Impl {
  // A vault's data key, the key of its record MACs, and whether its rows carry MACs (a
  // v2-wrapped data key; see DataKeyAad).
  struct VaultKeys {
    SecureBytes data;
    EvpMacCtxPtr mac;  // keyed with the record MAC key
    bool authenticated = false;
  };
  sqlite3* db = nullptr;
  std::string path;
  std::string master_key_path;
  std::map<std::string, sqlite3_stmt*, std::less<>> statements;
  const SecureBytes* master_key = nullptr;                    // the Store's (set once read)
  std::map<std::string, VaultKeys, std::less<>> vault_keys;    // unwrapped, per vault
  std::string deployment_id;                                  // cached once read (it never changes)
  const char* object_columns = kObjectColumns;
  const char* live_filter = kLiveFilter;  // "" on a read-only store made before soft-delete

  Error Fail(int rc, std::string_view what) const { return SqlError(db, rc, path, what); }

  // Returns the cached prepared statement for sql (preparing it on first use).
  Result<sqlite3_stmt*> Prepare(const std::string& sql) {
    auto it = statements.find(sql);
    if (it != statements.end()) return it->second;
    sqlite3_stmt* s = nullptr;
    int rc = sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &s, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(s);
      return Fail(rc, "preparing a statement");
    }
    statements.emplace(sql, s);
    return s;
  }

  Status Exec(const char* sql, std::string_view what) {
    int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return Fail(rc, what);
    return OkStatus();
  }

  // Runs a single-row integer query (e.g. a PRAGMA).
  Result<int64_t> QueryInt(const std::string& sql, std::string_view what) {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare(sql));
    Stmt st(s);
    int rc = st.Step();
    if (rc == SQLITE_DONE)
      return Err(CKR_DEVICE_ERROR, "database file {} is corrupt: no row while {}", path, what);
    if (rc != SQLITE_ROW) return Fail(rc, what);
    return st.Int(0);
  }

  // Runs body inside BEGIN IMMEDIATE ... COMMIT; any failure rolls everything back.
  template <typename F>
  Status Transaction(std::string_view what, F&& body) {
    VAULTP11_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE", what));
    Status s = body();
    if (s.ok()) {
      int rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) return OkStatus();
      s = Fail(rc, what);
    }
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }

  // Inside a transaction: increments meta.revision and returns the new value.
  Result<int64_t> BumpRevision() {
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s,
        Prepare("UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value"));
    Stmt st(s);
    int rc = st.Step();
    if (rc == SQLITE_DONE)
      return Err(CKR_DEVICE_ERROR, "database file {} is corrupt: no revision row", path);
    if (rc != SQLITE_ROW) return Fail(rc, "bumping the revision");
    int64_t rev = st.Int(0);
    rc = st.Step();
    if (rc != SQLITE_DONE) return Fail(rc, "bumping the revision");
    return rev;
  }

  Result<bool> VaultExists(const std::string& vault) {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("SELECT 1 FROM vaults WHERE name = ?"));
    Stmt st(s);
    st.Bind(1, vault);
    int rc = st.Step();
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return Fail(rc, "looking up a vault");
  }

  // The vault's unwrapped data key (cached after first use), with its record MAC key and
  // whether its rows carry MACs.
  Result<const VaultKeys*> Keys(const std::string& vault) {
    auto it = vault_keys.find(vault);
    if (it != vault_keys.end()) return &it->second;
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                              Prepare("SELECT wrapped_data_key FROM vaults WHERE name = ?"));
    Bytes wrapped;
    {
      Stmt st(s);
      st.Bind(1, vault);
      int rc = st.Step();
      if (rc == SQLITE_DONE)
        return Err(CKR_GENERAL_ERROR, "vault '{}' does not exist in {} (EnsureVault first)", vault,
                   path);
      if (rc != SQLITE_ROW) return Fail(rc, "reading a vault's data key");
      wrapped = st.Blob(0);
    }
    VAULTP11_ASSIGN_OR_RETURN(VaultKeys keys, Unwrap(vault, wrapped));
    if (!keys.authenticated)
      log::Warning("vault '{}' in {} was written by an earlier version: its records are not authenticated until "
                   "the database is opened writable once",
                   vault, path);
    auto [pos, inserted] = vault_keys.emplace(vault, std::move(keys));
    return &pos->second;
  }
  Result<const SecureBytes*> DataKey(const std::string& vault) {
    VAULTP11_ASSIGN_OR_RETURN(const VaultKeys* k, Keys(vault));
    return &k->data;
  }

  // Opens a wrapped data key: the v2 AAD (rows authenticated), else the v1 one (a vault of an
  // earlier version).
  Result<VaultKeys> Unwrap(const std::string& vault, const Bytes& wrapped) {
    VaultKeys keys;
    auto key = ossl::OpenAesGcm(*master_key, wrapped, AsBytes(DataKeyAad(vault)));
    keys.authenticated = key.ok();
    if (!key.ok()) key = ossl::OpenAesGcm(*master_key, wrapped, AsBytes(LegacyDataKeyAad(vault)));
    if (!key.ok() || key->size() != kKeyLen)
      return Err(CKR_DEVICE_ERROR,
                 "data key of vault '{}' in {} failed authentication (wrong master key file {}, or "
                 "tampered database)",
                 vault, path, master_key_path);
    keys.data = std::move(key).value();
    VAULTP11_RETURN_IF_ERROR(SetMacKey(keys));
    return keys;
  }
  static Status SetMacKey(VaultKeys& keys) {
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes mac_key, store::DeriveKey(keys.data, kRecordMacPurpose));
    VAULTP11_ASSIGN_OR_RETURN(keys.mac, NewRecordMacContext(mac_key));
    return OkStatus();
  }

  // Checks a row read with object_columns (`mac` its stored MAC) before anything uses it. A
  // row of an authenticated vault whose MAC is missing or wrong (an attribute flipped, a blob
  // swapped with another row's, a row moved to another id or vault) is CKR_DEVICE_ERROR,
  // logged with vault and row: the caller gets none of the rows it asked for.
  Status CheckRow(const ObjectRecord& r, const Bytes& mac) {
    auto keys = Keys(r.vault);
    if (!keys.ok()) {
      // A row naming a vault without a data key (its vault column changed) is no vault's.
      if (keys.rv() == CKR_GENERAL_ERROR) return RowFailed(r);
      return keys.error();
    }
    if (!(*keys)->authenticated) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(Bytes expect, RecordMac((*keys)->mac.get(), r));
    if (mac.size() == expect.size() && ConstantTimeEqual(mac, expect)) return OkStatus();
    return RowFailed(r);
  }
  Error RowFailed(const ObjectRecord& r) {
    log::Error("object {} of vault '{}' in {} failed authentication: the record was changed outside vaultp11 "
               "(tampered database); refusing it",
               r.id, r.vault, path);
    return Err(CKR_DEVICE_ERROR, "object {} of vault '{}' in {} failed authentication (tampered database)", r.id,
               r.vault, path);
  }

  // Inside a transaction: stores the MAC of row `r` (as it is now in the table).
  Status WriteMac(const ObjectRecord& r) {
    VAULTP11_ASSIGN_OR_RETURN(const VaultKeys* keys, Keys(r.vault));
    if (!keys->authenticated) return OkStatus();  // an earlier version's vault on a read-only store
    VAULTP11_ASSIGN_OR_RETURN(Bytes mac, RecordMac(keys->mac.get(), r));
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("UPDATE objects SET mac = ? WHERE id = ?"));
    Stmt st(s);
    st.BindBlob(1, mac);
    st.Bind(2, r.id);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return Fail(rc, "authenticating an object");
    return OkStatus();
  }

  // On a writable open, once the master key is known: upgrades every vault written by an
  // earlier version (AuthenticateVault) and caches the keys of the others. A data key that does
  // not open (a wrong master key file) is left for its first use to report.
  Status AuthenticateVaults() {
    std::vector<std::pair<std::string, Bytes>> vaults;
    {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("SELECT name, wrapped_data_key FROM vaults ORDER BY name"));
      Stmt st(s);
      int rc;
      while ((rc = st.Step()) == SQLITE_ROW) vaults.emplace_back(st.Text(0), st.Blob(1));
      if (rc != SQLITE_DONE) return Fail(rc, "listing vaults");
    }
    for (const auto& [name, wrapped] : vaults) {
      auto keys = Unwrap(name, wrapped);
      if (!keys.ok()) continue;
      if (keys->authenticated)
        vault_keys.emplace(name, std::move(keys).value());
      else
        VAULTP11_RETURN_IF_ERROR(AuthenticateVault(name));
    }
    return OkStatus();
  }

  // Upgrades a vault written by an earlier version (v1-wrapped data key, rows without MACs), in
  // one transaction: a fresh data key, every secret opened with the old key and sealed with the
  // new one, every row MACed, the new key wrapped with the v2 AAD. A secret that does not open
  // fails the upgrade (CKR_DEVICE_ERROR, nothing changed): so an old wrapped key put back into
  // an upgraded database (whose secrets are sealed under the new key) cannot get its rows
  // re-MACed. Another process that upgraded first: nothing to do.
  Status AuthenticateVault(const std::string& vault) {
    return Transaction("authenticating a vault's records", [&]() -> Status {
      Bytes wrapped;
      {
        VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("SELECT wrapped_data_key FROM vaults WHERE name = ?"));
        Stmt st(s);
        st.Bind(1, vault);
        int rc = st.Step();
        if (rc == SQLITE_DONE) return OkStatus();
        if (rc != SQLITE_ROW) return Fail(rc, "reading a vault's data key");
        wrapped = st.Blob(0);
      }
      VAULTP11_ASSIGN_OR_RETURN(VaultKeys old_keys, Unwrap(vault, wrapped));
      if (old_keys.authenticated) return OkStatus();
      VaultKeys keys;
      keys.authenticated = true;
      keys.data = SecureBytes(kKeyLen);
      VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(keys.data));
      VAULTP11_RETURN_IF_ERROR(SetMacKey(keys));
      std::vector<std::pair<ObjectRecord, Bytes>> rows;  // each with its sealed secret
      {
        VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare(std::string("SELECT ") + object_columns +
                                                            ", secret FROM objects WHERE vault = ? ORDER BY id"));
        Stmt st(s);
        st.Bind(1, vault);
        int rc;
        while ((rc = st.Step()) == SQLITE_ROW) rows.emplace_back(ReadObject(st), st.IsNull(11) ? Bytes() : st.Blob(11));
        if (rc != SQLITE_DONE) return Fail(rc, "reading a vault's records");
      }
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * u, Prepare("UPDATE objects SET secret = ?, mac = ? WHERE id = ?"));
      for (auto& [r, sealed] : rows) {
        Stmt st(u);
        if (r.has_secret) {
          const std::string aad = ObjectAad(vault, r.id);
          auto plain = ossl::OpenAesGcm(old_keys.data, sealed, AsBytes(aad));
          if (!plain.ok()) {
            log::Error("vault '{}' in {}: the secret of object {} failed authentication; its records cannot be "
                       "authenticated (tampered database)",
                       vault, path, r.id);
            return Err(CKR_DEVICE_ERROR,
                       "vault '{}' in {}: the secret of object {} failed authentication while authenticating the "
                       "vault's records (tampered database)",
                       vault, path, r.id);
          }
          VAULTP11_ASSIGN_OR_RETURN(sealed, ossl::SealAesGcm(keys.data, *plain, AsBytes(aad)));
          st.BindBlob(1, sealed);
        }
        VAULTP11_ASSIGN_OR_RETURN(Bytes mac, RecordMac(keys.mac.get(), r));
        st.BindBlob(2, mac);
        st.Bind(3, r.id);
        int rc = st.Step();
        if (rc != SQLITE_DONE) return Fail(rc, "authenticating a vault's records");
      }
      VAULTP11_ASSIGN_OR_RETURN(Bytes rewrapped, ossl::SealAesGcm(*master_key, keys.data, AsBytes(DataKeyAad(vault))));
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * w, Prepare("UPDATE vaults SET wrapped_data_key = ? WHERE name = ?"));
      Stmt st(w);
      st.BindBlob(1, rewrapped);
      st.Bind(2, vault);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return Fail(rc, "authenticating a vault's records");
      vault_keys.erase(vault);
      log::Info("vault '{}' in {}: {} records authenticated (upgrade from an earlier version)", vault, path,
                rows.size());
      return OkStatus();
    });
  }

  // Creates the tables when the schema is missing (user_version 0).
  Status SetUpSchema() {
    VAULTP11_ASSIGN_OR_RETURN(int64_t version,
                              QueryInt("PRAGMA user_version", "reading the schema version"));
    if (version == 0) {
      VAULTP11_RETURN_IF_ERROR(Transaction("creating the schema", [&]() -> Status {
        // Re-check under the write lock: another process may have just created it.
        VAULTP11_ASSIGN_OR_RETURN(int64_t v,
                                  QueryInt("PRAGMA user_version", "reading the schema version"));
        if (v != 0) return OkStatus();
        VAULTP11_RETURN_IF_ERROR(Exec(kSchemaSql, "creating the schema"));
        return Exec(kAuthSchemaSql, "creating the schema");
      }));
      VAULTP11_ASSIGN_OR_RETURN(version,
                                QueryInt("PRAGMA user_version", "reading the schema version"));
    }
    VAULTP11_RETURN_IF_ERROR(CheckVersion(version));
    // A store made before the authentication tables existed gets them now (only a read when
    // they are there already).
    VAULTP11_ASSIGN_OR_RETURN(bool have_auth, HasAuthSchema());
    if (!have_auth)
      VAULTP11_RETURN_IF_ERROR(Transaction("adding the authentication tables", [&]() -> Status {
        return Exec(kAuthSchemaSql, "adding the authentication tables");
      }));
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_version, QueryInt(kVersionColumnCheckSql, "looking for object versions"));
    if (have_version == 0) VAULTP11_RETURN_IF_ERROR(AddVersions());
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_created, QueryInt(kCreatedColumnCheckSql, "looking for creation times"));
    if (have_created == 0) VAULTP11_RETURN_IF_ERROR(AddCreated());
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_deleted, QueryInt(kDeletedItemsCheckSql, "looking for deleted items"));
    if (have_deleted == 0)
      VAULTP11_RETURN_IF_ERROR(Transaction("adding deleted items", [&]() -> Status {
        return Exec(kDeletedItemsSql, "adding deleted items");
      }));
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_policies, QueryInt(kPoliciesCheckSql, "looking for item policies"));
    if (have_policies != 2)
      VAULTP11_RETURN_IF_ERROR(Transaction("adding item policies", [&]() -> Status {
        return Exec(kPoliciesSql, "adding item policies");
      }));
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_mac, QueryInt(kMacColumnCheckSql, "looking for record MACs"));
    if (have_mac == 0)
      VAULTP11_RETURN_IF_ERROR(Transaction("adding record MACs", [&]() -> Status {
        VAULTP11_ASSIGN_OR_RETURN(int64_t again, QueryInt(kMacColumnCheckSql, "looking for record MACs"));
        if (again != 0) return OkStatus();  // another process added it meanwhile
        return Exec("ALTER TABLE objects ADD COLUMN mac BLOB NULL", "adding record MACs");
      }));
    return OkStatus();
  }

  // Inside a transaction: when `label` of `vault` is a deleted item, its purge time.
  Result<std::optional<int64_t>> DeletedPurgeAfter(const std::string& vault, const std::string& label) {
    if (*live_filter == '\0') return std::optional<int64_t>();
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("SELECT purge_after FROM deleted_items WHERE vault = ? AND name = ?"));
    Stmt st(s);
    st.Bind(1, vault);
    st.Bind(2, label);
    int rc = st.Step();
    if (rc == SQLITE_DONE) return std::optional<int64_t>();
    if (rc != SQLITE_ROW) return Fail(rc, "looking up a deleted item");
    return std::optional<int64_t>(st.Int(0));
  }

  // Inside a transaction: an item gone for good takes its policy and notices along (a new item
  // of that name starts without them).
  Status ForgetItem(const std::string& vault, const std::string& name) {
    if (*live_filter == '\0') return OkStatus();
    for (const char* sql : {"DELETE FROM item_policies WHERE vault = ?1 AND name = ?2",
                            "DELETE FROM notices WHERE vault = ?1 AND name = ?2"}) {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, Prepare(sql));
      Stmt st(q);
      st.Bind(1, vault);
      st.Bind(2, name);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return Fail(rc, "forgetting an item's policy");
    }
    return OkStatus();
  }

  // The rows of `vault` (?1) that match `where` (its parameters from ?2, bound by `bind`),
  // oldest first; `live`: without those of soft-deleted items.
  Result<std::vector<ObjectRecord>> ReadObjects(const std::string& vault, const char* where,
                                                const std::function<void(Stmt&)>& bind, bool live,
                                                std::string_view what) {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, Prepare(std::string("SELECT ") + object_columns +
                                                        " FROM objects WHERE vault = ?1 AND " + where +
                                                        (live ? live_filter : "") + " ORDER BY id"));
    Stmt st(q);
    st.Bind(1, vault);
    bind(st);
    std::vector<ObjectRecord> out;
    int rc;
    Bytes mac;
    while ((rc = st.Step()) == SQLITE_ROW) {
      out.push_back(ReadObject(st, &mac));
      VAULTP11_RETURN_IF_ERROR(CheckRow(out.back(), mac));
    }
    if (rc != SQLITE_DONE) return Fail(rc, what);
    return out;
  }

  // Inside or outside a transaction: every row of `label` in `vault` (deleted or not), oldest first.
  Result<std::vector<ObjectRecord>> ItemObjects(const std::string& vault, const std::string& label) {
    return ReadObjects(vault, "label = ?2", [&](Stmt& st) { st.Bind(2, label); }, false, "reading an item");
  }

  // Inside a transaction: inserts `record` (its version and created as given) with its secret
  // sealed under the vault's data key; sets id, revision and has_secret.
  Status InsertRow(ObjectRecord& record, const SecureBytes& secret, int64_t rev, const SecureBytes& data_key) {
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * ins,
        Prepare("INSERT INTO objects(vault, class, label, ck_id, attributes, secret, revision, version, created) "
                "VALUES(?, ?, ?, ?, ?, NULL, ?, ?, ?)"));
    {
      Stmt st(ins);
      st.Bind(1, record.vault);
      st.Bind(2, static_cast<int64_t>(record.object_class));
      st.Bind(3, record.label);
      st.BindBlob(4, record.ck_id);
      st.BindBlob(5, record.attributes);
      st.Bind(6, rev);
      st.Bind(7, record.version);
      st.Bind(8, record.created);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return Fail(rc, "inserting an object");
    }
    int64_t id = sqlite3_last_insert_rowid(db);
    if (!secret.empty()) {
      // The id is part of the AAD, so a sealed secret cannot be moved to another row.
      std::string aad = ObjectAad(record.vault, id);
      VAULTP11_ASSIGN_OR_RETURN(Bytes sealed, ossl::SealAesGcm(data_key, secret, AsBytes(aad)));
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * upd, Prepare("UPDATE objects SET secret = ? WHERE id = ?"));
      Stmt st(upd);
      st.BindBlob(1, sealed);
      st.Bind(2, id);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return Fail(rc, "storing an object's secret");
    }
    record.id = id;
    record.revision = rev;
    record.has_secret = !secret.empty();
    return WriteMac(record);  // the MAC covers the id, known only now
  }

  // Inside a transaction: records tombstones at revision `rev` for the rows `ids` of `vault`
  // (other processes see them go), deleting the rows first unless `keep_rows` (soft-delete
  // hides them instead).
  Status Tombstone(const std::string& vault, const std::vector<int64_t>& ids, int64_t rev, bool keep_rows) {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * d, Prepare("DELETE FROM objects WHERE id = ?"));
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * t,
                              Prepare("INSERT OR REPLACE INTO tombstones(id, vault, revision) VALUES(?, ?, ?)"));
    for (int64_t id : ids) {
      if (!keep_rows) {
        Stmt st(d);
        st.Bind(1, id);
        int rc = st.Step();
        if (rc != SQLITE_DONE) return Fail(rc, "deleting an object");
      }
      Stmt st(t);
      st.Bind(1, id);
      st.Bind(2, vault);
      st.Bind(3, rev);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return Fail(rc, "recording a deletion");
    }
    return OkStatus();
  }

  // Inside a transaction: sets (empty: removes) the item's policy.
  Status WritePolicy(const std::string& vault, const std::string& name, const std::string& policy) {
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * q,
        Prepare(policy.empty() ? "DELETE FROM item_policies WHERE vault = ?1 AND name = ?2"
                               : "INSERT INTO item_policies(vault, name, policy) VALUES(?1, ?2, ?3) "
                                 "ON CONFLICT(vault, name) DO UPDATE SET policy = ?3"));
    Stmt st(q);
    st.Bind(1, vault);
    st.Bind(2, name);
    if (!policy.empty()) st.Bind(3, policy);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return Fail(rc, "setting a policy");
    return OkStatus();
  }

  // A deleted item's name cannot be used until the item is recovered or purged.
  Status RefuseDeletedName(const std::string& vault, const std::string& label) {
    VAULTP11_ASSIGN_OR_RETURN(auto purge_after, DeletedPurgeAfter(vault, label));
    if (purge_after)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID,
                 "'{}' in vault {} is a deleted item (recoverable until {}): recover or purge it before "
                 "using its name",
                 label, vault, UtcTimeString(*purge_after));
    return OkStatus();
  }

  // Upgrades a store made before creation times: existing rows count as created now.
  Status AddCreated() {
    return Transaction("adding creation times", [&]() -> Status {
      VAULTP11_ASSIGN_OR_RETURN(int64_t again, QueryInt(kCreatedColumnCheckSql, "looking for creation times"));
      if (again != 0) return OkStatus();
      VAULTP11_RETURN_IF_ERROR(
          Exec("ALTER TABLE objects ADD COLUMN created INTEGER NOT NULL DEFAULT 0", "adding creation times"));
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("UPDATE objects SET created = ?"));
      Stmt st(s);
      st.Bind(1, static_cast<int64_t>(time(nullptr)));
      int rc = st.Step();
      if (rc != SQLITE_DONE) return Fail(rc, "adding creation times");
      return OkStatus();
    });
  }

  // Upgrades a store made before versions: adds objects.version and gives each labelled
  // (label, CKA_ID) group of a vault one version, so an existing key pair stays one version
  // and labels used by several keys become several versions (the newest row's is current).
  Status AddVersions() {
    return Transaction("adding object versions", [&]() -> Status {
      VAULTP11_ASSIGN_OR_RETURN(int64_t again, QueryInt(kVersionColumnCheckSql, "looking for object versions"));
      if (again != 0) return OkStatus();  // another process upgraded it meanwhile
      VAULTP11_RETURN_IF_ERROR(
          Exec("ALTER TABLE objects ADD COLUMN version TEXT NOT NULL DEFAULT ''", "adding object versions"));
      struct Group {
        std::string vault, label;
        Bytes ck_id;
      };
      std::vector<Group> groups;
      {
        VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("SELECT DISTINCT vault, label, ck_id FROM objects "
                                                            "WHERE label != ''"));
        Stmt st(s);
        int rc;
        while ((rc = st.Step()) == SQLITE_ROW) groups.push_back(Group{st.Text(0), st.Text(1), st.Blob(2)});
        if (rc != SQLITE_DONE) return Fail(rc, "adding object versions");
      }
      if (groups.empty()) return OkStatus();
      VAULTP11_ASSIGN_OR_RETURN(int64_t rev, BumpRevision());
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * u, Prepare("UPDATE objects SET version = ?, revision = ? "
                                                          "WHERE vault = ? AND label = ? AND ck_id = ?"));
      for (const Group& g : groups) {
        VAULTP11_ASSIGN_OR_RETURN(std::string v, NewVersionId());
        Stmt st(u);
        st.Bind(1, v);
        st.Bind(2, rev);
        st.Bind(3, g.vault);
        st.Bind(4, g.label);
        st.BindBlob(5, g.ck_id);
        int rc = st.Step();
        if (rc != SQLITE_DONE) return Fail(rc, "adding object versions");
      }
      return OkStatus();
    });
  }

  // Inside a transaction: the rows labelled `label` in `vault`, newest first (`except` left out).
  Result<std::vector<ItemRow>> ItemRows(const std::string& vault, const std::string& label, int64_t except = 0) {
    // Whole rows, checked like every row the store hands out: the name rules and VersionsOf act
    // on versions, classes and ids.
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare(std::string("SELECT ") + object_columns +
                                                        " FROM objects WHERE vault = ? AND label = ? AND id != ? "
                                                        "ORDER BY id DESC"));
    Stmt st(s);
    st.Bind(1, vault);
    st.Bind(2, label);
    st.Bind(3, except);
    std::vector<ItemRow> rows;
    int rc;
    Bytes mac;
    while ((rc = st.Step()) == SQLITE_ROW) {
      ObjectRecord r = ReadObject(st, &mac);
      VAULTP11_RETURN_IF_ERROR(CheckRow(r, mac));
      rows.push_back(ItemRow{r.id, r.object_class, std::move(r.ck_id), std::move(r.version), r.created});
    }
    if (rc != SQLITE_DONE) return Fail(rc, "reading an item's versions");
    return rows;
  }

  Result<bool> HasAuthSchema() {
    VAULTP11_ASSIGN_OR_RETURN(
        int64_t n, QueryInt(kAuthSchemaCheckSql, "looking for the authentication tables"));
    return n == kAuthSchemaObjects;
  }

  // Reads meta.deployment_id into `deployment_id`; false when there is none yet.
  Result<bool> ReadDeploymentId() {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                              Prepare("SELECT value FROM meta WHERE key = 'deployment_id'"));
    Stmt st(s);
    int rc = st.Step();
    if (rc == SQLITE_DONE) return false;
    if (rc != SQLITE_ROW) return Fail(rc, "reading the deployment id");
    std::string id = st.Text(0);
    if (!IsDeploymentId(id))
      return Err(CKR_DEVICE_ERROR, "database file {} has a malformed deployment id", path);
    deployment_id = std::move(id);
    return true;
  }

  // The deployment id, created when missing. The first creator wins (INSERT OR IGNORE); every
  // process then reads back the stored value, never the one it generated.
  Result<std::string> EnsureDeploymentId(bool read_only) {
    if (!deployment_id.empty()) return deployment_id;
    VAULTP11_ASSIGN_OR_RETURN(bool found, ReadDeploymentId());
    if (found) return deployment_id;
    if (read_only)
      return Err(CKR_TOKEN_WRITE_PROTECTED,
                 "database {} has no deployment id yet and is read-only (open it writable once)",
                 path);
    uint8_t raw[kDeploymentIdBytes];
    VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(raw));
    std::string fresh;
    for (uint8_t b : raw) fresh += fmt::format("{:02x}", b);
    VAULTP11_RETURN_IF_ERROR(Transaction("creating the deployment id", [&]() -> Status {
      VAULTP11_ASSIGN_OR_RETURN(
          sqlite3_stmt * s,
          Prepare("INSERT OR IGNORE INTO meta(key, value) VALUES('deployment_id', ?)"));
      Stmt st(s);
      st.Bind(1, fresh);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return Fail(rc, "creating the deployment id");
      return OkStatus();
    }));
    VAULTP11_ASSIGN_OR_RETURN(found, ReadDeploymentId());
    if (!found)
      return Err(CKR_DEVICE_ERROR, "database {}: the deployment id vanished after creation", path);
    return deployment_id;
  }

  // Inside or outside a transaction: the principal's recorded failures (zero when none).
  Result<LoginFailures> ReadLoginFailures(std::string_view principal) {
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s, Prepare("SELECT failures, last_failure, locked_until FROM login_failures "
                                  "WHERE principal = ?"));
    Stmt st(s);
    st.Bind(1, principal);
    int rc = st.Step();
    if (rc == SQLITE_DONE) return LoginFailures{};
    if (rc != SQLITE_ROW) return Fail(rc, "reading failed logins");
    return LoginFailures{st.Int(0), st.Int(1), st.Int(2)};
  }

  Status CheckVersion(int64_t version) {
    if (version != kSchemaVersion)
      return Err(CKR_DEVICE_ERROR,
                 "database file {} has schema version {}, this module supports {}", path, version,
                 kSchemaVersion);
    return OkStatus();
  }
};

Result<std::unique_ptr<Store>> Store::Open(const std::string& db_path,
                                           const std::string& master_key_path,
                                           bool create_if_missing) {
  std::unique_ptr<Store> store(new Store());
  store->path_ = db_path;
  store->impl_ = std::make_unique<Impl>();
  Impl& impl = *store->impl_;
  impl.path = db_path;
  impl.master_key_path = master_key_path;

  struct stat st {};
  bool exists = stat(db_path.c_str(), &st) == 0;
  if (!exists) {
    if (errno != ENOENT)
      return Err(CKR_DEVICE_ERROR, "cannot access database file {}: {}", db_path, strerror(errno));
    if (!create_if_missing)
      return Err(CKR_TOKEN_NOT_PRESENT, "database file {} does not exist", db_path);
    // Create it ourselves with mode 0600; SQLite gives its -wal and -shm files the mode of the
    // database file, so they are private too (no process-wide umask change needed).
    int fd = open(db_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0)
      close(fd);
    else if (errno != EEXIST)  // EEXIST: a racing process created it first
      return Err(CKR_DEVICE_ERROR, "cannot create database file {}: {}", db_path, strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    return Err(CKR_DEVICE_ERROR, "database file {} is not a regular file", db_path);
  } else if (faccessat(AT_FDCWD, db_path.c_str(), W_OK, AT_EACCESS) != 0) {
    store->read_only_ = true;
  }

  int flags =
      SQLITE_OPEN_FULLMUTEX | (store->read_only_ ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE);
  int rc = sqlite3_open_v2(db_path.c_str(), &impl.db, flags, nullptr);
  if (rc != SQLITE_OK) {
    Error e = SqlError(impl.db, rc, db_path, "opening");
    sqlite3_close_v2(impl.db);
    impl.db = nullptr;
    return e;
  }
  store->db_ = impl.db;
  sqlite3_extended_result_codes(impl.db, 1);
  sqlite3_busy_timeout(impl.db, kBusyTimeoutMs);
  VAULTP11_RETURN_IF_ERROR(impl.Exec("PRAGMA foreign_keys = ON", "enabling foreign keys"));

  if (store->read_only_) {
    VAULTP11_ASSIGN_OR_RETURN(int64_t version,
                              impl.QueryInt("PRAGMA user_version", "reading the schema version"));
    VAULTP11_RETURN_IF_ERROR(impl.CheckVersion(version));
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_version, impl.QueryInt(kVersionColumnCheckSql, "looking for object versions"));
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_created, impl.QueryInt(kCreatedColumnCheckSql, "looking for creation times"));
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_mac, impl.QueryInt(kMacColumnCheckSql, "looking for record MACs"));
    if (have_version == 0)
      impl.object_columns = kObjectColumnsNoVersion;
    else if (have_created == 0)
      impl.object_columns = kObjectColumnsNoCreated;
    else if (have_mac == 0)
      impl.object_columns = kObjectColumnsNoMac;
    VAULTP11_ASSIGN_OR_RETURN(int64_t have_deleted, impl.QueryInt(kDeletedItemsCheckSql, "looking for deleted items"));
    if (have_deleted == 0) impl.live_filter = "";
  } else {
    // Switching to WAL also reads the header, so a non-database file fails here.
    {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, impl.Prepare("PRAGMA journal_mode = WAL"));
      Stmt jm(s);
      // Changing the journal mode while other processes open the same fresh file can fail
      // with SQLITE_BUSY without SQLite calling the busy handler: retry up to the timeout.
      auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
      while ((rc = jm.Step()) != SQLITE_ROW &&
             ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) &&
             std::chrono::steady_clock::now() < deadline) {
        sqlite3_reset(s);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (rc != SQLITE_ROW) return impl.Fail(rc, "enabling WAL");
      if (jm.Text(0) != "wal")
        return Err(CKR_DEVICE_ERROR, "database file {} cannot use WAL journal mode (got {})",
                   db_path, jm.Text(0));
    }
    VAULTP11_RETURN_IF_ERROR(impl.SetUpSchema());
    // Created up front so that the store still has it should it later be mounted read-only.
    VAULTP11_RETURN_IF_ERROR(impl.EnsureDeploymentId(/*read_only=*/false).status());
  }

  // The master key: created beside the database on first use. Vaults are counted before the
  // file is looked at: a vault row is only ever written after its master key file exists, so
  // a key missing while vaults existed beforehand is lost, never just not yet written by a
  // racing process.
  VAULTP11_ASSIGN_OR_RETURN(int64_t vaults,
                            impl.QueryInt("SELECT count(*) FROM vaults", "counting vaults"));
  struct stat kst {};
  if (stat(master_key_path.c_str(), &kst) == 0) {
    VAULTP11_ASSIGN_OR_RETURN(store->master_key_, ReadMasterKey(master_key_path));
  } else if (errno != ENOENT) {
    return Err(CKR_DEVICE_ERROR, "cannot access master key file {}: {}", master_key_path,
               strerror(errno));
  } else {
    // Never invent a new key for a database whose vaults are wrapped under a lost one.
    if (!create_if_missing || store->read_only_ || vaults > 0)
      return Err(CKR_DEVICE_ERROR, "master key file {} of database {} is missing", master_key_path,
                 db_path);
    VAULTP11_ASSIGN_OR_RETURN(store->master_key_, CreateOrReadMasterKey(master_key_path));
  }
  impl.master_key = &store->master_key_;
  if (!store->read_only_) VAULTP11_RETURN_IF_ERROR(impl.AuthenticateVaults());
  return store;
}

Store::~Store() {
  if (impl_ != nullptr) {
    for (auto& [sql, s] : impl_->statements) sqlite3_finalize(s);
    impl_->statements.clear();
  }
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

Status Store::EnsureVault(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(bool exists, impl_->VaultExists(vault));
  if (exists) return OkStatus();
  if (read_only_)
    return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot create vault '{}': database {} is read-only",
               vault, path_);
  SecureBytes data_key(kKeyLen);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(data_key));
  std::string aad = DataKeyAad(vault);
  VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped, ossl::SealAesGcm(master_key_, data_key, AsBytes(aad)));
  // INSERT OR IGNORE: when processes race, the first key wins and every process reads it back
  // (the data key cache is filled from the database, never from the key generated here).
  return impl_->Transaction("creating a vault", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s,
        impl_->Prepare("INSERT OR IGNORE INTO vaults(name, wrapped_data_key) VALUES(?, ?)"));
    {
      Stmt st(s);
      st.Bind(1, vault);
      st.BindBlob(2, wrapped);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return impl_->Fail(rc, "creating a vault");
    }
    if (sqlite3_changes(db_) == 0) return OkStatus();  // another process won: nothing changed
    return impl_->BumpRevision().status();
  });
}

Result<std::string> NewVersionId() {
  uint8_t raw[16];
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(raw));
  return HexOf(raw);
}

Result<std::vector<ObjectRecord>> Store::InsertVersion(std::vector<ObjectRecord> records,
                                                       const std::vector<SecureBytes>& secrets, bool new_version,
                                                       std::string_view expect_current) {
  std::lock_guard<std::mutex> lock(mu_);
  if (records.empty() || secrets.size() != records.size())
    return Err(CKR_GENERAL_ERROR, "InsertVersion: {} records, {} secrets", records.size(), secrets.size());
  if (read_only_)
    return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot create an object: database {} is read-only", path_);
  const std::string vault = records.front().vault;
  const std::string label = records.front().label;
  for (const auto& r : records)
    if (r.vault != vault || r.label != label)
      return Err(CKR_GENERAL_ERROR, "InsertVersion: the records of one version differ in vault or label");
  for (size_t i = 0; i < records.size(); ++i)
    for (size_t j = i + 1; j < records.size(); ++j)
      if (records[i].object_class == records[j].object_class)
        return Err(CKR_GENERAL_ERROR, "InsertVersion: two records of one class");
  std::string version = label.empty() ? std::string() : records.front().version;
  if (!label.empty() && version.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(version, NewVersionId());
  }
  VAULTP11_ASSIGN_OR_RETURN(const SecureBytes* data_key, impl_->DataKey(vault));
  const int64_t now = time(nullptr);
  Status s = impl_->Transaction("inserting an object", [&]() -> Status {
    if (!label.empty()) {
      VAULTP11_RETURN_IF_ERROR(impl_->RefuseDeletedName(vault, label));
      VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label));
      if (rows.empty() && new_version && !expect_current.empty())
        return Err(CKR_FUNCTION_REJECTED, "'{}' in vault {} was deleted meanwhile", label, vault);
      if (!rows.empty()) {
        const std::string& current = rows.front().version;
        if (new_version && !expect_current.empty() && current != expect_current)
          return Err(CKR_FUNCTION_REJECTED, "'{}' in vault {} has a newer version ({}) than {}: changed meanwhile", label,
                     vault, current, expect_current);
        if (new_version) {
          for (const auto& r : rows)
            if (r.version == version) return Err(CKR_GENERAL_ERROR, "version {} of '{}' exists already", version, label);
          std::vector<CK_OBJECT_CLASS> have, add;
          for (const auto& r : rows)
            if (r.version == current) have.push_back(r.cls);
          for (const auto& rec : records) add.push_back(rec.object_class);
          if (std::string_view(KindOf(have)) != KindOf(add))
            return NameExists(vault, label, current,
                              fmt::format("it is a {}, and a {} cannot be a version of it", KindOf(have), KindOf(add)), false);
          for (const auto& rec : records)
            if (const auto* other = OtherVersionWithId(rows, version, rec.ck_id))
              return Err(CKR_ATTRIBUTE_VALUE_INVALID,
                         "CKA_ID is already the id of version {} of '{}' in vault {}: each version needs its own "
                         "(leave CKA_ID out to get one)",
                         other->version, label, vault);
        } else {
          for (const auto& rec : records) {
            if (!HasCkId(rows, current, rec.ck_id))
              return NameExists(vault, label, current, "the new object's CKA_ID is not the current version's");
            if (HasClass(rows, current, rec.object_class))
              return NameExists(vault, label, current, "the current version has an object of this class");
          }
          version = current;
        }
      }
    }
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    for (size_t i = 0; i < records.size(); ++i) {
      records[i].version = version;
      records[i].created = now;
      VAULTP11_RETURN_IF_ERROR(impl_->InsertRow(records[i], secrets[i], rev, *data_key));
    }
    return OkStatus();
  });
  if (!s.ok()) return s.error();
  return records;
}

Result<ObjectRecord> Store::Insert(ObjectRecord record, const SecureBytes& secret, bool new_version) {
  std::vector<ObjectRecord> one;
  one.push_back(std::move(record));
  std::vector<SecureBytes> secrets;
  secrets.push_back(secret);
  VAULTP11_ASSIGN_OR_RETURN(auto saved, InsertVersion(std::move(one), secrets, new_version));
  return std::move(saved.front());
}

Result<std::vector<ObjectRecord>> Store::InsertItem(std::vector<ObjectRecord> records,
                                                    const std::vector<SecureBytes>& secrets, const std::string& policy,
                                                    const std::function<Status()>& within) {
  std::lock_guard<std::mutex> lock(mu_);
  if (records.empty() || secrets.size() != records.size())
    return Err(CKR_GENERAL_ERROR, "InsertItem: {} records, {} secrets", records.size(), secrets.size());
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot create an item: database {} is read-only", path_);
  const std::string vault = records.front().vault;
  const std::string label = records.front().label;
  for (const auto& r : records)
    if (r.vault != vault || r.label != label || r.label.empty() || r.version.empty())
      return Err(CKR_GENERAL_ERROR, "InsertItem: records of one named item, each with its version");
  VAULTP11_ASSIGN_OR_RETURN(const SecureBytes* data_key, impl_->DataKey(vault));
  Status s = impl_->Transaction("inserting an item", [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(impl_->RefuseDeletedName(vault, label));
    VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label));
    if (!rows.empty())
      return NameExists(vault, label, rows.front().version, "a restored item needs a free name", false);
    if (within) VAULTP11_RETURN_IF_ERROR(within());
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    for (size_t i = 0; i < records.size(); ++i)
      VAULTP11_RETURN_IF_ERROR(impl_->InsertRow(records[i], secrets[i], rev, *data_key));
    return policy.empty() ? OkStatus() : impl_->WritePolicy(vault, label, policy);
  });
  if (!s.ok()) return s.error();
  return records;
}

Result<std::string> Store::Update(int64_t id, const std::string& label, const Bytes& ck_id,
                                  const Bytes& attributes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_)
    return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot modify object {}: database {} is read-only", id,
               path_);
  std::string version;
  Status s = impl_->Transaction("updating an object", [&]() -> Status {
    ObjectRecord row;
    {
      // The whole row, checked: a new MAC must never cover a tampered class or creation time.
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, impl_->Prepare(std::string("SELECT ") + impl_->object_columns +
                                                                 " FROM objects WHERE id = ?"));
      Stmt st(s);
      st.Bind(1, id);
      int rc = st.Step();
      if (rc == SQLITE_DONE) return Err(CKR_OBJECT_HANDLE_INVALID, "no object with id {} in {}", id, path_);
      if (rc != SQLITE_ROW) return impl_->Fail(rc, "updating an object");
      Bytes mac;
      row = ReadObject(st, &mac);
      VAULTP11_RETURN_IF_ERROR(impl_->CheckRow(row, mac));
    }
    const std::string vault = row.vault, old_label = row.label;
    const CK_OBJECT_CLASS cls = row.object_class;
    version = row.version;
    VAULTP11_ASSIGN_OR_RETURN(auto hidden, impl_->DeletedPurgeAfter(vault, old_label));
    if (hidden) return Err(CKR_OBJECT_HANDLE_INVALID, "object {} belongs to a deleted item", id);
    if (label.empty()) {
      version.clear();
    } else {
      if (label != old_label) VAULTP11_RETURN_IF_ERROR(impl_->RefuseDeletedName(vault, label));
      VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label, id));
      if (label != old_label && !rows.empty()) {
        const std::string& current = rows.front().version;
        if (!HasCkId(rows, current, ck_id))
          return NameExists(vault, label, current, "the object's CKA_ID is not the current version's");
        if (HasClass(rows, current, cls)) return NameExists(vault, label, current, "the current version has an object of this class");
        version = current;
      } else if (version.empty()) {
        VAULTP11_ASSIGN_OR_RETURN(version, NewVersionId());
      }
      if (const auto* other = OtherVersionWithId(rows, version, ck_id))
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_ID is already the id of version {} of '{}' in vault {}",
                   other->version, label, vault);
    }
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s,
        impl_->Prepare("UPDATE objects SET label = ?, ck_id = ?, attributes = ?, revision = ?, version = ? WHERE id = ?"));
    Stmt st(s);
    st.Bind(1, label);
    st.BindBlob(2, ck_id);
    st.BindBlob(3, attributes);
    st.Bind(4, rev);
    st.Bind(5, version);
    st.Bind(6, id);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "updating an object");
    row.label = label;
    row.ck_id = ck_id;
    row.attributes = attributes;
    row.version = version;
    return impl_->WriteMac(row);
  });
  if (!s.ok()) return s.error();
  return version;
}

Result<std::vector<ObjectRecord>> Store::DeleteItem(const std::string& vault, const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot delete '{}': database {} is read-only", label, path_);
  std::vector<ObjectRecord> gone;
  if (label.empty()) return gone;
  Status s = impl_->Transaction("deleting an item", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(gone, impl_->ItemObjects(vault, label));
    if (gone.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(auto deleted, impl_->DeletedPurgeAfter(vault, label));
    if (deleted) return Err(CKR_ARGUMENTS_BAD, "'{}' in vault {} is a deleted item: purge it instead", label, vault);
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    VAULTP11_RETURN_IF_ERROR(impl_->Tombstone(vault, IdsOf(gone), rev, /*keep_rows=*/false));
    return impl_->ForgetItem(vault, label);
  });
  if (!s.ok()) return s.error();
  return gone;
}

Result<std::vector<ObjectRecord>> Store::DeleteVersion(const std::string& vault, const std::string& label,
                                                       const std::string& version, const std::string& policy) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot delete '{}': database {} is read-only", label, path_);
  std::vector<ObjectRecord> gone;
  if (label.empty() || version.empty()) return gone;
  Status s = impl_->Transaction("deleting a version", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemObjects(vault, label));
    bool others = false;
    for (auto& r : rows) {
      if (r.version == version) gone.push_back(std::move(r));
      else others = true;
    }
    if (gone.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    VAULTP11_RETURN_IF_ERROR(impl_->Tombstone(vault, IdsOf(gone), rev, /*keep_rows=*/false));
    if (!others) return impl_->ForgetItem(vault, label);
    return impl_->WritePolicy(vault, label, policy);
  });
  if (!s.ok()) return s.error();
  return gone;
}

Result<std::vector<ObjectRecord>> Store::SoftDeleteItem(const std::string& vault, const std::string& label, int64_t now,
                                                        int64_t purge_after) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot delete '{}': database {} is read-only", label, path_);
  std::vector<ObjectRecord> hidden;
  if (label.empty()) return hidden;
  Status s = impl_->Transaction("deleting an item", [&]() -> Status {
    hidden.clear();
    VAULTP11_ASSIGN_OR_RETURN(auto already, impl_->DeletedPurgeAfter(vault, label));
    if (already) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(hidden, impl_->ItemObjects(vault, label));
    if (hidden.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * ins, impl_->Prepare("INSERT INTO deleted_items(vault, name, deleted, purge_after) "
                                                                   "VALUES(?, ?, ?, ?)"));
      Stmt st(ins);
      st.Bind(1, vault);
      st.Bind(2, label);
      st.Bind(3, now);
      st.Bind(4, purge_after);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return impl_->Fail(rc, "deleting an item");
    }
    // To other processes the rows are gone: tombstones (taken back on recovery).
    return impl_->Tombstone(vault, IdsOf(hidden), rev, /*keep_rows=*/true);
  });
  if (!s.ok()) return s.error();
  return hidden;
}

Result<std::vector<DeletedItem>> Store::DeletedItems(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DeletedItem> out;
  if (*impl_->live_filter == '\0') return out;
  {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, impl_->Prepare("SELECT name, deleted, purge_after FROM deleted_items "
                                                               "WHERE vault = ? ORDER BY name"));
    Stmt st(q);
    st.Bind(1, vault);
    int rc;
    while ((rc = st.Step()) == SQLITE_ROW) out.push_back(DeletedItem{st.Text(0), st.Int(1), st.Int(2), {}});
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "listing deleted items");
  }
  for (DeletedItem& d : out) {
    VAULTP11_ASSIGN_OR_RETURN(d.objects, impl_->ItemObjects(vault, d.name));
  }
  return out;
}

Status Store::RecoverItem(const std::string& vault, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot recover '{}': database {} is read-only", name, path_);
  return impl_->Transaction("recovering an item", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(auto purge_after, impl_->DeletedPurgeAfter(vault, name));
    if (!purge_after) return Err(CKR_ARGUMENTS_BAD, "vault {} has no deleted item '{}'", vault, name);
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    const char* steps[] = {
        "DELETE FROM deleted_items WHERE vault = ?1 AND name = ?2",
        "DELETE FROM tombstones WHERE id IN (SELECT id FROM objects WHERE vault = ?1 AND label = ?2)",
        "UPDATE objects SET revision = ?3 WHERE vault = ?1 AND label = ?2",
    };
    for (const char* sql : steps) {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, impl_->Prepare(sql));
      Stmt st(q);
      st.Bind(1, vault);
      st.Bind(2, name);
      if (sqlite3_bind_parameter_count(q) >= 3) st.Bind(3, rev);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return impl_->Fail(rc, "recovering an item");
    }
    return OkStatus();
  });
}

Result<std::vector<ObjectRecord>> Store::PurgeItem(const std::string& vault, const std::string& name, int64_t now,
                                                   bool protection) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot purge '{}': database {} is read-only", name, path_);
  std::vector<ObjectRecord> gone;
  Status s = impl_->Transaction("purging an item", [&]() -> Status {
    gone.clear();
    VAULTP11_ASSIGN_OR_RETURN(auto purge_after, impl_->DeletedPurgeAfter(vault, name));
    if (!purge_after) return Err(CKR_ARGUMENTS_BAD, "vault {} has no deleted item '{}'", vault, name);
    if (protection && now < *purge_after)
      return Err(CKR_ACTION_PROHIBITED,
                 "vault {} has purge protection: '{}' can be purged from {} (when its retention ends), not before",
                 vault, name, UtcTimeString(*purge_after));
    VAULTP11_ASSIGN_OR_RETURN(gone, impl_->ItemObjects(vault, name));
    VAULTP11_RETURN_IF_ERROR(impl_->BumpRevision().status());
    const char* steps[] = {
        "DELETE FROM objects WHERE vault = ?1 AND label = ?2",
        "DELETE FROM deleted_items WHERE vault = ?1 AND name = ?2",
    };
    for (const char* sql : steps) {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, impl_->Prepare(sql));
      Stmt st(q);
      st.Bind(1, vault);
      st.Bind(2, name);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return impl_->Fail(rc, "purging an item");
    }
    return impl_->ForgetItem(vault, name);  // the tombstones written at deletion stay
  });
  if (!s.ok()) return s.error();
  return gone;
}

Status Store::EnablePurgeProtection(const std::string& vault) {
  VAULTP11_ASSIGN_OR_RETURN(bool on, PurgeProtection(vault));  // no write when already on
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_ || on) return OkStatus();
  return impl_->Transaction("turning purge protection on", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, impl_->Prepare("INSERT OR IGNORE INTO meta(key, value) VALUES(?, 1)"));
    Stmt st(q);
    st.Bind(1, "purge_protection:" + vault);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "turning purge protection on");
    return OkStatus();
  });
}

Result<bool> Store::PurgeProtection(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, impl_->Prepare("SELECT 1 FROM meta WHERE key = ?"));
  Stmt st(q);
  st.Bind(1, "purge_protection:" + vault);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return impl_->Fail(rc, "reading purge protection");
}

Status Store::SetPolicy(const std::string& vault, const std::string& name, const std::string& policy) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot set a policy: database {} is read-only", path_);
  return impl_->Transaction("setting a policy", [&]() -> Status {
    return impl_->WritePolicy(vault, name, policy);
  });
}

Result<std::string> Store::Policy(const std::string& vault, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, impl_->Prepare("SELECT policy FROM item_policies WHERE vault = ? AND name = ?"));
  Stmt st(q);
  st.Bind(1, vault);
  st.Bind(2, name);
  int rc = st.Step();
  if (rc == SQLITE_DONE) return std::string();
  if (rc != SQLITE_ROW) return impl_->Fail(rc, "reading a policy");
  return st.Text(0);
}

Result<std::vector<std::pair<std::string, std::string>>> Store::Policies(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q,
                            impl_->Prepare("SELECT name, policy FROM item_policies WHERE vault = ? ORDER BY name"));
  Stmt st(q);
  st.Bind(1, vault);
  std::vector<std::pair<std::string, std::string>> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.emplace_back(st.Text(0), st.Text(1));
  if (rc != SQLITE_DONE) return impl_->Fail(rc, "reading policies");
  return out;
}

Result<bool> Store::ClaimNotice(const std::string& vault, const std::string& name, const std::string& version,
                                const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot record a notice: database {} is read-only", path_);
  bool first = false;
  VAULTP11_RETURN_IF_ERROR(impl_->Transaction("recording a notice", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * q, impl_->Prepare("INSERT OR IGNORE INTO notices(vault, name, version, what) "
                                                               "VALUES(?, ?, ?, ?)"));
    Stmt st(q);
    st.Bind(1, vault);
    st.Bind(2, name);
    st.Bind(3, version);
    st.Bind(4, what);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "recording a notice");
    first = sqlite3_changes(db_) == 1;
    return OkStatus();
  }));
  return first;
}

Result<std::vector<VersionInfo>> Store::VersionsOf(const std::string& vault, const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<VersionInfo> out;
  if (label.empty()) return out;
  VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label));
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {  // oldest first
    auto v = std::find_if(out.begin(), out.end(), [&](const VersionInfo& x) { return x.version == it->version; });
    if (v == out.end()) {
      out.push_back(VersionInfo{it->version, it->ck_id, {}, {}, it->created, false});
      v = out.end() - 1;
    }
    v->classes.push_back(it->cls);
    v->ids.push_back(it->id);
  }
  if (!rows.empty())
    for (auto& v : out) v.current = v.version == rows.front().version;
  return out;
}

Status Store::Delete(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_)
    return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot delete object {}: database {} is read-only", id,
               path_);
  return impl_->Transaction("deleting an object", [&]() -> Status {
    std::string vault, label;
    {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                                impl_->Prepare("SELECT vault, label FROM objects WHERE id = ?"));
      Stmt st(s);
      st.Bind(1, id);
      int rc = st.Step();
      if (rc == SQLITE_DONE)
        return Err(CKR_OBJECT_HANDLE_INVALID, "no object with id {} in {}", id, path_);
      if (rc != SQLITE_ROW) return impl_->Fail(rc, "deleting an object");
      vault = st.Text(0);
      label = st.Text(1);
    }
    VAULTP11_ASSIGN_OR_RETURN(auto hidden, impl_->DeletedPurgeAfter(vault, label));
    if (hidden) return Err(CKR_OBJECT_HANDLE_INVALID, "object {} belongs to a deleted item", id);
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->BumpRevision());
    VAULTP11_RETURN_IF_ERROR(impl_->Tombstone(vault, {id}, rev, /*keep_rows=*/false));
    if (label.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(auto left, impl_->ItemRows(vault, label));
    return left.empty() ? impl_->ForgetItem(vault, label) : OkStatus();
  });
}

Result<std::vector<ObjectRecord>> Store::LoadVault(const std::string& vault) {
  return ChangedSince(vault, std::numeric_limits<int64_t>::min());
}

Result<SecureBytes> Store::LoadSecret(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string vault;
  Bytes sealed;
  bool has_secret = false;
  {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                              impl_->Prepare(std::string("SELECT vault, secret FROM objects WHERE id = ?") +
                                             impl_->live_filter));
    Stmt st(s);
    st.Bind(1, id);
    int rc = st.Step();
    if (rc == SQLITE_DONE)
      return Err(CKR_OBJECT_HANDLE_INVALID, "no object with id {} in {}", id, path_);
    if (rc != SQLITE_ROW) return impl_->Fail(rc, "reading an object's secret");
    vault = st.Text(0);
    has_secret = !st.IsNull(1);
    if (has_secret) sealed = st.Blob(1);
  }
  if (!has_secret) return SecureBytes();  // public object: nothing stored
  VAULTP11_ASSIGN_OR_RETURN(const SecureBytes* data_key, impl_->DataKey(vault));
  std::string aad = ObjectAad(vault, id);
  auto plain = ossl::OpenAesGcm(*data_key, sealed, AsBytes(aad));
  if (!plain.ok())
    return Err(CKR_DEVICE_ERROR,
               "secret of object {} in {} failed authentication (tampered database)", id, path_);
  return std::move(plain).value();
}

Result<int64_t> Store::Revision() {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->QueryInt("SELECT value FROM meta WHERE key = 'revision'", "reading the revision");
}

Result<std::vector<ObjectRecord>> Store::ChangedSince(const std::string& vault, int64_t since) {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->ReadObjects(vault, "revision > ?2", [&](Stmt& st) { st.Bind(2, since); }, true, "reading objects");
}

Result<std::vector<ObjectRecord>> Store::LoadByLabel(const std::string& vault, const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->ReadObjects(vault, "label = ?2", [&](Stmt& st) { st.Bind(2, label); }, true,
                            "reading objects by label");
}

Result<std::vector<ObjectRecord>> Store::LoadById(const std::string& vault, const Bytes& ck_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->ReadObjects(vault, "ck_id = ?2", [&](Stmt& st) { st.BindBlob(2, ck_id); }, true,
                            "reading objects by CKA_ID");
}

Result<std::vector<int64_t>> Store::DeletedSince(const std::string& vault, int64_t since) {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(
      sqlite3_stmt * s,
      impl_->Prepare("SELECT id FROM tombstones WHERE vault = ? AND revision > ? ORDER BY id"));
  Stmt st(s);
  st.Bind(1, vault);
  st.Bind(2, since);
  std::vector<int64_t> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.Int(0));
  if (rc != SQLITE_DONE) return impl_->Fail(rc, "reading deletions");
  return out;
}

Result<bool> Store::ExternalChange() {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(int64_t v,
                            impl_->QueryInt("PRAGMA data_version", "reading the data version"));
  bool changed = v != last_data_version_;
  last_data_version_ = v;
  return changed;
}

Result<std::vector<std::string>> Store::Vaults() {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                            impl_->Prepare("SELECT name FROM vaults ORDER BY name"));
  Stmt st(s);
  std::vector<std::string> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.Text(0));
  if (rc != SQLITE_DONE) return impl_->Fail(rc, "listing vaults");
  return out;
}

Result<std::string> Store::DeploymentId() {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->EnsureDeploymentId(read_only_);
}

Result<bool> Store::UseJti(std::string_view issuer_and_jti, int64_t expires_unix,
                           int64_t now_unix) {
  if (issuer_and_jti.empty() || issuer_and_jti.size() > kMaxJtiBytes)
    return Err(CKR_ARGUMENTS_BAD, "JWT id of {} bytes (must be 1 to {})", issuer_and_jti.size(),
               kMaxJtiBytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_)
    return Err(CKR_TOKEN_WRITE_PROTECTED,
               "cannot record a one-time JWT id: database {} is read-only", path_);
  bool fresh = false;
  VAULTP11_RETURN_IF_ERROR(impl_->Transaction("recording a JWT id", [&]() -> Status {
    {
      VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                                impl_->Prepare("DELETE FROM used_jtis WHERE expires < ?"));
      Stmt st(s);
      st.Bind(1, now_unix);
      int rc = st.Step();
      if (rc != SQLITE_DONE) return impl_->Fail(rc, "purging expired JWT ids");
    }
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s,
        impl_->Prepare("INSERT OR IGNORE INTO used_jtis(value, expires) VALUES(?, ?)"));
    Stmt st(s);
    st.Bind(1, issuer_and_jti);
    st.Bind(2, expires_unix);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "recording a JWT id");
    fresh = sqlite3_changes(db_) == 1;
    return OkStatus();
  }));
  return fresh;
}

Result<LoginFailures> Store::GetLoginFailures(std::string_view principal) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) {
    // A read-only store made by an older version has no table: nothing was ever recorded.
    VAULTP11_ASSIGN_OR_RETURN(bool have, impl_->HasAuthSchema());
    if (!have) return LoginFailures{};
  }
  return impl_->ReadLoginFailures(principal);
}

Result<LoginFailures> Store::RecordLoginFailure(std::string_view principal, int64_t now_unix,
                                                int64_t lock_after, int64_t lock_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) {
    LoginFailures old;
    VAULTP11_ASSIGN_OR_RETURN(bool have, impl_->HasAuthSchema());
    if (have) {
      VAULTP11_ASSIGN_OR_RETURN(old, impl_->ReadLoginFailures(principal));
    }
    return NextLoginFailures(old, now_unix, lock_after, lock_seconds);
  }
  LoginFailures next;
  VAULTP11_RETURN_IF_ERROR(impl_->Transaction("recording a failed login", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(LoginFailures old, impl_->ReadLoginFailures(principal));
    next = NextLoginFailures(old, now_unix, lock_after, lock_seconds);
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s,
        impl_->Prepare(
            "INSERT INTO login_failures(principal, failures, last_failure, locked_until) "
            "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(principal) DO UPDATE SET "
            "failures = ?2, last_failure = ?3, locked_until = ?4"));
    Stmt st(s);
    st.Bind(1, principal);
    st.Bind(2, next.failures);
    st.Bind(3, next.last_failure);
    st.Bind(4, next.locked_until);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "recording a failed login");
    // Counts not locked and a day old are forgotten (C_Login counts names that are no
    // principal too, so guessing names cannot grow the table without bound).
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * p, impl_->Prepare("DELETE FROM login_failures WHERE last_failure < ?1 "
                                                               "AND locked_until <= ?2 AND principal != ?3"));
    Stmt prune(p);
    prune.Bind(1, now_unix - 86400);
    prune.Bind(2, now_unix);
    prune.Bind(3, principal);
    rc = prune.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "forgetting old failed logins");
    return OkStatus();
  }));
  return next;
}

Status Store::ResetLoginFailures(std::string_view principal) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return OkStatus();  // nothing can have been recorded by this process
  // Reading first keeps the common case (no failures recorded) free of a write transaction.
  VAULTP11_ASSIGN_OR_RETURN(LoginFailures now, impl_->ReadLoginFailures(principal));
  if (now == LoginFailures{}) return OkStatus();
  return impl_->Transaction("clearing failed logins", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                              impl_->Prepare("DELETE FROM login_failures WHERE principal = ?"));
    Stmt st(s);
    st.Bind(1, principal);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "clearing failed logins");
    return OkStatus();
  });
}

Status Store::ForgiveLoginFailure(std::string_view principal) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return OkStatus();
  return impl_->Transaction("forgiving a failed login", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s,
        impl_->Prepare("UPDATE login_failures SET failures = max(failures - 1, 0) WHERE principal = ?"));
    Stmt st(s);
    st.Bind(1, principal);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "forgiving a failed login");
    return OkStatus();
  });
}

// ---- Audit anchors ---------------------------------------------------------------------------

namespace {

// Its own table, created by the first anchor (a read-only store, or one no writer anchored
// yet, simply has none).
constexpr const char* kAuditAnchorsSql = R"sql(
CREATE TABLE IF NOT EXISTS audit_anchors(
  sink TEXT PRIMARY KEY,
  gen_time INTEGER NOT NULL,
  gen_n INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  hash TEXT NOT NULL,
  mac TEXT NOT NULL);
)sql";
constexpr char kAuditAnchorMacContext[] = "vaultp11 audit anchor v1\n";

bool IsHexHash(std::string_view s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// Hex HMAC-SHA256 over the position and the sink (last: the numbers and the hex hash hold no
// newline, so the message is unambiguous); "" when HMAC fails (never equal to a stored MAC).
std::string AuditAnchorMac(const SecureBytes& key, const std::string& sink, const Store::AuditAnchor& a) {
  const std::string msg = fmt::format("{}{}\n{}\n{}\n{}\n{}", kAuditAnchorMacContext, a.gen_time, a.gen_n, a.seq,
                                      a.hash, sink);
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t n = 0;
  if (EVP_Q_mac(ossl::LibCtx(), "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, sizeof(mac), &n) == nullptr)
    return "";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (size_t i = 0; i < n; ++i) {
    hex += kHex[mac[i] >> 4];
    hex += kHex[mac[i] & 0xf];
  }
  OPENSSL_cleanse(mac, sizeof(mac));
  return hex;
}

}  // namespace

Status Store::AdvanceAuditAnchor(const std::string& sink, const AuditAnchor& anchor) {
  if (!IsHexHash(anchor.hash) || anchor.gen_time < 0 || anchor.gen_n < 0 || anchor.seq < 0)
    return Err(CKR_ARGUMENTS_BAD, "audit anchor for {}: not a chain position", sink);
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_)
    return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot record the audit anchor of {}: database {} is read-only", sink,
               path_);
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, store::DeriveKey(master_key_, "audit-anchor"));
  const std::string mac = AuditAnchorMac(key, sink, anchor);
  if (mac.empty()) return Err(CKR_FUNCTION_FAILED, "audit anchor for {}: cannot compute its MAC", sink);
  return impl_->Transaction("recording an audit anchor", [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(impl_->Exec(kAuditAnchorsSql, "creating the audit anchors"));
    // Only forwards: a writer that sealed an older position (another process got further
    // meanwhile) leaves the row alone.
    VAULTP11_ASSIGN_OR_RETURN(
        sqlite3_stmt * s,
        impl_->Prepare("INSERT INTO audit_anchors(sink, gen_time, gen_n, seq, hash, mac) VALUES(?1, ?2, ?3, ?4, ?5, ?6) "
                       "ON CONFLICT(sink) DO UPDATE SET gen_time = excluded.gen_time, gen_n = excluded.gen_n, "
                       "seq = excluded.seq, hash = excluded.hash, mac = excluded.mac "
                       "WHERE (excluded.gen_time, excluded.gen_n, excluded.seq) > "
                       "(audit_anchors.gen_time, audit_anchors.gen_n, audit_anchors.seq)"));
    Stmt st(s);
    st.Bind(1, sink);
    st.Bind(2, anchor.gen_time);
    st.Bind(3, anchor.gen_n);
    st.Bind(4, anchor.seq);
    st.Bind(5, anchor.hash);
    st.Bind(6, mac);
    int rc = st.Step();
    if (rc != SQLITE_DONE) return impl_->Fail(rc, "recording an audit anchor");
    return OkStatus();
  });
}

Result<std::optional<Store::AuditAnchor>> Store::GetAuditAnchor(const std::string& sink) {
  std::lock_guard<std::mutex> lock(mu_);
  VAULTP11_ASSIGN_OR_RETURN(
      int64_t have, impl_->QueryInt("SELECT count(*) FROM sqlite_master WHERE name = 'audit_anchors'",
                                    "looking for audit anchors"));
  if (have == 0) return std::optional<AuditAnchor>();
  VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s,
                            impl_->Prepare("SELECT gen_time, gen_n, seq, hash, mac FROM audit_anchors WHERE sink = ?"));
  Stmt st(s);
  st.Bind(1, sink);
  int rc = st.Step();
  if (rc == SQLITE_DONE) return std::optional<AuditAnchor>();
  if (rc != SQLITE_ROW) return impl_->Fail(rc, "reading an audit anchor");
  AuditAnchor a{st.Int(0), st.Int(1), st.Int(2), st.Text(3)};
  const std::string stored = st.Text(4);
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, store::DeriveKey(master_key_, "audit-anchor"));
  const std::string expect = AuditAnchorMac(key, sink, a);
  if (expect.empty() || !ConstantTimeEqual(AsBytes(expect), AsBytes(stored)))
    return Err(CKR_DEVICE_ERROR,
               "the audit anchor of {} in {} does not match its MAC (the row was edited, or written under another "
               "master key)",
               sink, path_);
  return std::optional<AuditAnchor>(std::move(a));
}

}  // namespace vaultp11::store
