// `vaultp11 backup` and `vaultp11 restore`: one item of a vault or pool (key, secret or
// certificate) with all its versions, in one file: a clear header (format, kind, name, where it
// came from, the deployment and, for HSM keys, the security domain) and the content sealed with
// AES-256-GCM under a key derived from the store's master key, the header as associated data.
// The content holds every row of the item as the store keeps it, the secrets of software
// objects, and each HSM key wrapped under the security domain of the HSMs holding it. So a
// backup is restored only into the deployment that made it (same store master key), HSM keys
// only into HSMs that share the domain, and a file changed in any byte is refused before
// anything changes.
#include <fmt/format.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_ops.h"
#include "backend/pool/pool.h"
#include "cli/audit_trail.h"
#include "cli/commands.h"
#include "cli/items.h"
#include "model/attributes.h"
#include "store/store.h"
#include "util/strings.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::cli {
namespace {

using Json = nlohmann::json;  // std::map keys: dump() is canonical, so the header is the same bytes when read back

constexpr char kFormat[] = "vaultp11-backup";
constexpr int kFormatVersion = 2;
constexpr size_t kMaxBackupBytes = 16 << 20;

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

Result<Bytes> Unhex(const Json& j, const char* what) {
  auto b = j.is_string() ? ParseHex(j.get_ref<const std::string&>()) : std::nullopt;
  if (!b) return Err(CKR_DATA_INVALID, "backup: {} is not a hex string", what);
  return std::move(*b);
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

Json WrappedKeyJson(const pool::WrappedKey& wk) {
  Json usage = Json::array(), pub = Json::array();
  for (const auto& [type, on] : wk.usage) usage.push_back({type, on});
  for (const auto& [type, value] : wk.public_values) pub.push_back({type, HexOf(value)});
  return {{"class", wk.object_class}, {"key_type", wk.key_type}, {"inner_id", HexOf(wk.inner_id)},
          {"usage", usage},           {"public", pub},            {"wrapped", HexOf(wk.wrapped)}};
}

Result<pool::WrappedKey> WrappedKeyFromJson(const Json& j) {
  if (!j.is_object()) return Err(CKR_DATA_INVALID, "backup: an HSM key is not an object");
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

Result<std::string> ReadBackupFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Err(CKR_ARGUMENTS_BAD, "cannot read {}", path);
  std::string text;
  text.resize(kMaxBackupBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxBackupBytes) return Err(CKR_DATA_LEN_RANGE, "{} is larger than a backup can be", path);
  return text;
}

// The row's HSM key reference, when it is a private or secret key kept in an HSM.
std::optional<Bytes> HsmKeyOf(const store::ObjectRecord& r) {
  if (r.object_class != CKO_PRIVATE_KEY && r.object_class != CKO_SECRET_KEY) return std::nullopt;
  auto attrs = model::AttributeMap::Deserialize(r.attributes);
  if (!attrs.ok() || attrs->GetUlong(CKA_VAULTP11_PROTECTION) != VAULTP11_PROTECTION_HSM) return std::nullopt;
  const Bytes* id = attrs->Get(CKA_VAULTP11_HSM_KEY_ID);
  if (id == nullptr || id->empty()) return std::nullopt;
  return *id;
}

// The pool or vault `where` names, as the config spells it (else as given).
std::string PlaceName(const config::Config& cfg, const std::string& where) {
  if (const config::ManagedHsmPoolConfig* pc = cfg.FindPool(where)) return pc->name;
  if (const config::VaultConfig* vc = cfg.FindVault(where)) return vc->name;
  return where;
}

Status CheckPlace(const config::Config& cfg, const std::string& where) {
  if (cfg.FindVault(where) == nullptr && cfg.FindPool(where) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault or managed HSM pool named {} in {}", QuotePrintable(where), cfg.source);
  return OkStatus();
}

// The HSMs of `where`: a pool, or a premium vault's HSM seen as a pool of one member.
Result<std::shared_ptr<pool::HsmPool>> HsmsOf(const config::Config& cfg, const std::string& where, const std::string& why) {
  VAULTP11_ASSIGN_OR_RETURN(auto hsms, HsmPoolFor(cfg, where));
  if (!hsms) return Err(CKR_ARGUMENTS_BAD, "vault {} has no HSM: {}", where, why);
  return hsms;
}

std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string ToLower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void PutU32(SecureBytes& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

// What a backup's header says, and the item's kind as the audit names it.
struct Header {
  Json json;
  std::string kind = "Key", name;
};

// The file's item: its rows (vault unset), their secrets, its policy.
struct Content {
  std::vector<store::ObjectRecord> rows;
  std::vector<SecureBytes> secrets;
  std::vector<pool::WrappedKey> hsm_keys;
  std::string policy;
};

Status Backup(const config::Config& cfg, const std::string& where_in, const std::string& name, const std::string& file,
              Io& io, Header& h) {
  VAULTP11_RETURN_IF_ERROR(CheckPlace(cfg, where_in));
  const std::string where = PlaceName(cfg, where_in);
  VAULTP11_RETURN_IF_ERROR(CheckName(name));
  h.name = name;
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, where));
  // 1. The item's rows, oldest first, with their secrets.
  VAULTP11_ASSIGN_OR_RETURN(auto all, st->LoadVault(where));
  std::vector<store::ObjectRecord> rows;
  for (auto& r : all)
    if (r.label == name) rows.push_back(std::move(r));
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  if (rows.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(auto deleted, st->DeletedItems(where));
    for (const auto& d : deleted)
      if (d.name == name) {
        h.kind = KindOfRows(d.objects);
        return Err(CKR_ARGUMENTS_BAD, "{} of {} is deleted: recover it before a backup", QuotePrintable(name),
                   QuotePrintable(where));
      }
    return Err(CKR_ARGUMENTS_BAD, "{} has no item named {}", QuotePrintable(where), QuotePrintable(name));
  }
  h.kind = KindOfRows(rows);
  std::vector<SecureBytes> secrets;
  for (const auto& r : rows) {
    if (!r.has_secret) {
      secrets.emplace_back();
      continue;
    }
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes s, st->LoadSecret(r.id));
    secrets.push_back(std::move(s));
  }
  VAULTP11_ASSIGN_OR_RETURN(std::string policy, st->Policy(where, name));
  // 2. Its HSM keys, wrapped under the security domain by a member that holds them.
  std::shared_ptr<pool::HsmPool> hsms;
  Bytes kcv;
  Json objects = Json::array();
  std::set<std::string> versions;
  for (const auto& r : rows) {
    versions.insert(r.version);
    Json o = {{"class", r.object_class}, {"id", HexOf(r.ck_id)},           {"attributes", HexOf(r.attributes)},
              {"version", r.version},    {"created", r.created},           {"secret_bytes", 0}};
    const size_t i = &r - rows.data();
    o["secret_bytes"] = secrets[i].size();
    if (auto inner = HsmKeyOf(r)) {
      if (!hsms) {
        VAULTP11_ASSIGN_OR_RETURN(hsms, HsmsOf(cfg, where, "its HSM keys cannot be backed up"));
        VAULTP11_ASSIGN_OR_RETURN(kcv, DomainCheckValue(*hsms));
      }
      Status last = Err(CKR_DEVICE_ERROR, "no member is available");
      bool done = false;
      for (size_t m = 0; m < hsms->size() && !done; ++m) {
        if (!hsms->Token(m)) continue;
        auto wk = hsms->Export(m, r.object_class, *inner);
        if (wk.ok()) {
          o["hsm_key"] = WrappedKeyJson(*wk);
          done = true;
        } else {
          last = wk.status();
        }
      }
      if (!done && last.rv() == CKR_KEY_UNEXTRACTABLE)
        return Err(CKR_KEY_UNEXTRACTABLE,
                   "{}: key {} (version {}) was made before its HSM held a security domain, so it cannot be wrapped "
                   "under one",
                   where, QuotePrintable(name), r.version);
      if (!done)
        return Err(last.rv(), "{}: exporting key {} (version {}) failed: {}", where, QuotePrintable(name), r.version,
                   last.error().message);
    }
    objects.push_back(std::move(o));
  }
  // 3. The content, sealed under the deployment's backup key with the header as AAD.
  VAULTP11_ASSIGN_OR_RETURN(std::string deployment, st->DeploymentId());
  h.json = {{"format", kFormat},     {"format_version", kFormatVersion}, {"kind", h.kind},
            {"name", name},          {"source", where},                  {"created", UtcTimeString(time(nullptr))},
            {"deployment", deployment}, {"versions", versions.size()}};
  if (hsms) h.json["security_domain"] = HexOf(kcv);
  const std::string index = Json{{"objects", objects}, {"policy", policy}}.dump();
  SecureBytes plain;
  PutU32(plain, static_cast<uint32_t>(index.size()));
  plain.insert(plain.end(), index.begin(), index.end());
  for (const auto& s : secrets) plain.insert(plain.end(), s.begin(), s.end());
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, st->DeriveKey("backup"));
  const std::string aad = h.json.dump();
  VAULTP11_ASSIGN_OR_RETURN(Bytes sealed, ossl::SealAesGcm(key, plain, AsBytes(aad)));
  Json doc = h.json;
  doc["content"] = HexOf(sealed);
  VAULTP11_RETURN_IF_ERROR(WriteNewFile(file, doc.dump(1) + "\n"));
  io.out << fmt::format("{}: {} {} backed up to {} ({} version{}{})\n", where, h.kind, QuotePrintable(name), file,
                        versions.size(), versions.size() == 1 ? "" : "s",
                        hsms ? ", HSM keys under security domain " + HexOf(kcv) : std::string());
  return OkStatus();
}

// The content of a sealed backup, checked for shape.
Result<Content> ReadContent(const SecureBytes& plain, const std::string& file) {
  auto bad = [&]() { return Err(CKR_DATA_INVALID, "{}: its content is malformed", file); };
  if (plain.size() < 4) return bad();
  const size_t n = size_t{plain[0]} << 24 | size_t{plain[1]} << 16 | size_t{plain[2]} << 8 | plain[3];
  if (n > plain.size() - 4) return bad();
  Json index = Json::parse(plain.begin() + 4, plain.begin() + 4 + static_cast<std::ptrdiff_t>(n), nullptr, false);
  const Json& objects = Field(index, "objects");
  if (index.is_discarded() || !objects.is_array() || objects.empty() || !Field(index, "policy").is_string()) return bad();
  Content c;
  c.policy = Text(Field(index, "policy"));
  size_t at = 4 + n;
  for (const Json& o : objects) {
    store::ObjectRecord r;
    VAULTP11_ASSIGN_OR_RETURN(r.object_class, Ulong(Field(o, "class"), "object class"));
    VAULTP11_ASSIGN_OR_RETURN(r.ck_id, Unhex(Field(o, "id"), "id"));
    VAULTP11_ASSIGN_OR_RETURN(r.attributes, Unhex(Field(o, "attributes"), "attributes"));
    VAULTP11_RETURN_IF_ERROR(model::AttributeMap::Deserialize(r.attributes).status());
    r.version = Text(Field(o, "version"));
    if (r.version.size() != 32 || !ParseHex(r.version)) return bad();
    if (!Field(o, "created").is_number_integer()) return bad();
    r.created = Field(o, "created").get<int64_t>();
    VAULTP11_ASSIGN_OR_RETURN(CK_ULONG secret_bytes, Ulong(Field(o, "secret_bytes"), "secret length"));
    if (secret_bytes > plain.size() - at) return bad();
    c.secrets.emplace_back(plain.begin() + static_cast<std::ptrdiff_t>(at),
                           plain.begin() + static_cast<std::ptrdiff_t>(at + secret_bytes));
    at += secret_bytes;
    if (!Field(o, "hsm_key").is_null()) {
      VAULTP11_ASSIGN_OR_RETURN(pool::WrappedKey wk, WrappedKeyFromJson(Field(o, "hsm_key")));
      if (!HsmKeyOf(r) || *HsmKeyOf(r) != wk.inner_id || wk.object_class != r.object_class) return bad();
      c.hsm_keys.push_back(std::move(wk));
    } else if (HsmKeyOf(r)) {
      return bad();
    }
    c.rows.push_back(std::move(r));
  }
  if (at != plain.size()) return bad();
  return c;
}

Status Restore(const config::Config& cfg, const std::string& where_in, const std::string& file, Io& io, Header& h) {
  VAULTP11_RETURN_IF_ERROR(CheckPlace(cfg, where_in));
  const std::string where = PlaceName(cfg, where_in);
  // 1. The header; nothing in it is trusted until the content authenticates under it.
  VAULTP11_ASSIGN_OR_RETURN(std::string text, ReadBackupFile(file));
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || Text(Field(doc, "format")) != kFormat)
    return Err(CKR_DATA_INVALID, "{} is not a vaultp11 backup", file);
  if (Field(doc, "format_version") != kFormatVersion)
    return Err(CKR_DATA_INVALID, "{}: backup format version {} is not supported", file, Field(doc, "format_version").dump());
  VAULTP11_ASSIGN_OR_RETURN(Bytes sealed, Unhex(Field(doc, "content"), "content"));
  doc.erase("content");
  // What it claims to be: in messages, and in the audit once it authenticates.
  const std::string claimed_kind = Text(Field(doc, "kind"));
  const std::string kind = claimed_kind == "Secret" || claimed_kind == "Certificate" ? claimed_kind : "Key";
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, where));
  VAULTP11_ASSIGN_OR_RETURN(std::string deployment, st->DeploymentId());
  if (Text(Field(doc, "deployment")) != deployment)
    return Err(CKR_WRAPPED_KEY_INVALID, "{} was made by another deployment ({}), not this one ({}); nothing changed", file,
               QuotePrintable(Text(Field(doc, "deployment")), 40), deployment);
  // 2. HSM keys go only into HSMs holding the backup's security domain; pools hold nothing else.
  std::shared_ptr<pool::HsmPool> hsms;
  const bool has_hsm = !Field(doc, "security_domain").is_null();
  if (has_hsm) {
    VAULTP11_ASSIGN_OR_RETURN(Bytes blob_kcv, Unhex(Field(doc, "security_domain"), "security domain"));
    VAULTP11_ASSIGN_OR_RETURN(hsms, HsmsOf(cfg, where, "the backup holds HSM keys"));
    VAULTP11_ASSIGN_OR_RETURN(Bytes kcv, DomainCheckValue(*hsms));
    if (kcv != blob_kcv)
      return Err(CKR_WRAPPED_KEY_INVALID,
                 "{} was made under another security domain (check value {}) than {}'s ({}); nothing changed", file,
                 HexOf(blob_kcv), where, HexOf(kcv));
  } else if (cfg.FindPool(where) != nullptr) {
    return Err(CKR_ARGUMENTS_BAD, "{} holds a {} without HSM keys: pools hold HSM keys only; nothing changed", file,
               ToLower(kind));
  }
  if (cfg.FindPool(where) != nullptr && kind != "Key")
    return Err(CKR_ARGUMENTS_BAD, "{} holds a {}: pools hold keys only; nothing changed", file, ToLower(kind));
  // 3. The content, authenticated with the header.
  // Under the current root key, else an earlier one (a backup written before a reseal).
  VAULTP11_ASSIGN_OR_RETURN(std::vector<SecureBytes> keys, st->DeriveKeys("backup"));
  const std::string aad = doc.dump();
  Result<SecureBytes> plain = Err(CKR_SIGNATURE_INVALID, "");
  for (const SecureBytes& key : keys) {
    plain = ossl::OpenAesGcm(key, sealed, AsBytes(aad));
    if (plain.ok()) break;
  }
  if (!plain.ok())
    return Err(CKR_SIGNATURE_INVALID, "{} was modified after it was written (it does not authenticate); nothing changed",
               file);
  h.json = doc;
  h.name = Text(Field(doc, "name"));
  h.kind = kind;
  VAULTP11_ASSIGN_OR_RETURN(Content c, ReadContent(*plain, file));
  if (!config::IsValidName(h.name)) return Err(CKR_DATA_INVALID, "{}: bad item name", file);
  if (has_hsm == c.hsm_keys.empty()) return Err(CKR_DATA_INVALID, "{}: its content is malformed", file);
  // Versions may share an HSM key (a certificate renewed with --reuse-key): one copy of each.
  std::set<std::string> seen;  // the inner CKA_IDs' bytes
  std::erase_if(c.hsm_keys, [&](const pool::WrappedKey& wk) {
    return !seen.insert(std::string(wk.inner_id.begin(), wk.inner_id.end())).second;
  });
  for (auto& r : c.rows) {
    r.vault = where;
    r.label = h.name;
    if (cfg.FindPool(where) != nullptr && (r.object_class == CKO_PRIVATE_KEY || r.object_class == CKO_SECRET_KEY) &&
        !HsmKeyOf(r))
      return Err(CKR_ARGUMENTS_BAD, "{} holds a software key version: pools hold HSM keys only; nothing changed", file);
  }
  // 4. The name must be free (live or deleted), and no HSM may hold the keys already.
  VAULTP11_ASSIGN_OR_RETURN(const std::vector<store::ObjectRecord> same, st->LoadByLabel(where, h.name));
  if (!same.empty())
    return Err(CKR_FUNCTION_FAILED, "{} already has a {} named {}; nothing changed", where, ToLower(KindOfRows(same)),
               QuotePrintable(h.name));
  VAULTP11_ASSIGN_OR_RETURN(auto deleted, st->DeletedItems(where));
  for (const auto& d : deleted)
    if (d.name == h.name)
      return Err(CKR_FUNCTION_FAILED, "{} has a deleted item named {} (purge or recover it first); nothing changed",
                 where, QuotePrintable(h.name));
  // 5. In one store transaction, holding its write lock (so two restores cannot race): no HSM
  // may hold the keys already; every HSM key onto every member in service (at least the
  // quorum); then the item. A failure takes this restore's copies back.
  bool imported = false;
  size_t copies = hsms ? hsms->size() : 0;
  auto place_keys = [&]() -> Status {
    for (const auto& wk : c.hsm_keys)
      for (size_t i = 0; i < hsms->size(); ++i) {
        if (!hsms->Token(i)) continue;
        VAULTP11_ASSIGN_OR_RETURN(bool has, hsms->Holds(i, wk.object_class, wk.inner_id));
        if (has)
          return Err(CKR_FUNCTION_FAILED, "{}: hsm {} already holds a key of this backup; nothing changed", where,
                     hsms->member_name(i));
      }
    imported = !c.hsm_keys.empty();
    for (const auto& wk : c.hsm_keys) {
      size_t made = 0;
      std::string failures;
      for (size_t i = 0; i < hsms->size(); ++i) {
        if (!hsms->Token(i)) continue;
        Status s = hsms->Import(i, wk);
        if (s.ok()) {
          ++made;
        } else {
          failures += fmt::format("; hsm {}: {}", hsms->member_name(i), s.error().message);
        }
      }
      if (made < hsms->Quorum())
        return Err(CKR_DEVICE_ERROR, "{}: a key reached {} members, the quorum is {}{}; nothing changed", where, made,
                   hsms->Quorum(), failures);
      copies = std::min(copies, made);
    }
    return OkStatus();
  };
  VAULTP11_RETURN_IF_ERROR(st->EnsureVault(where));
  auto inserted = st->InsertItem(c.rows, c.secrets, c.policy, place_keys);
  if (!inserted.ok()) {
    if (imported)
      for (const auto& wk : c.hsm_keys) hsms->DestroyEverywhere(wk.inner_id);
    if (inserted.rv() == CKR_ATTRIBUTE_VALUE_INVALID)
      return Err(CKR_FUNCTION_FAILED, "{}: {}; nothing changed", where, inserted.error().message);
    return Err(inserted.rv(), "{}; nothing changed", inserted.error().message);
  }
  std::set<std::string> versions;
  for (const auto& r : c.rows) versions.insert(r.version);
  io.out << fmt::format("{}: {} {} restored from {} ({} version{}{})\n", where, h.kind, QuotePrintable(h.name), file,
                        versions.size(), versions.size() == 1 ? "" : "s",
                        hsms ? fmt::format(", HSM keys on {} HSM{}", copies, copies == 1 ? "" : "s") : std::string());
  return OkStatus();
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


Status BackupCommand(const config::Config& cfg, const std::string& where, const std::string& name,
                     const std::string& file, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  Header h;
  Status st = Backup(cfg, where, name, file, io, h);
  Json props = {{"file", AbsolutePath(file)}};
  if (st.ok()) props["versions"] = h.json["versions"];
  audit.Record((h.kind + "Backup").c_str(), st, props, name, PlaceName(cfg, where));
  return st;
}

Status RestoreCommand(const config::Config& cfg, const std::string& where, const std::string& file, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  Header h;
  Status st = Restore(cfg, where, file, io, h);
  Json props = {{"file", AbsolutePath(file)}};
  if (st.ok()) props["versions"] = h.json["versions"];
  audit.Record((h.kind + "Restore").c_str(), st, props, h.name, PlaceName(cfg, where));
  return st;
}

}  // namespace vaultp11::cli
