// `vaultp11 backup` and `vaultp11 restore`: an HSM key of a managed HSM pool (or of a premium
// vault whose HSM holds a security domain), wrapped under the security domain, with the metadata the store keeps for it, in one JSON file authenticated by
// an HMAC-SHA256 whose key is itself wrapped under the domain. Only HSMs holding that domain
// can unwrap the key or check the MAC, so a backup is restored only into a pool that shares
// the domain; a modified file is refused before anything changes.
#include <fmt/format.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/p11/inner_ops.h"
#include "backend/pool/pool.h"
#include "cli/audit_trail.h"
#include "cli/commands.h"
#include "cli/items.h"
#include "core/provider.h"
#include "model/attributes.h"
#include "store/store.h"
#include "util/strings.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::cli {
namespace {

using Json = nlohmann::json;  // std::map keys: dump() is canonical for the MAC

constexpr char kFormat[] = "vaultp11-key-backup";
constexpr int kFormatVersion = 1;
constexpr size_t kMaxBackupBytes = 4 << 20;
constexpr size_t kMacKeyBytes = 32;

std::string Hex(std::span<const uint8_t> b) {
  std::string out;
  for (uint8_t c : b) out += fmt::format("{:02x}", c);
  return out;
}

Result<Bytes> Unhex(const Json& j, const char* what) {
  if (!j.is_string()) return Err(CKR_DATA_INVALID, "backup: {} is not a hex string", what);
  const std::string& s = j.get_ref<const std::string&>();
  if (s.size() % 2 != 0) return Err(CKR_DATA_INVALID, "backup: {} is not a hex string", what);
  Bytes out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int hi = nib(s[2 * i]), lo = nib(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return Err(CKR_DATA_INVALID, "backup: {} is not a hex string", what);
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

// obj[key], or null when obj is not an object or lacks it (never throws).
const Json& Field(const Json& obj, const char* key) {
  static const Json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

std::string Text(const Json& j) { return j.is_string() ? j.get<std::string>() : std::string(); }

Result<CK_ULONG> Ulong(const Json& j, const char* what) {
  if (!j.is_number_unsigned()) return Err(CKR_DATA_INVALID, "backup: {} is not a number", what);
  return j.get<CK_ULONG>();
}

// Where keys are backed up from or restored to: a pool, or a premium vault's HSM seen as a
// pool of one member (its keys carry the vault's name in the store).
struct Place {
  std::string name;
  std::shared_ptr<pool::HsmPool> pool;
};

Result<Place> Resolve(const config::Config& cfg, const std::string& name) {
  VAULTP11_ASSIGN_OR_RETURN(auto hsms, HsmPoolFor(cfg, name));
  if (!hsms)
    return Err(CKR_ARGUMENTS_BAD,
               "vault {} has no HSM: backup and restore cover HSM keys (a vault's software keys live in the store: "
               "back up the store and its master key file)",
               name);
  return Place{name, std::move(hsms)};
}

// The pool's domain check value, as every member in service reports it (they must agree).
Result<Bytes> DomainCheckValue(const pool::HsmPool& p) {
  Bytes kcv;
  for (size_t i = 0; i < p.size(); ++i) {
    auto t = p.Token(i);
    if (!t) continue;
    VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE sd, pool::FindDomainKey(*t));
    if (sd == CK_INVALID_HANDLE)
      return Err(CKR_FUNCTION_FAILED, "{}: hsm {} holds no security domain (run `vaultp11 pool init {}`)",
                 p.name(), p.member_name(i), p.name());
    CK_ATTRIBUTE_TYPE want[] = {CKA_CHECK_VALUE};
    VAULTP11_ASSIGN_OR_RETURN(auto v, t->GetAttributes(sd, want));
    Bytes got(v[CKA_CHECK_VALUE].value.begin(), v[CKA_CHECK_VALUE].value.end());
    if (!v[CKA_CHECK_VALUE].ok() || got.empty())
      return Err(CKR_DEVICE_ERROR, "{}: hsm {} did not give its domain's check value", p.name(), p.member_name(i));
    if (!kcv.empty() && got != kcv)
      return Err(CKR_FUNCTION_FAILED, "{}: its members hold different security domains", p.name());
    kcv = std::move(got);
  }
  if (kcv.empty()) return Err(CKR_DEVICE_ERROR, "{}: no member is available", p.name());
  return kcv;
}

// A member in service, and its security-domain key: where the MAC key is made or unwrapped.
struct DomainMember {
  std::shared_ptr<p11::InnerToken> token;
  CK_OBJECT_HANDLE domain = CK_INVALID_HANDLE;
};
Result<DomainMember> AnyMember(const pool::HsmPool& p) {
  for (size_t i = 0; i < p.size(); ++i) {
    auto t = p.Token(i);
    if (!t) continue;
    VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE sd, pool::FindDomainKey(*t));
    return DomainMember{std::move(t), sd};
  }
  return Err(CKR_DEVICE_ERROR, "{}: no member is available", p.name());
}

// HMAC-SHA256 of `data` in the HSM with the MAC key `k`.
Result<Bytes> Mac(const std::shared_ptr<p11::InnerToken>& t, CK_OBJECT_HANDLE k, const std::string& data) {
  CK_MECHANISM m{CKM_SHA256_HMAC, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(auto op, p11::NewInnerSignOp(t, k, m, 32));
  return op->Sign(std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

// The MAC key as a session object of the member's login session; destroyed with the guard.
struct MacKey {
  std::shared_ptr<p11::InnerToken> token;
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  explicit MacKey(std::shared_ptr<p11::InnerToken> t) : token(std::move(t)) {}
  MacKey(const MacKey&) = delete;
  MacKey& operator=(const MacKey&) = delete;
  ~MacKey() {
    if (token && handle != CK_INVALID_HANDLE) (void)token->DestroyObject(handle);
  }
};

void MacKeyTemplate(p11::AttrTemplate& t) {
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET).Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true).Bool(CKA_EXTRACTABLE, true).Bool(CKA_WRAP_WITH_TRUSTED, true)
      .Bool(CKA_SIGN, true).Bool(CKA_VERIFY, true);
}

Json WrappedKeyJson(const pool::WrappedKey& wk) {
  Json usage = Json::array(), pub = Json::array();
  for (const auto& [type, on] : wk.usage) usage.push_back({type, on});
  for (const auto& [type, value] : wk.public_values) pub.push_back({type, Hex(value)});
  return {{"class", wk.object_class}, {"key_type", wk.key_type}, {"inner_id", Hex(wk.inner_id)},
          {"usage", usage},           {"public", pub},            {"wrapped", Hex(wk.wrapped)}};
}

Result<pool::WrappedKey> WrappedKeyFromJson(const Json& j) {
  if (!j.is_object()) return Err(CKR_DATA_INVALID, "backup: a version's key is not an object");
  pool::WrappedKey wk;
  VAULTP11_ASSIGN_OR_RETURN(wk.object_class, Ulong(Field(j, "class"), "key class"));
  VAULTP11_ASSIGN_OR_RETURN(wk.key_type, Ulong(Field(j, "key_type"), "key type"));
  VAULTP11_ASSIGN_OR_RETURN(wk.inner_id, Unhex(Field(j, "inner_id"), "inner id"));
  VAULTP11_ASSIGN_OR_RETURN(wk.wrapped, Unhex(Field(j, "wrapped"), "wrapped key"));
  const Json& usage = Field(j, "usage");
  const Json& pub = Field(j, "public");
  if (!usage.is_array() || !pub.is_array()) return Err(CKR_DATA_INVALID, "backup: bad key attributes");
  for (const Json& u : usage) {
    if (!u.is_array() || u.size() != 2 || !u[1].is_boolean()) return Err(CKR_DATA_INVALID, "backup: bad key usage");
    VAULTP11_ASSIGN_OR_RETURN(CK_ULONG type, Ulong(u[0], "usage type"));
    wk.usage.emplace_back(type, u[1].get<bool>());
  }
  for (const Json& v : pub) {
    if (!v.is_array() || v.size() != 2) return Err(CKR_DATA_INVALID, "backup: bad public key value");
    VAULTP11_ASSIGN_OR_RETURN(CK_ULONG type, Ulong(v[0], "public value type"));
    VAULTP11_ASSIGN_OR_RETURN(Bytes value, Unhex(v[1], "public value"));
    wk.public_values.emplace_back(type, std::move(value));
  }
  return wk;
}

std::string NowUtc() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Result<std::string> ReadBackupFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Err(CKR_ARGUMENTS_BAD, "cannot read {}", path);
  std::string text;
  text.resize(kMaxBackupBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxBackupBytes) return Err(CKR_DATA_LEN_RANGE, "{} is larger than a key backup can be", path);
  return text;
}

Status Backup(const config::Config& cfg, const std::string& where, const std::string& key, const std::string& file,
              Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(Place place, Resolve(cfg, where));
  const Place* pc = &place;
  // 1. The key's records in the store: one secret key, or a private key and its public key.
  VAULTP11_ASSIGN_OR_RETURN(auto st, store::Store::Open(cfg.store.path, cfg.store.master_key_file, false));
  VAULTP11_ASSIGN_OR_RETURN(auto records, st->LoadVault(pc->name));
  std::vector<store::ObjectRecord> mine;
  const store::ObjectRecord* keyrec = nullptr;
  for (const auto& r : records)
    if (r.label == key && (r.object_class == CKO_PRIVATE_KEY || r.object_class == CKO_SECRET_KEY ||
                           r.object_class == CKO_PUBLIC_KEY))
      mine.push_back(r);
  for (const auto& r : mine) {
    if (r.object_class == CKO_PUBLIC_KEY) continue;
    if (keyrec != nullptr)
      return Err(CKR_FUNCTION_FAILED, "{}: two keys are named {}", pc->name, QuotePrintable(key));
    keyrec = &r;
  }
  if (keyrec == nullptr) return Err(CKR_ARGUMENTS_BAD, "{} has no key named {}", pc->name, QuotePrintable(key));
  VAULTP11_ASSIGN_OR_RETURN(auto attrs, model::AttributeMap::Deserialize(keyrec->attributes));
  const Bytes* inner_id = attrs.Get(CKA_VAULTP11_HSM_KEY_ID);
  if (inner_id == nullptr || inner_id->empty())
    return Err(CKR_FUNCTION_FAILED, "{}: key {} has no HSM reference", pc->name, QuotePrintable(key));
  Json objects = Json::array();
  for (const auto& r : mine) {
    if (r.object_class == CKO_PUBLIC_KEY && r.ck_id != keyrec->ck_id) continue;
    objects.push_back({{"class", r.object_class}, {"label", Hex(std::span(reinterpret_cast<const uint8_t*>(r.label.data()), r.label.size()))},
                       {"id", Hex(r.ck_id)}, {"attributes", Hex(r.attributes)}});
  }
  // 2. The key wrapped under the domain, and a MAC key made and wrapped there too.
  const auto& pool = place.pool;
  VAULTP11_ASSIGN_OR_RETURN(Bytes kcv, DomainCheckValue(*pool));
  pool::WrappedKey wk;
  {
    Status last = Err(CKR_DEVICE_ERROR, "no member is available");
    bool done = false;
    for (size_t i = 0; i < pool->size() && !done; ++i) {
      if (!pool->Token(i)) continue;
      auto r = pool->Export(i, keyrec->object_class, *inner_id);
      if (r.ok()) {
        wk = std::move(r).value();
        done = true;
      } else {
        last = r.status();
      }
    }
    if (!done && last.rv() == CKR_KEY_UNEXTRACTABLE)
      return Err(CKR_KEY_UNEXTRACTABLE,
                 "{}: key {} was made before its HSM held a security domain, so it cannot be wrapped under one",
                 pc->name, QuotePrintable(key));
    if (!done) return Err(last.rv(), "{}: exporting key {} failed: {}", pc->name, QuotePrintable(key), last.error().message);
  }
  VAULTP11_ASSIGN_OR_RETURN(DomainMember member, AnyMember(*pool));
  const auto& mt = member.token;
  const CK_OBJECT_HANDLE sd = member.domain;
  MacKey mac_key(mt);
  {
    p11::AttrTemplate t;
    MacKeyTemplate(t);
    t.Ulong(CKA_VALUE_LEN, kMacKeyBytes);
    CK_MECHANISM gen{CKM_GENERIC_SECRET_KEY_GEN, nullptr, 0};
    VAULTP11_ASSIGN_OR_RETURN(mac_key.handle, mt->GenerateKey(gen, t));
  }
  CK_MECHANISM kwp{pool::kReplicationMechanism, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped_mac, mt->WrapKey(kwp, sd, mac_key.handle));
  Json doc = {{"format", kFormat},
              {"format_version", kFormatVersion},
              {"source", pc->name},
              {"name", key},
              {"created", NowUtc()},
              {"security_domain", Hex(kcv)},
              {"mac_key", Hex(wrapped_mac)},
              {"versions", Json::array({{{"key", WrappedKeyJson(wk)}, {"objects", objects}}})}};
  VAULTP11_ASSIGN_OR_RETURN(Bytes mac, Mac(mt, mac_key.handle, doc.dump()));
  doc["mac"] = Hex(mac);
  VAULTP11_RETURN_IF_ERROR(WriteNewFile(file, doc.dump(1) + "\n"));
  io.out << fmt::format("{}: key {} backed up to {} (1 version, security domain {})\n", pc->name,
                        QuotePrintable(key), file, Hex(kcv));
  return OkStatus();
}

// `name_out`: the key's name, once the file is known to be authentic.
Status Restore(const config::Config& cfg, const std::string& where, const std::string& file, Io& io,
               std::string& name_out) {
  VAULTP11_ASSIGN_OR_RETURN(Place place, Resolve(cfg, where));
  const Place* pc = &place;
  // 1. Parse and check the shape; nothing is trusted until the MAC is.
  VAULTP11_ASSIGN_OR_RETURN(std::string text, ReadBackupFile(file));
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || Text(Field(doc, "format")) != kFormat)
    return Err(CKR_DATA_INVALID, "{} is not a vaultp11 key backup", file);
  if (Field(doc, "format_version") != kFormatVersion)
    return Err(CKR_DATA_INVALID, "{}: backup format version {} is not supported", file, Field(doc, "format_version").dump());
  VAULTP11_ASSIGN_OR_RETURN(Bytes mac, Unhex(Field(doc, "mac"), "mac"));
  VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped_mac, Unhex(Field(doc, "mac_key"), "mac key"));
  VAULTP11_ASSIGN_OR_RETURN(Bytes blob_kcv, Unhex(Field(doc, "security_domain"), "security domain"));
  doc.erase("mac");
  const std::string signed_text = doc.dump();
  // 2. The target must hold the backup's security domain.
  const auto& pool = place.pool;
  VAULTP11_ASSIGN_OR_RETURN(Bytes kcv, DomainCheckValue(*pool));
  if (kcv != blob_kcv)
    return Err(CKR_WRAPPED_KEY_INVALID,
               "{} was made under another security domain (check value {}) than pool {}'s ({}); nothing changed", file,
               Hex(blob_kcv), pc->name, Hex(kcv));
  // 3. The MAC, checked in the HSM with the MAC key unwrapped under the domain.
  VAULTP11_ASSIGN_OR_RETURN(DomainMember member, AnyMember(*pool));
  const auto& mt = member.token;
  const CK_OBJECT_HANDLE sd = member.domain;
  MacKey mac_key(mt);
  {
    p11::AttrTemplate t;
    MacKeyTemplate(t);
    CK_MECHANISM kwp{pool::kReplicationMechanism, nullptr, 0};
    auto h = mt->UnwrapKey(kwp, sd, wrapped_mac, t);
    if (!h.ok())
      return Err(CKR_WRAPPED_KEY_INVALID, "{}: its MAC key does not unwrap under pool {}'s security domain ({}); nothing "
                 "changed", file, pc->name, p11::RvName(h.rv()));
    mac_key.handle = h.value();
  }
  VAULTP11_ASSIGN_OR_RETURN(Bytes expect, Mac(mt, mac_key.handle, signed_text));
  if (expect.size() != mac.size() || !ConstantTimeEqual(expect, mac))
    return Err(CKR_SIGNATURE_INVALID, "{} was modified after it was written (its MAC does not match); nothing changed",
               file);
  // 4. Authentic: read the content.
  const std::string name = Text(Field(doc, "name"));
  name_out = name;
  const Json& versions = Field(doc, "versions");
  if (!versions.is_array() || versions.size() != 1) return Err(CKR_DATA_INVALID, "{}: expected one key version", file);
  VAULTP11_ASSIGN_OR_RETURN(pool::WrappedKey wk, WrappedKeyFromJson(Field(versions[0], "key")));
  std::vector<store::ObjectRecord> records;
  const Json& objects = Field(versions[0], "objects");
  if (!objects.is_array()) return Err(CKR_DATA_INVALID, "{}: no objects", file);
  for (const Json& o : objects) {
    store::ObjectRecord r;
    r.vault = pc->name;
    VAULTP11_ASSIGN_OR_RETURN(r.object_class, Ulong(Field(o, "class"), "object class"));
    VAULTP11_ASSIGN_OR_RETURN(Bytes label, Unhex(Field(o, "label"), "label"));
    r.label.assign(label.begin(), label.end());
    VAULTP11_ASSIGN_OR_RETURN(r.ck_id, Unhex(Field(o, "id"), "id"));
    VAULTP11_ASSIGN_OR_RETURN(r.attributes, Unhex(Field(o, "attributes"), "attributes"));
    VAULTP11_RETURN_IF_ERROR(model::AttributeMap::Deserialize(r.attributes).status());
    records.push_back(std::move(r));
  }
  if (records.empty()) return Err(CKR_DATA_INVALID, "{}: no objects", file);
  // 5. Nothing may clash: the name in the pool, the key's copies on its members.
  VAULTP11_ASSIGN_OR_RETURN(auto st, store::Store::Open(cfg.store.path, cfg.store.master_key_file, true));
  VAULTP11_RETURN_IF_ERROR(st->EnsureVault(pc->name));
  VAULTP11_ASSIGN_OR_RETURN(auto existing, st->LoadVault(pc->name));
  for (const auto& r : existing)
    if (r.label == name && r.object_class == wk.object_class)
      return Err(CKR_FUNCTION_FAILED, "{} already has a key named {}; nothing changed", pc->name, QuotePrintable(name));
  for (size_t i = 0; i < pool->size(); ++i) {
    if (!pool->Token(i)) continue;
    VAULTP11_ASSIGN_OR_RETURN(bool has, pool->Holds(i, wk.object_class, wk.inner_id));
    if (has)
      return Err(CKR_FUNCTION_FAILED, "{}: hsm {} already holds this key; nothing changed", pc->name,
                 pool->member_name(i));
  }
  // 6. The key onto every member in service (at least the quorum), then the store.
  size_t copies = 0;
  std::string failures;
  for (size_t i = 0; i < pool->size(); ++i) {
    if (!pool->Token(i)) continue;
    Status s = pool->Import(i, wk);
    if (s.ok()) {
      ++copies;
    } else {
      failures += fmt::format("; hsm {}: {}", pool->member_name(i), s.error().message);
    }
  }
  if (copies < pool->Quorum()) {
    pool->DestroyEverywhere(wk.inner_id);
    return Err(CKR_DEVICE_ERROR, "{}: the key reached {} members, the quorum is {}{}; nothing changed", pc->name,
               copies, pool->Quorum(), failures);
  }
  std::vector<int64_t> inserted;
  for (auto& r : records) {
    auto ins = st->Insert(r, SecureBytes());
    if (!ins.ok()) {
      for (int64_t id : inserted) (void)st->Delete(id);
      pool->DestroyEverywhere(wk.inner_id);
      return Err(ins.rv(), "{}: writing the store failed: {}; nothing changed", pc->name, ins.error().message);
    }
    inserted.push_back(ins->id);
  }
  io.out << fmt::format("{}: key {} restored from {} onto {} HSM{}\n", pc->name, QuotePrintable(name), file,
                        copies, copies == 1 ? "" : "s");
  return OkStatus();
}

// The pool or vault `where` names, as the config spells it (else as given).
std::string PlaceName(const config::Config& cfg, const std::string& where) {
  if (const config::ManagedHsmPoolConfig* pc = cfg.FindPool(where)) return pc->name;
  if (const config::VaultConfig* vc = cfg.FindVault(where)) return vc->name;
  return where;
}

}  // namespace

Status WriteNewFile(const std::string& path, std::string_view text) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Err(CKR_FUNCTION_FAILED, "cannot create {}: {}", path, std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      unlink(path.c_str());
      return Err(CKR_FUNCTION_FAILED, "writing {} failed", path);
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    unlink(path.c_str());
    return Err(CKR_FUNCTION_FAILED, "writing {} failed", path);
  }
  return OkStatus();
}


Status BackupCommand(const config::Config& cfg, const std::string& where, const std::string& key,
                     const std::string& file, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  Status st = Backup(cfg, where, key, file, io);
  audit.Record("KeyBackup", st, {{"file", AbsolutePath(file)}}, key, PlaceName(cfg, where));
  return st;
}

Status RestoreCommand(const config::Config& cfg, const std::string& where, const std::string& file, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string name;
  Status st = Restore(cfg, where, file, io, name);
  audit.Record("KeyRestore", st, {{"file", AbsolutePath(file)}}, name, PlaceName(cfg, where));
  return st;
}

}  // namespace vaultp11::cli
