// The store's keys: the master key file, each vault's data key (wrapped by the master key),
// and the record MACs that authenticate every object row (see impl.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "backend/ossl/ossl_backend.h"
#include "store/impl.h"
#include "util/log.h"
#include "util/read_all.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

using EvpMacPtr = std::unique_ptr<EVP_MAC, OsslDeleter<&EVP_MAC_free>>;

constexpr size_t kMacLen = 32;

// The key of the vault's record MACs, derived from its data key.
constexpr std::string_view kRecordMacPurpose = "record-mac";

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

}  // namespace

std::string ObjectAad(const std::string& vault, int64_t id) {
  return "vaultp11-object:" + vault + ":" + std::to_string(id);
}

// A data key wrapped with the v2 AAD says "every row of this vault carries a MAC": the fact is
// sealed by the master key, so nobody without it can turn it off (a database edit, a reset
// schema number or a dropped column only makes the rows fail). A key wrapped with the v1 AAD
// is a vault written by an earlier version (no MACs yet); the first writable open upgrades it.
std::string DataKeyAad(const std::string& vault) { return "vaultp11-data-key-v2:" + vault; }
std::string LegacyDataKeyAad(const std::string& vault) { return "vaultp11-data-key:" + vault; }

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

// HMAC-SHA256 over every column of an object row that the module acts on, each length-prefixed
// (so no two rows encode alike): vault and row id (a row moved to another id or vault fails),
// class, label, CKA_ID, the serialized attributes (CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_PRIVATE,
// a certificate's value, ... all of them), whether a secret is stored, version and creation
// time. The revision is left out: it only drives change detection. The secret itself is sealed
// with AES-GCM bound to vault and id (ObjectAad) and never changes for a row.
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
void SyncParentDir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
}

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
    SyncParentDir(path);  // make the new name durable too
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

Result<SecureBytes> DeriveKeyFromOptions(const Options& options, std::string_view purpose) {
  // Through the store when it exists, so that a key is only ever derived from the root key
  // the store's data keys are wrapped with (a stale master key file left after a reseal, or
  // another host's, would sign audit heads nobody can verify).
  auto st = Store::Open(options, /*create_if_missing=*/false);
  if (!st.ok()) {
    if (!options.sealed() && st.rv() == CKR_TOKEN_NOT_PRESENT)  // no store yet: the file alone
      return DeriveKeyFromMasterKeyFile(options.master_key_file, purpose);
    return st.error();
  }
  VAULTP11_RETURN_IF_ERROR((*st)->CheckRootKey());
  return (*st)->DeriveKey(purpose);
}

// ---- Store::Impl ----------------------------------------------------------------------------

// The vault's unwrapped data key (cached after first use), with its record MAC key and whether
// its rows carry MACs.
Result<const Store::Impl::VaultKeys*> Store::Impl::Keys(const std::string& vault) {
  auto it = vault_keys.find(vault);
  if (it != vault_keys.end()) return &it->second;
  VAULTP11_RETURN_IF_ERROR(SyncRoot());  // a reseal by another process: its new root key
  Bytes wrapped;
  VAULTP11_ASSIGN_OR_RETURN(bool found, RunOne(*db, "SELECT wrapped_data_key FROM vaults WHERE name = ?", {vault},
                                               [&](const Row& r) { wrapped = r.Blob(0); },
                                               "reading a vault's data key"));
  if (!found)
    return Err(CKR_GENERAL_ERROR, "vault '{}' does not exist in {} (EnsureVault first)", vault, name());
  VAULTP11_ASSIGN_OR_RETURN(VaultKeys keys, Unwrap(vault, wrapped));
  if (!keys.authenticated)
    log::Warning("vault '{}' in {} was written by an earlier version: its records are not authenticated until "
                 "the database is opened writable once",
                 vault, name());
  auto [pos, inserted] = vault_keys.emplace(vault, std::move(keys));
  return &pos->second;
}

Result<const SecureBytes*> Store::Impl::DataKey(const std::string& vault) {
  VAULTP11_ASSIGN_OR_RETURN(const VaultKeys* k, Keys(vault));
  return &k->data;
}

// Opens a wrapped data key: the v2 AAD (rows authenticated), else the v1 one (a vault of an
// earlier version).
Result<Store::Impl::VaultKeys> Store::Impl::Unwrap(const std::string& vault, const Bytes& wrapped) {
  VaultKeys keys;
  auto key = ossl::OpenAesGcm(master_key, wrapped, AsBytes(DataKeyAad(vault)));
  keys.authenticated = key.ok();
  if (!key.ok()) key = ossl::OpenAesGcm(master_key, wrapped, AsBytes(LegacyDataKeyAad(vault)));
  if (!key.ok() || key->size() != kKeyLen)
    return Err(CKR_DEVICE_ERROR,
               "data key of vault '{}' in {} failed authentication (a wrong root key: {}; or a tampered database)",
               vault, name(), root_source);
  keys.data = std::move(key).value();
  VAULTP11_RETURN_IF_ERROR(SetMacKey(keys));
  return keys;
}

Status Store::Impl::SetMacKey(VaultKeys& keys) {
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes mac_key, store::DeriveKey(keys.data, kRecordMacPurpose));
  VAULTP11_ASSIGN_OR_RETURN(keys.mac, NewRecordMacContext(mac_key));
  return OkStatus();
}

// Checks a row read with object_columns (`mac` its stored MAC) before anything uses it. A row
// of an authenticated vault whose MAC is missing or wrong (an attribute flipped, a blob swapped
// with another row's, a row moved to another id or vault) is CKR_DEVICE_ERROR, logged with
// vault and row: the caller gets none of the rows it asked for.
Status Store::Impl::CheckRow(const ObjectRecord& r, const Bytes& mac) {
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

Error Store::Impl::RowFailed(const ObjectRecord& r) {
  log::Error("object {} of vault '{}' in {} failed authentication: the record was changed outside vaultp11 "
             "(tampered database); refusing it",
             r.id, r.vault, name());
  return Err(CKR_DEVICE_ERROR, "object {} of vault '{}' in {} failed authentication (tampered database)", r.id,
             r.vault, name());
}

// Inside a transaction: stores the MAC of row `r` (as it is now in the table).
Status Store::Impl::WriteMac(const ObjectRecord& r) {
  VAULTP11_ASSIGN_OR_RETURN(const VaultKeys* keys, Keys(r.vault));
  if (!keys->authenticated) return OkStatus();  // an earlier version's vault on a read-only store
  VAULTP11_ASSIGN_OR_RETURN(Bytes mac, RecordMac(keys->mac.get(), r));
  return db->Run("UPDATE objects SET mac = ? WHERE id = ?", {Blob(mac), r.id}, {}, "authenticating an object")
      .status();
}

// On a writable open, once the master key is known: upgrades every vault written by an earlier
// version (AuthenticateVault) and caches the keys of the others. A data key that does not open
// (a wrong master key file) is left for its first use to report.
Status Store::Impl::AuthenticateVaults() {
  std::vector<std::pair<std::string, Bytes>> vaults;
  VAULTP11_RETURN_IF_ERROR(db->Run("SELECT name, wrapped_data_key FROM vaults ORDER BY name", {},
                                   [&](const Row& r) { vaults.emplace_back(r.Text(0), r.Blob(1)); }, "listing vaults")
                               .status());
  for (const auto& [vault, wrapped] : vaults) {
    auto keys = Unwrap(vault, wrapped);
    if (!keys.ok()) continue;
    if (keys->authenticated)
      vault_keys.emplace(vault, std::move(keys).value());
    else
      VAULTP11_RETURN_IF_ERROR(AuthenticateVault(vault));
  }
  return OkStatus();
}

// Upgrades a vault written by an earlier version (v1-wrapped data key, rows without MACs), in
// one transaction: a fresh data key, every secret opened with the old key and sealed with the
// new one, every row MACed, the new key wrapped with the v2 AAD. A secret that does not open
// fails the upgrade (CKR_DEVICE_ERROR, nothing changed): so an old wrapped key put back into an
// upgraded database (whose secrets are sealed under the new key) cannot get its rows re-MACed.
// Another process that upgraded first: nothing to do.
Status Store::Impl::AuthenticateVault(const std::string& vault) {
  return db->Transaction("authenticating a vault's records", [&]() -> Status {
    Bytes wrapped;
    VAULTP11_ASSIGN_OR_RETURN(bool found, RunOne(*db, "SELECT wrapped_data_key FROM vaults WHERE name = ?", {vault},
                                                 [&](const Row& r) { wrapped = r.Blob(0); },
                                                 "reading a vault's data key"));
    if (!found) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(VaultKeys old_keys, Unwrap(vault, wrapped));
    if (old_keys.authenticated) return OkStatus();
    VaultKeys keys;
    keys.authenticated = true;
    keys.data = SecureBytes(kKeyLen);
    VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(keys.data));
    VAULTP11_RETURN_IF_ERROR(SetMacKey(keys));
    std::vector<std::pair<ObjectRecord, Bytes>> rows;  // each with its sealed secret
    VAULTP11_RETURN_IF_ERROR(db->Run(std::string("SELECT ") + object_columns +
                                         ", secret FROM objects WHERE vault = ? ORDER BY id",
                                     {vault},
                                     [&](const Row& r) {
                                       rows.emplace_back(ReadObject(r), r.IsNull(11) ? Bytes() : r.Blob(11));
                                     },
                                     "reading a vault's records")
                                 .status());
    for (auto& [r, sealed] : rows) {
      if (r.has_secret) {
        const std::string aad = ObjectAad(vault, r.id);
        auto plain = ossl::OpenAesGcm(old_keys.data, sealed, AsBytes(aad));
        if (!plain.ok()) {
          log::Error("vault '{}' in {}: the secret of object {} failed authentication; its records cannot be "
                     "authenticated (tampered database)",
                     vault, name(), r.id);
          return Err(CKR_DEVICE_ERROR,
                     "vault '{}' in {}: the secret of object {} failed authentication while authenticating the "
                     "vault's records (tampered database)",
                     vault, name(), r.id);
        }
        VAULTP11_ASSIGN_OR_RETURN(sealed, ossl::SealAesGcm(keys.data, *plain, AsBytes(aad)));
      }
      VAULTP11_ASSIGN_OR_RETURN(Bytes mac, RecordMac(keys.mac.get(), r));
      VAULTP11_RETURN_IF_ERROR(
          (r.has_secret ? db->Run("UPDATE objects SET secret = ?, mac = ? WHERE id = ?", {Blob(sealed), Blob(mac), r.id},
                                  {}, "authenticating a vault's records")
                        : db->Run("UPDATE objects SET mac = ? WHERE id = ?", {Blob(mac), r.id}, {},
                                  "authenticating a vault's records"))
              .status());
    }
    VAULTP11_ASSIGN_OR_RETURN(Bytes rewrapped, ossl::SealAesGcm(master_key, keys.data, AsBytes(DataKeyAad(vault))));
    VAULTP11_RETURN_IF_ERROR(db->Run("UPDATE vaults SET wrapped_data_key = ? WHERE name = ?",
                                     {Blob(rewrapped), vault}, {}, "authenticating a vault's records")
                                 .status());
    vault_keys.erase(vault);
    log::Info("vault '{}' in {}: {} records authenticated (upgrade from an earlier version)", vault, name(),
              rows.size());
    return OkStatus();
  });
}

// Inside a transaction: `data_key` wrapped under the store's current root key (file or seal),
// which must be the verified one (RequireVerifiedRoot; a reseal holds the same lock).
Result<Bytes> Store::Impl::WrapDataKey(const std::string& vault, const SecureBytes& data_key) {
  VAULTP11_RETURN_IF_ERROR(RequireVerifiedRoot(fmt::format("wrap the data key of vault '{}'", vault)));
  return ossl::SealAesGcm(master_key, data_key, AsBytes(DataKeyAad(vault)));
}

// The key of the audit anchors' MACs, from the current root key.
Result<SecureBytes> Store::Impl::AuditAnchorKey() {
  VAULTP11_RETURN_IF_ERROR(SyncRoot());
  return store::DeriveKey(master_key, "audit-anchor");
}

// ---- Store ----------------------------------------------------------------------------------

Status Store::EnsureVault(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  VAULTP11_ASSIGN_OR_RETURN(bool exists, RunOne(db, "SELECT 1 FROM vaults WHERE name = ?", {vault}, {},
                                                "looking up a vault"));
  if (exists) return OkStatus();
  if (!db.Writable()) return impl_->ReadOnly(fmt::format("create vault '{}'", vault));
  SecureBytes data_key(kKeyLen);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(data_key));
  // When processes race, the first key wins and every process reads it back (the data key
  // cache is filled from the database, never from the key generated here). The key is wrapped
  // inside the transaction, under the root key checked there: a reseal by another process
  // (which holds the same write lock) can never leave a vault wrapped under the old one.
  return db.Transaction("creating a vault", [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(impl_->RequireVerifiedRoot(fmt::format("create vault '{}'", vault)));
    VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped,
                              ossl::SealAesGcm(impl_->master_key, data_key, AsBytes(DataKeyAad(vault))));
    VAULTP11_ASSIGN_OR_RETURN(int64_t added,
                              db.Run("INSERT INTO vaults(name, wrapped_data_key) VALUES(?, ?) ON CONFLICT(name) DO NOTHING",
                                     {vault, Blob(wrapped)}, {}, "creating a vault"));
    if (added == 0) return OkStatus();  // another process won: nothing changed
    return db.BumpRevision().status();
  });
}

Result<SecureBytes> Store::DeriveKey(std::string_view purpose) const {
  std::lock_guard<std::mutex> lock(mu_);  // the root key changes when another process reseals
  return store::DeriveKey(impl_->master_key, purpose);
}

}  // namespace vaultp11::store
