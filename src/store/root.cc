// The store's root key (see store.h "The root key"): where it comes from (the master key file
// or the HSM seal), its check value and generation, and reseal.
//
// Meta rows (text values on both backends):
//   root_generation      bumped by every reseal (absent: 0)
//   root_check           hex HMAC-SHA256, keyed with DeriveKey(root, "root-check"), of
//                        "vaultp11 root key check v1\n<generation>": tells a right root key from
//                        a wrong one without unwrapping anything
//   root_sealed          sealed store only: hex of HsmSeal::Seal(root, RootAad(generation))
//   root_seal_label      sealed store only: the seal key's label (for messages)
//   previous_root:<gen>  hex AES-GCM of the root key of generation <gen> under the current root
//                        (DeriveKeys: backups written before a reseal)
//
// Other processes that still hold the previous root key after a reseal (module instances
// started before it) keep working on everything they already unwrapped: the data keys do not
// change. Before they unwrap a vault's key, wrap a new one (EnsureVault, inside its write
// transaction) or MAC or check an audit anchor, they compare root_generation with theirs
// (SyncRoot): when it moved they read the new root key from their configured source (the seal,
// or a master key file rewritten by a reseal to the file); when they cannot (a process
// configured with the old file only), those calls fail with CKR_DEVICE_ERROR asking for a
// restart, so nothing is ever wrapped or MACed under a stale root key. Keys derived once at
// start (the audit head key of the module's file sinks) stay the old ones until a restart.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "backend/ossl/ossl_backend.h"
#include "store/impl.h"
#include "store/seal.h"
#include "util/log.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

std::optional<Bytes> Unhex(std::string_view s) {
  if (s.size() % 2 != 0) return std::nullopt;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  Bytes out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = nib(s[2 * i]), lo = nib(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

std::string RootAad(int64_t generation) { return "vaultp11-root-key-v1:" + std::to_string(generation); }
std::string PreviousRootAad(int64_t generation) {
  return "vaultp11-previous-root-v1:" + std::to_string(generation);
}
constexpr std::string_view kPreviousPrefix = "previous_root:";

// The check value of `root` at `generation` ("" when HMAC fails: never equal to a stored one).
std::string RootCheck(const SecureBytes& root, int64_t generation) {
  auto key = DeriveKey(root, "root-check");
  if (!key.ok()) return "";
  const std::string msg = "vaultp11 root key check v1\n" + std::to_string(generation);
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t n = 0;
  if (EVP_Q_mac(ossl::LibCtx(), "HMAC", nullptr, "SHA256", nullptr, key->data(), key->size(),
                reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, sizeof(mac), &n) == nullptr)
    return "";
  std::string hex = HexOf(std::span<const uint8_t>(mac, n));
  OPENSSL_cleanse(mac, sizeof(mac));
  return hex;
}

bool CheckMatches(const SecureBytes& root, int64_t generation, const std::string& stored) {
  const std::string expect = RootCheck(root, generation);
  return !expect.empty() && expect.size() == stored.size() && ConstantTimeEqual(AsBytes(expect), AsBytes(stored));
}

// The root key rows as stored.
struct RootMeta {
  int64_t generation = 0;
  std::optional<std::string> check, sealed, label;
};

Result<RootMeta> ReadRootMeta(Db& db) {
  RootMeta m;
  VAULTP11_RETURN_IF_ERROR(
      db.Run("SELECT key, value FROM meta WHERE key IN ('root_generation', 'root_check', 'root_sealed', "
             "'root_seal_label')",
             {},
             [&](const Row& r) {
               const std::string k = r.Text(0);
               if (k == "root_generation") m.generation = r.Int(1);
               else if (k == "root_check") m.check = r.Text(1);
               else if (k == "root_sealed") m.sealed = r.Text(1);
               else m.label = r.Text(1);
             },
             "reading the root key's state")
          .status());
  return m;
}

Status PutMeta(Db& db, std::string_view key, std::string_view value) {
  return db
      .Run("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
           {key, value}, {}, "recording the root key's state")
      .status();
}

std::string FileSource(const std::string& path) { return "master key file " + path; }

// Unseals the root key of a sealed store with the configured seal.
Result<SecureBytes> UnsealRoot(const Options& o, const std::string& store, const RootMeta& m, std::string* source) {
  const std::string label = m.label.value_or("");
  if (!o.sealed())
    return Err(CKR_DEVICE_ERROR,
               "the root key of {} is sealed by the HSM key {} (store.seal), and this config has no store.seal: "
               "configure store.seal with that key's hsm and key_label",
               store, QuotePrintable(label));
  if (label != o.seal.key_label)
    return Err(CKR_DEVICE_ERROR, "the root key of {} is sealed by the HSM key {}, but store.seal.key_label is {}",
               store, QuotePrintable(label), QuotePrintable(o.seal.key_label));
  auto blob = Unhex(*m.sealed);
  if (!blob) return Err(CKR_DEVICE_ERROR, "the sealed root key of {} is malformed (tampered database)", store);
  VAULTP11_ASSIGN_OR_RETURN(auto seal, HsmSeal::Open(o.seal, /*create=*/false));
  auto root = seal->Unseal(*blob, RootAad(m.generation));
  if (!root.ok()) return Err(root.rv(), "{}: {}", store, root.error().message);
  if (root->size() != kKeyLen) return Err(CKR_DEVICE_ERROR, "the sealed root key of {} is malformed", store);
  *source = seal->description();
  return root;
}

// Writes `key` to a new file `path` (mode 0600, synced, with its directory).
Status WriteNewKeyFile(const std::string& path, const SecureBytes& key) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return Err(CKR_DEVICE_ERROR, "cannot create {}: {}", path, strerror(errno));
  size_t done = 0;
  int e = 0;
  if (fchmod(fd, 0600) != 0) e = errno;
  while (e == 0 && done < key.size()) {
    ssize_t n = write(fd, key.data() + done, key.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) e = n < 0 ? errno : EIO;
    else done += static_cast<size_t>(n);
  }
  if (e == 0 && fsync(fd) != 0) e = errno;
  close(fd);
  if (e != 0) {
    unlink(path.c_str());
    return Err(CKR_DEVICE_ERROR, "cannot write {}: {}", path, strerror(e));
  }
  SyncParentDir(path);
  return OkStatus();
}

}  // namespace

Status Store::Impl::LoadRoot(bool create_if_missing, int64_t vaults) {
  const bool read_only = db->read_only();
  VAULTP11_ASSIGN_OR_RETURN(RootMeta m, ReadRootMeta(*db));
  root_generation = m.generation;
  const bool has_root = m.sealed.has_value() || m.check.has_value() || vaults > 0;
  const std::string& key_path = options.master_key_file;
  if (m.sealed) {
    VAULTP11_ASSIGN_OR_RETURN(master_key, UnsealRoot(options, name(), m, &root_source));
    root_sealed = true;
    struct stat kst {};
    if (!key_path.empty() && stat(key_path.c_str(), &kst) == 0)
      log::Warning("{} is sealed ({}); master key file {} is not used (once no reseal is under way, remove it and "
                   "store.master_key_file)",
                   name(), root_source, key_path);
  } else if (!key_path.empty()) {
    // The master key: created on first use. Vaults are counted before the file is looked at: a
    // vault row is only ever written after its master key file exists, so a key missing while
    // vaults existed beforehand is lost, never just not yet written by a racing process.
    root_source = FileSource(key_path);
    struct stat kst {};
    if (stat(key_path.c_str(), &kst) == 0) {
      VAULTP11_ASSIGN_OR_RETURN(master_key, ReadMasterKey(key_path));
    } else if (errno != ENOENT) {
      return Err(CKR_DEVICE_ERROR, "cannot access master key file {}: {}", key_path, strerror(errno));
    } else {
      // Never invent a new key for a store whose vaults are wrapped under a lost one (or, on a
      // shared store, under the key file other hosts have), nor beside a configured seal.
      if (!create_if_missing || read_only || has_root || options.sealed())
        return Err(CKR_DEVICE_ERROR, "master key file {} of {} is missing{}", key_path, name(),
                   has_root ? " (its vaults' data keys are wrapped with it: copy it from a host that has it)"
                   : options.sealed() ? " (with store.seal configured, no master key file is created)"
                                      : "");
      VAULTP11_ASSIGN_OR_RETURN(master_key, CreateOrReadMasterKey(key_path));
    }
    if (options.sealed())
      log::Warning("{} is on {}; store.seal is configured too: run `vaultp11 store reseal --to seal` to move it",
                   name(), root_source);
  } else if (has_root) {
    return Err(CKR_DEVICE_ERROR,
               "the data keys of {} are wrapped with a master key file, and this config names none (only "
               "store.seal): to move the store to the seal, name both store.master_key_file and store.seal and run "
               "`vaultp11 store reseal --to seal`",
               name());
  } else {
    // A new store with a seal: a fresh root key, sealed. Racing openers agree on the first
    // one committed (the others unseal it).
    if (!create_if_missing || read_only)
      return Err(CKR_DEVICE_ERROR, "{} has no root key yet (run `vaultp11 init`)", name());
    bool created = false;
    auto seal = HsmSeal::Open(options.seal, options.create_seal_key, &created);
    if (!seal.ok()) return Err(seal.rv(), "{}: {}", name(), seal.error().message);
    if (created) log::Info("created the store's seal: {}", (*seal)->description());
    SecureBytes root(kKeyLen);
    VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(root));
    VAULTP11_ASSIGN_OR_RETURN(Bytes blob, (*seal)->Seal(root, RootAad(0)));
    const std::string check = RootCheck(root, 0);
    if (check.empty()) return Err(CKR_FUNCTION_FAILED, "cannot compute the root key's check value");
    VAULTP11_RETURN_IF_ERROR(db->Transaction("sealing a new root key", [&]() -> Status {
      VAULTP11_ASSIGN_OR_RETURN(RootMeta now, ReadRootMeta(*db));
      VAULTP11_ASSIGN_OR_RETURN(int64_t n, QueryInt(*db, "SELECT count(*) FROM vaults", {}, "counting vaults"));
      if (now.sealed || now.check || n > 0) return OkStatus();  // another process was first
      VAULTP11_RETURN_IF_ERROR(PutMeta(*db, "root_sealed", HexOf(blob)));
      VAULTP11_RETURN_IF_ERROR(PutMeta(*db, "root_seal_label", options.seal.key_label));
      return PutMeta(*db, "root_check", check);
    }));
    VAULTP11_ASSIGN_OR_RETURN(m, ReadRootMeta(*db));
    if (!m.sealed)
      return Err(CKR_DEVICE_ERROR,
                 "another host put {} on a master key file while this one sealed it; name that file in "
                 "store.master_key_file",
                 name());
    root_generation = m.generation;
    VAULTP11_ASSIGN_OR_RETURN(master_key, UnsealRoot(options, name(), m, &root_source));
    root_sealed = true;
  }
  if (m.check) {
    root_verified = CheckMatches(master_key, m.generation, *m.check);
    if (!root_verified)
      log::Error("the root key from {} is not the one the data keys of {} are wrapped with", root_source, name());
  }
  return OkStatus();
}

Status Store::Impl::RecordRootCheck() {
  if (root_verified || db->read_only()) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(RootMeta m, ReadRootMeta(*db));
  if (m.check) {  // written meanwhile by another process, or seen by LoadRoot not to match
    root_verified = CheckMatches(master_key, m.generation, *m.check);
    return OkStatus();
  }
  // A store written before the check value: this root key must open every vault's data key.
  std::vector<std::pair<std::string, Bytes>> vaults;
  VAULTP11_RETURN_IF_ERROR(db->Run("SELECT name, wrapped_data_key FROM vaults", {},
                                   [&](const Row& r) { vaults.emplace_back(r.Text(0), r.Blob(1)); }, "listing vaults")
                               .status());
  for (const auto& [vault, wrapped] : vaults)
    if (!Unwrap(vault, wrapped).ok()) return OkStatus();  // not verified; reported at first use
  const std::string check = RootCheck(master_key, m.generation);
  if (check.empty()) return Err(CKR_FUNCTION_FAILED, "cannot compute the root key's check value");
  VAULTP11_RETURN_IF_ERROR(db->Transaction("recording the root key's check value", [&]() -> Status {
    return db
        ->Run("INSERT INTO meta(key, value) VALUES('root_check', ?) ON CONFLICT(key) DO NOTHING", {check}, {},
              "recording the root key's check value")
        .status();
  }));
  // Another host with another key file may have been first (a new shared store).
  VAULTP11_ASSIGN_OR_RETURN(m, ReadRootMeta(*db));
  root_verified = m.check && CheckMatches(master_key, m.generation, *m.check);
  if (!root_verified)
    log::Error("the root key from {} is not the one the data keys of {} are wrapped with", root_source, name());
  return OkStatus();
}

Status Store::Impl::SyncRoot() {
  VAULTP11_ASSIGN_OR_RETURN(RootMeta m, ReadRootMeta(*db));
  if (m.generation == root_generation) return OkStatus();
  // Resealed by another process since this one read its root key.
  auto fail = [&](const std::string& why) {
    return Err(CKR_DEVICE_ERROR,
               "the root key of {} was moved by `vaultp11 store reseal` (generation {} -> {}) and this process "
               "cannot follow: {}; restart it with the store's current config",
               name(), root_generation, m.generation, why);
  };
  SecureBytes root;
  std::string source;
  if (m.sealed) {
    auto r = UnsealRoot(options, name(), m, &source);
    if (!r.ok()) return fail(r.error().message);
    root = std::move(r).value();
  } else if (!options.master_key_file.empty()) {
    auto r = ReadMasterKey(options.master_key_file);
    if (!r.ok()) return fail(r.error().message);
    root = std::move(r).value();
    source = FileSource(options.master_key_file);
  } else {
    return fail("the store is on a master key file and this config names none");
  }
  if (!m.check || !CheckMatches(root, m.generation, *m.check))
    return fail("the root key from " + source + " does not match the store's check value");
  master_key = std::move(root);
  root_source = std::move(source);
  root_generation = m.generation;
  root_sealed = m.sealed.has_value();
  root_verified = true;
  log::Info("{}: root key generation {} from {}", name(), root_generation, root_source);
  return OkStatus();
}

Status Store::Impl::RequireVerifiedRoot(std::string_view what) {
  VAULTP11_RETURN_IF_ERROR(SyncRoot());
  if (root_verified) return OkStatus();
  return Err(CKR_DEVICE_ERROR,
             "cannot {}: the root key from {} is not the one the data keys of {} are wrapped with{}", what,
             root_source, name(),
             root_sealed ? "" : " (a wrong master key file: use the file every other host of the store has)");
}

// ---- Store ----------------------------------------------------------------------------------

Status Store::CheckRootKey() {
  std::lock_guard<std::mutex> lock(mu_);
  Impl& impl = *impl_;
  VAULTP11_RETURN_IF_ERROR(impl.SyncRoot());
  if (impl.root_verified) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(RootMeta m, ReadRootMeta(*impl.db));
  if (!m.check) {
    // No check value (a read-only store written before it): every vault's data key must open.
    std::vector<std::pair<std::string, Bytes>> vaults;
    VAULTP11_RETURN_IF_ERROR(impl.db->Run("SELECT name, wrapped_data_key FROM vaults", {},
                                          [&](const Row& r) { vaults.emplace_back(r.Text(0), r.Blob(1)); },
                                          "listing vaults")
                                 .status());
    bool all = true;
    for (const auto& [vault, wrapped] : vaults) all = all && impl.Unwrap(vault, wrapped).ok();
    if (all) return OkStatus();
  }
  return Err(CKR_DEVICE_ERROR,
             "the root key from {} does not open the data keys of {}{}", impl.root_source, impl.name(),
             impl.root_sealed ? " (tampered database)"
                              : ": it is not the master key file this store's vaults are wrapped with (use the file "
                                "every other host of the store has; nothing was created)");
}

Store::RootInfo Store::Root() const {
  std::lock_guard<std::mutex> lock(mu_);
  return RootInfo{impl_->root_sealed, impl_->root_generation, impl_->root_source};
}

Result<Store::ResealResult> Store::Reseal(SealTarget to) {
  std::lock_guard<std::mutex> lock(mu_);
  Impl& impl = *impl_;
  Db& db = *impl.db;
  const Options& o = impl.options;
  const bool to_seal = to == SealTarget::kSeal;
  if (!db.Writable()) return impl.ReadOnly("reseal the root key");
  VAULTP11_RETURN_IF_ERROR(impl.SyncRoot());
  if (to_seal) {
    if (!o.sealed()) return Err(CKR_ARGUMENTS_BAD, "reseal --to seal needs store.seal in the config");
    if (impl.root_sealed)
      return Err(CKR_ARGUMENTS_BAD, "{} is sealed already ({}); nothing changed", impl.name(), impl.root_source);
  } else {
    if (o.master_key_file.empty())
      return Err(CKR_ARGUMENTS_BAD, "reseal --to file needs store.master_key_file in the config (the file to write)");
    if (!impl.root_sealed)
      return Err(CKR_ARGUMENTS_BAD, "{} is on {} already; nothing changed", impl.name(), impl.root_source);
  }
  if (!impl.root_verified)
    return Err(CKR_DEVICE_ERROR, "the root key from {} does not open the data keys of {}; nothing changed",
               impl.root_source, impl.name());

  const int64_t gen = impl.root_generation + 1;
  SecureBytes root(kKeyLen);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(root));
  const std::string check = RootCheck(root, gen);
  if (check.empty()) return Err(CKR_FUNCTION_FAILED, "cannot compute the root key's check value");
  std::unique_ptr<HsmSeal> seal;
  std::string source;
  std::string sealed_hex;
  std::string tmp;  // kFile: the new key, before it is renamed onto the master key file
  if (to_seal) {
    bool created = false;
    auto s = HsmSeal::Open(o.seal, /*create=*/true, &created);
    if (!s.ok()) return Err(s.rv(), "{}; nothing changed", s.error().message);
    seal = std::move(s).value();
    if (created) log::Info("created the store's seal: {}", seal->description());
    VAULTP11_ASSIGN_OR_RETURN(Bytes blob, seal->Seal(root, RootAad(gen)));
    // Proof that the HSM opens what it sealed, before anything depends on it.
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes back, seal->Unseal(blob, RootAad(gen)));
    if (!(back.size() == root.size() && ConstantTimeEqual(back, root)))
      return Err(CKR_DEVICE_ERROR, "{} did not give back what it sealed; nothing changed", seal->description());
    sealed_hex = HexOf(blob);
    source = seal->description();
  } else {
    // A leftover of this generation is from an attempt that never committed (a committed one
    // bumped the generation): safe to replace.
    tmp = o.master_key_file + ".reseal-" + std::to_string(gen);
    unlink(tmp.c_str());
    VAULTP11_RETURN_IF_ERROR(WriteNewKeyFile(tmp, root));
    source = FileSource(o.master_key_file);
  }

  ResealResult out;
  out.generation = gen;
  out.source = source;
  Status st = db.Transaction("resealing the root key", [&]() -> Status {
    out = ResealResult{gen, 0, 0, 0, source};
    VAULTP11_ASSIGN_OR_RETURN(RootMeta m, ReadRootMeta(db));
    if (m.generation != impl.root_generation)
      return Err(CKR_FUNCTION_REJECTED, "another process resealed {} meanwhile; nothing changed", impl.name());
    // Every vault's data key, re-wrapped with the same AAD (v2, or v1 of a vault an earlier
    // version wrote and no writable open upgraded yet).
    std::vector<std::pair<std::string, Bytes>> vaults;
    VAULTP11_RETURN_IF_ERROR(db.Run("SELECT name, wrapped_data_key FROM vaults ORDER BY name", {},
                                    [&](const Row& r) { vaults.emplace_back(r.Text(0), r.Blob(1)); },
                                    "listing vaults")
                                 .status());
    for (const auto& [vault, wrapped] : vaults) {
      std::string aad = DataKeyAad(vault);
      auto key = ossl::OpenAesGcm(impl.master_key, wrapped, AsBytes(aad));
      if (!key.ok()) {
        aad = LegacyDataKeyAad(vault);
        key = ossl::OpenAesGcm(impl.master_key, wrapped, AsBytes(aad));
      }
      if (!key.ok())
        return Err(CKR_DEVICE_ERROR,
                   "the data key of vault '{}' in {} does not open with {} (tampered database); nothing changed",
                   vault, impl.name(), impl.root_source);
      VAULTP11_ASSIGN_OR_RETURN(Bytes rewrapped, ossl::SealAesGcm(root, *key, AsBytes(aad)));
      VAULTP11_RETURN_IF_ERROR(db.Run("UPDATE vaults SET wrapped_data_key = ? WHERE name = ?",
                                      {Blob(rewrapped), vault}, {}, "re-wrapping a vault's data key")
                                   .status());
      ++out.vaults;
    }
    // Every audit anchor, checked under the old key and MACed under the new one.
    VAULTP11_ASSIGN_OR_RETURN(bool have_anchors, db.HasTable("audit_anchors"));
    if (have_anchors) {
      VAULTP11_ASSIGN_OR_RETURN(SecureBytes old_key, store::DeriveKey(impl.master_key, "audit-anchor"));
      VAULTP11_ASSIGN_OR_RETURN(SecureBytes new_key, store::DeriveKey(root, "audit-anchor"));
      std::vector<std::pair<std::string, std::pair<AuditAnchor, std::string>>> rows;
      VAULTP11_RETURN_IF_ERROR(
          db.Run("SELECT sink, gen_time, gen_n, seq, hash, mac FROM audit_anchors ORDER BY sink", {},
                 [&](const Row& r) {
                   rows.push_back({r.Text(0), {AuditAnchor{r.Int(1), r.Int(2), r.Int(3), r.Text(4)}, r.Text(5)}});
                 },
                 "reading the audit anchors")
              .status());
      for (const auto& [sink, row] : rows) {
        const std::string expect = AuditAnchorMac(old_key, sink, row.first);
        if (expect.empty() || !ConstantTimeEqual(AsBytes(expect), AsBytes(row.second)))
          return Err(CKR_DEVICE_ERROR,
                     "the audit anchor of {} in {} does not match its MAC (the row was edited); nothing changed "
                     "(delete the row to re-anchor that sink, then reseal)",
                     sink, impl.name());
        const std::string mac = AuditAnchorMac(new_key, sink, row.first);
        if (mac.empty()) return Err(CKR_FUNCTION_FAILED, "cannot compute an audit anchor's MAC");
        VAULTP11_RETURN_IF_ERROR(db.Run("UPDATE audit_anchors SET mac = ? WHERE sink = ?", {mac, sink}, {},
                                        "re-MACing an audit anchor")
                                     .status());
        ++out.anchors;
      }
    }
    // The earlier root keys, re-wrapped, and the one replaced now.
    std::vector<std::pair<int64_t, std::string>> previous;
    VAULTP11_RETURN_IF_ERROR(db.Run("SELECT key, value FROM meta WHERE key LIKE 'previous_root:%'", {},
                                    [&](const Row& r) {
                                      const std::string k = r.Text(0);
                                      previous.emplace_back(
                                          std::strtoll(k.c_str() + kPreviousPrefix.size(), nullptr, 10), r.Text(1));
                                    },
                                    "reading the earlier root keys")
                                 .status());
    for (const auto& [g, hex] : previous) {
      auto blob = Unhex(hex);
      auto old = blob ? ossl::OpenAesGcm(impl.master_key, *blob, AsBytes(PreviousRootAad(g)))
                      : Result<SecureBytes>(Err(CKR_DEVICE_ERROR, "malformed"));
      if (!old.ok())
        return Err(CKR_DEVICE_ERROR, "the root key of generation {} kept in {} does not open (tampered database); "
                   "nothing changed", g, impl.name());
      VAULTP11_ASSIGN_OR_RETURN(Bytes w, ossl::SealAesGcm(root, *old, AsBytes(PreviousRootAad(g))));
      VAULTP11_RETURN_IF_ERROR(PutMeta(db, std::string(kPreviousPrefix) + std::to_string(g), HexOf(w)));
      ++out.previous;
    }
    VAULTP11_ASSIGN_OR_RETURN(Bytes w, ossl::SealAesGcm(root, impl.master_key, AsBytes(PreviousRootAad(m.generation))));
    VAULTP11_RETURN_IF_ERROR(PutMeta(db, std::string(kPreviousPrefix) + std::to_string(m.generation), HexOf(w)));
    ++out.previous;
    // The new root key's state.
    VAULTP11_RETURN_IF_ERROR(PutMeta(db, "root_generation", std::to_string(gen)));
    VAULTP11_RETURN_IF_ERROR(PutMeta(db, "root_check", check));
    if (to_seal) {
      VAULTP11_RETURN_IF_ERROR(PutMeta(db, "root_sealed", sealed_hex));
      VAULTP11_RETURN_IF_ERROR(PutMeta(db, "root_seal_label", o.seal.key_label));
    } else {
      VAULTP11_RETURN_IF_ERROR(db.Run("DELETE FROM meta WHERE key IN ('root_sealed', 'root_seal_label')", {}, {},
                                      "unsealing the root key")
                                   .status());
    }
    return db.BumpRevision().status();
  });
  if (!st.ok()) {
    if (!tmp.empty()) unlink(tmp.c_str());
    return st.error();
  }
  impl.master_key = std::move(root);
  impl.root_generation = gen;
  impl.root_sealed = to_seal;
  impl.root_source = source;
  impl.root_verified = true;
  if (!tmp.empty() && rename(tmp.c_str(), o.master_key_file.c_str()) != 0)
    return Err(CKR_DEVICE_ERROR,
               "{} is now on a new root key, kept in {}; moving it onto {} failed ({}): move it there by hand "
               "(mode 0600)",
               impl.name(), tmp, o.master_key_file, strerror(errno));
  log::Info("{}: root key resealed to {} (generation {})", impl.name(), source, gen);
  return out;
}

Result<std::vector<SecureBytes>> Store::DeriveKeys(std::string_view purpose) {
  std::lock_guard<std::mutex> lock(mu_);
  Impl& impl = *impl_;
  VAULTP11_RETURN_IF_ERROR(impl.SyncRoot());
  std::vector<SecureBytes> out;
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes current, store::DeriveKey(impl.master_key, purpose));
  out.push_back(std::move(current));
  std::vector<std::pair<int64_t, std::string>> previous;
  VAULTP11_RETURN_IF_ERROR(impl.db->Run("SELECT key, value FROM meta WHERE key LIKE 'previous_root:%'", {},
                                        [&](const Row& r) {
                                          const std::string k = r.Text(0);
                                          previous.emplace_back(
                                              std::strtoll(k.c_str() + kPreviousPrefix.size(), nullptr, 10),
                                              r.Text(1));
                                        },
                                        "reading the earlier root keys")
                               .status());
  std::sort(previous.begin(), previous.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [g, hex] : previous) {
    auto blob = Unhex(hex);
    if (!blob) continue;
    auto old = ossl::OpenAesGcm(impl.master_key, *blob, AsBytes(PreviousRootAad(g)));
    if (!old.ok()) {
      log::Warning("{}: the root key of generation {} does not open (tampered database); skipped", impl.name(), g);
      continue;
    }
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes k, store::DeriveKey(*old, purpose));
    out.push_back(std::move(k));
  }
  return out;
}

}  // namespace vaultp11::store
