// `vaultp11 secret ...`: secrets (CKO_DATA items) written and read straight in the store.
#include "cli/items.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <functional>
#include <istream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <openssl/crypto.h>

#include "cli/audit_trail.h"
#include "core/provider.h"
#include "model/attributes.h"
#include "model/object.h"
#include "store/store.h"
#include "util/read_all.h"
#include "util/strings.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::cli {

Result<std::unique_ptr<store::Store>> OpenVaultStore(const config::Config& cfg, const std::string& vault) {
  auto st = store::Store::Open(cfg.store, /*create_if_missing=*/false);
  if (!st.ok() && st.rv() == CKR_TOKEN_NOT_PRESENT)
    return Err(CKR_TOKEN_NOT_PRESENT, "store {} does not exist (run `vaultp11 init` first)", store::Describe(cfg.store));
  if (!st.ok()) return st.status();
  VAULTP11_ASSIGN_OR_RETURN(auto vaults, (*st)->Vaults());
  if (std::find(vaults.begin(), vaults.end(), vault) == vaults.end())
    return Err(CKR_ARGUMENTS_BAD, "vault {} is not in the store yet (run `vaultp11 init`)", QuotePrintable(vault));
  return st;
}

Result<std::string> TagsJson(const std::vector<std::string>& name_values) {
  nlohmann::json tags = nlohmann::json::object();
  for (const std::string& kv : name_values) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) return Err(CKR_ARGUMENTS_BAD, "--tag wants NAME=VALUE, got {}", QuotePrintable(kv, 80));
    if (tags.contains(kv.substr(0, eq))) return Err(CKR_ARGUMENTS_BAD, "tag {} given twice", QuotePrintable(kv.substr(0, eq), 80));
    tags[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return tags.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

const char* KindOfRows(const std::vector<store::ObjectRecord>& rows) {
  std::vector<CK_OBJECT_CLASS> classes;
  for (const auto& r : rows) classes.push_back(r.object_class);
  const std::string_view kind = store::KindOf(classes);
  return kind == "certificate" ? "Certificate" : kind == "key" ? "Key" : "Secret";
}

Status CheckName(const std::string& name) {
  if (!config::IsValidName(name))
    return Err(CKR_ARGUMENTS_BAD, "invalid name {}: use 1-127 characters of 0-9 a-z A-Z -", QuotePrintable(name, 140));
  return OkStatus();
}

Result<CurrentObjects> FindCurrentObjects(core::Token& token, const std::string& label, bool token_only,
                                          const std::function<Status(const model::Object&)>& check) {
  model::AttributeMap t;
  t.SetString(CKA_LABEL, label);
  CurrentObjects c;
  VAULTP11_ASSIGN_OR_RETURN(const std::vector<CK_OBJECT_HANDLE> found, token.Find(t));
  for (CK_OBJECT_HANDLE h : found) {
    VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr o, token.Get(h));
    if (token_only && !o->is_token()) continue;
    if (check) VAULTP11_RETURN_IF_ERROR(check(*o));
    switch (o->cls()) {
      case CKO_PRIVATE_KEY: c.priv = o; break;
      case CKO_PUBLIC_KEY: c.pub = o; break;
      case CKO_SECRET_KEY: c.secret = o; break;
      case CKO_CERTIFICATE: c.cert = o; break;
      case CKO_DATA: c.data = o; break;
      default: break;
    }
  }
  return c;
}

namespace {

using Json = nlohmann::ordered_json;

// The configured vault `name` (pools hold HSM keys only), present in the store.
Status CheckVault(const config::Config& cfg, const std::string& name) {
  if (cfg.FindVault(name) == nullptr) {
    if (cfg.FindPool(name) != nullptr)
      return Err(CKR_ARGUMENTS_BAD, "{} is a managed HSM pool: pools hold HSM keys only, no secrets",
                 QuotePrintable(name));
    return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {}", QuotePrintable(name), cfg.source);
  }
  return OkStatus();
}

}  // namespace

Result<SecureBytes> ReadFileBounded(const std::string& path, size_t limit) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", path, std::strerror(errno));
  SecureBytes data(limit);
  const int e = ReadUpTo(fd, data);
  close(fd);
  if (e != 0) return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", path, std::strerror(e));
  return data;
}

namespace {

// The value: --file (byte for byte), a hidden line on a terminal, else stdin to its end.
Result<SecureBytes> ReadValue(const SecretSetOptions& o, Io& io) {
  SecureBytes value;
  if (!o.file.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(value, ReadFileBounded(o.file, VAULTP11_MAX_SECRET_BYTES + 1));
  } else if (io.interactive) {
    VAULTP11_ASSIGN_OR_RETURN(SecureString line, PromptSecret(io, "Secret value"));
    value.assign(line.begin(), line.end());
  } else {
    value.resize(VAULTP11_MAX_SECRET_BYTES + 1);
    io.in.read(reinterpret_cast<char*>(value.data()), static_cast<std::streamsize>(value.size()));
    value.resize(static_cast<size_t>(io.in.gcount()));
  }
  if (value.size() > VAULTP11_MAX_SECRET_BYTES)
    return Err(CKR_ARGUMENTS_BAD, "the value is over {} bytes; nothing stored", VAULTP11_MAX_SECRET_BYTES);
  if (value.empty()) return Err(CKR_ARGUMENTS_BAD, "the value is empty; nothing stored");
  return value;
}

// One version of a secret as listed: its row and the attributes stored with it.
struct SecretVersion {
  store::ObjectRecord rec;
  model::AttributeMap attrs;
};

Json Describe(const std::string& name, const SecretVersion& v) {
  const model::AttributeMap& a = v.attrs;
  Json j = {{"name", name},
            {"version", v.rec.version},
            {"created", v.rec.created != 0 ? UtcTimeString(v.rec.created) : std::string()},
            {"contentType", a.GetString(CKA_VAULTP11_CONTENT_TYPE)},
            {"enabled", a.GetBool(CKA_VAULTP11_ENABLED, true)}};
  if (auto nb = a.GetUlong(CKA_VAULTP11_NOT_BEFORE); nb && *nb != 0) j["notBefore"] = UtcTimeString(static_cast<int64_t>(*nb));
  if (auto ex = a.GetUlong(CKA_VAULTP11_EXPIRES); ex && *ex != 0) j["expires"] = UtcTimeString(static_cast<int64_t>(*ex));
  std::string tags = a.GetString(CKA_VAULTP11_TAGS);
  if (!tags.empty() && tags != "{}") j["tags"] = Json::parse(tags, nullptr, false);
  return j;
}

std::string Line(const Json& j) {
  std::string out = QuotePrintable(j["name"].get<std::string>()) + "  version " + j["version"].get<std::string>();
  if (j.contains("versions")) out += fmt::format("  ({} versions)", j["versions"].get<int>());
  out += "  created " + j["created"].get<std::string>();
  if (!j["contentType"].get<std::string>().empty()) out += "  type " + QuotePrintable(j["contentType"].get<std::string>());
  if (!j["enabled"].get<bool>()) out += "  disabled";
  if (j.contains("notBefore")) out += "  not-before " + j["notBefore"].get<std::string>();
  if (j.contains("expires")) out += "  expires " + j["expires"].get<std::string>();
  if (j.contains("tags")) out += "  tags " + j["tags"].dump();
  return out + "\n";
}

// The secret `name` of `vault`: its versions, oldest first; a name of another kind is refused,
// but with `bundles`, an exportable certificate gives the versions of its bundle.
Result<std::vector<SecretVersion>> SecretVersions(store::Store& st, const std::string& vault, const std::string& name,
                                                  bool bundles = false) {
  VAULTP11_ASSIGN_OR_RETURN(auto records, st.LoadVault(vault));
  std::vector<SecretVersion> out;
  bool other_kind = false;
  for (auto& r : records) {
    if (r.label != name) continue;
    if (r.object_class != CKO_DATA) {
      other_kind = true;
      continue;
    }
    VAULTP11_ASSIGN_OR_RETURN(auto attrs, model::AttributeMap::Deserialize(r.attributes));
    out.push_back(SecretVersion{std::move(r), std::move(attrs)});
  }
  if (other_kind && bundles) {
    std::erase_if(out, [](const SecretVersion& v) { return !IsCertificateBundle(v.attrs.GetString(CKA_VAULTP11_CONTENT_TYPE)); });
    if (!out.empty()) return out;
  }
  if (other_kind)
    return Err(CKR_ARGUMENTS_BAD, "{} in vault {} is a key or certificate, not a secret", QuotePrintable(name),
               QuotePrintable(vault));
  if (out.empty()) return Err(CKR_ARGUMENTS_BAD, "vault {} has no secret {}", QuotePrintable(vault), QuotePrintable(name));
  return out;
}

// The soft-delete settings in force: the config's, and on in any case (default retention) once
// purge protection was recorded for the vault, so removing soft_delete from the file cannot
// turn deletes back into immediate ones.
Result<config::SoftDeleteConfig> EffectiveSoftDelete(const config::Config& cfg, store::Store& st, const std::string& where) {
  config::SoftDeleteConfig sd = cfg.SoftDeleteOf(where);
  VAULTP11_ASSIGN_OR_RETURN(bool protection, st.PurgeProtection(where));
  if (protection) {
    sd.enabled = true;
    sd.purge_protection = true;
  }
  return sd;
}

Status SecretSet(const config::Config& cfg, const SecretSetOptions& o, Io& io, std::string* version) {
  VAULTP11_RETURN_IF_ERROR(CheckVault(cfg, o.vault));
  VAULTP11_RETURN_IF_ERROR(CheckName(o.name));
  model::AttributeMap t;
  t.SetUlong(CKA_CLASS, CKO_DATA);
  t.SetBool(CKA_TOKEN, true);
  t.SetBool(CKA_PRIVATE, true);
  t.SetString(CKA_LABEL, o.name);
  if (!o.content_type.empty()) t.SetString(CKA_VAULTP11_CONTENT_TYPE, o.content_type);
  if (o.disabled) t.SetBool(CKA_VAULTP11_ENABLED, false);
  if (!o.not_before.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(int64_t nb, ParseUtcTime(o.not_before, false));
    t.SetUlong(CKA_VAULTP11_NOT_BEFORE, static_cast<CK_ULONG>(nb));
  }
  if (!o.expires.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(int64_t ex, ParseUtcTime(o.expires, true));
    t.SetUlong(CKA_VAULTP11_EXPIRES, static_cast<CK_ULONG>(ex));
  }
  if (!o.tags.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(std::string tags, TagsJson(o.tags));
    t.SetString(CKA_VAULTP11_TAGS, tags);
  }
  // Everything but the value is checked before the value is read.
  VAULTP11_ASSIGN_OR_RETURN(auto probe, model::CreateObject(t));
  (void)probe;
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes value, ReadValue(o, io));
  t.Set(CKA_VALUE, std::span<const uint8_t>(value.data(), value.size()));
  auto obj = model::CreateObject(t);
  if (const Bytes* copy = t.Get(CKA_VALUE))  // the map's copy of the value is wiped before any return
    OPENSSL_cleanse(const_cast<uint8_t*>(copy->data()), copy->size());
  if (!obj.ok()) return obj.status();
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, o.vault));
  store::ObjectRecord rec;
  rec.vault = o.vault;
  rec.object_class = CKO_DATA;
  rec.label = o.name;
  rec.attributes = (*obj)->attrs.Serialize();
  VAULTP11_ASSIGN_OR_RETURN(auto saved, st->Insert(std::move(rec), value, /*new_version=*/true));
  *version = saved.version;
  io.out << fmt::format("secret {} in vault {}: version {}\n", QuotePrintable(o.name), QuotePrintable(o.vault),
                        saved.version);
  return OkStatus();
}

// Loads the value of the version asked for (written out by the caller once audited).
Status SecretGet(const config::Config& cfg, const SecretGetOptions& o, std::string* version, SecureBytes* value) {
  VAULTP11_RETURN_IF_ERROR(CheckVault(cfg, o.vault));
  VAULTP11_RETURN_IF_ERROR(CheckName(o.name));
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, o.vault));
  VAULTP11_ASSIGN_OR_RETURN(auto versions, SecretVersions(*st, o.vault, o.name, /*bundles=*/true));
  const SecretVersion* pick = &versions.back();  // the current version is the newest
  if (o.version.empty() && IsCertificateBundle(pick->attrs.GetString(CKA_VAULTP11_CONTENT_TYPE))) {
    // A certificate's bundle: only the current version's (an older one's key is not current).
    // The certificate in service: the newest version with a certificate (a pending request's
    // version has none yet).
    VAULTP11_ASSIGN_OR_RETURN(auto all, st->VersionsOf(o.vault, o.name));
    for (auto v = all.rbegin(); v != all.rend(); ++v) {
      if (std::find(v->classes.begin(), v->classes.end(), CKO_CERTIFICATE) == v->classes.end()) continue;
      if (v->version != pick->rec.version)
        return Err(CKR_ARGUMENTS_BAD, "the current version ({}) of certificate {} has no bundle (it is not exportable)",
                   v->version, QuotePrintable(o.name));
      break;
    }
  }
  if (!o.version.empty()) {
    auto it = std::find_if(versions.begin(), versions.end(), [&](const SecretVersion& v) { return v.rec.version == o.version; });
    if (it == versions.end())
      return Err(CKR_ARGUMENTS_BAD, "secret {} has no version {}", QuotePrintable(o.name), QuotePrintable(o.version, 40));
    pick = &*it;
  }
  *version = pick->rec.version;
  if (!o.out.empty() && access(o.out.c_str(), F_OK) == 0)
    return Err(CKR_ARGUMENTS_BAD, "{} exists: the value is written to a new file only", o.out);
  VAULTP11_ASSIGN_OR_RETURN(*value, st->LoadSecret(pick->rec.id));
  return OkStatus();
}

Status WriteValue(const SecretGetOptions& o, const SecureBytes& value, Io& io) {
  std::string_view bytes(reinterpret_cast<const char*>(value.data()), value.size());
  if (!o.out.empty()) return WriteNewFile(o.out, bytes);
  io.out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  io.out.flush();
  if (!io.out) return Err(CKR_FUNCTION_FAILED, "writing the value to stdout failed");
  return OkStatus();
}

Status SecretDelete(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io,
                    size_t* versions) {
  VAULTP11_RETURN_IF_ERROR(CheckVault(cfg, vault));
  VAULTP11_RETURN_IF_ERROR(CheckName(name));
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, vault));
  VAULTP11_ASSIGN_OR_RETURN(auto found, SecretVersions(*st, vault, name));
  *versions = found.size();
  VAULTP11_ASSIGN_OR_RETURN(const config::SoftDeleteConfig sd, EffectiveSoftDelete(cfg, *st, vault));
  if (sd.enabled) {
    const int64_t now = time(nullptr), purge_after = now + int64_t{sd.retention_days} * 86400;
    VAULTP11_RETURN_IF_ERROR(st->SoftDeleteItem(vault, name, now, purge_after).status());
    io.out << fmt::format("secret {} of vault {} deleted ({} version{}); recoverable until {}\n", QuotePrintable(name),
                          QuotePrintable(vault), found.size(), found.size() == 1 ? "" : "s", UtcTimeString(purge_after));
    return OkStatus();
  }
  VAULTP11_ASSIGN_OR_RETURN(auto gone, st->DeleteItem(vault, name));
  io.out << fmt::format("secret {} deleted from vault {} ({} version{})\n", QuotePrintable(name), QuotePrintable(vault),
                        found.size(), found.size() == 1 ? "" : "s");
  return OkStatus();
}


Status CheckWhere(const config::Config& cfg, const std::string& where) {
  if (cfg.FindVault(where) == nullptr && cfg.FindPool(where) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault or managed HSM pool named {} in {}", QuotePrintable(where), cfg.source);
  return OkStatus();
}

// The deleted item `name`; else an error, with `kind` set from a live item of that name (for
// the audit event's name) when there is one.
Result<store::DeletedItem> FindDeleted(store::Store& st, const std::string& where, const std::string& name,
                                       std::string* kind) {
  VAULTP11_ASSIGN_OR_RETURN(auto items, st.DeletedItems(where));
  for (auto& d : items)
    if (d.name == name) return std::move(d);
  VAULTP11_ASSIGN_OR_RETURN(auto live, st.LoadVault(where));
  std::vector<store::ObjectRecord> mine;
  for (auto& r : live)
    if (r.label == name) mine.push_back(std::move(r));
  if (!mine.empty()) {
    *kind = KindOfRows(mine);
    return Err(CKR_ARGUMENTS_BAD, "{} of {} is not deleted", QuotePrintable(name), QuotePrintable(where));
  }
  return Err(CKR_ARGUMENTS_BAD, "{} has no deleted item {}", QuotePrintable(where), QuotePrintable(name));
}

Status Recover(const config::Config& cfg, const DeletedOptions& o, Io& io, std::string* kind) {
  VAULTP11_RETURN_IF_ERROR(CheckWhere(cfg, o.where));
  VAULTP11_RETURN_IF_ERROR(CheckName(o.name));
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, o.where));
  VAULTP11_ASSIGN_OR_RETURN(auto item, FindDeleted(*st, o.where, o.name, kind));
  *kind = KindOfRows(item.objects);
  VAULTP11_RETURN_IF_ERROR(st->RecoverItem(o.where, o.name));
  io.out << fmt::format("{} {} of {} recovered\n", *kind, QuotePrintable(o.name), QuotePrintable(o.where));
  return OkStatus();
}

Status Purge(const config::Config& cfg, store::Store* st, const DeletedOptions& o, Io& io, std::string* kind) {
  VAULTP11_RETURN_IF_ERROR(CheckWhere(cfg, o.where));
  VAULTP11_RETURN_IF_ERROR(CheckName(o.name));
  std::unique_ptr<store::Store> own;
  if (st == nullptr) {
    VAULTP11_ASSIGN_OR_RETURN(own, OpenVaultStore(cfg, o.where));
    st = own.get();
  }
  VAULTP11_ASSIGN_OR_RETURN(auto item, FindDeleted(*st, o.where, o.name, kind));
  *kind = KindOfRows(item.objects);
  const config::SoftDeleteConfig sd = cfg.SoftDeleteOf(o.where);
  if (sd.purge_protection) VAULTP11_RETURN_IF_ERROR(st->EnablePurgeProtection(o.where));
  VAULTP11_ASSIGN_OR_RETURN(bool protection, st->PurgeProtection(o.where));
  // The HSM keys go after the store's rows (the purge is decided, protection checked, there):
  // those of the rows the purge removed.
  bool any_hsm = false;
  for (const auto& r : item.objects) {
    auto attrs = model::AttributeMap::Deserialize(r.attributes);
    any_hsm |= attrs.ok() && attrs->GetUlong(CKA_VAULTP11_PROTECTION) == VAULTP11_PROTECTION_HSM;
  }
  std::shared_ptr<pool::HsmPool> hsms;
  if (any_hsm) {
    VAULTP11_ASSIGN_OR_RETURN(hsms, HsmPoolFor(cfg, o.where));
  }
  VAULTP11_ASSIGN_OR_RETURN(auto gone, st->PurgeItem(o.where, o.name, time(nullptr), protection || sd.purge_protection));
  std::vector<Bytes> inner;
  for (const auto& r : gone) {
    if (r.object_class != CKO_PRIVATE_KEY && r.object_class != CKO_SECRET_KEY) continue;
    auto attrs = model::AttributeMap::Deserialize(r.attributes);
    if (!attrs.ok() || attrs->GetUlong(CKA_VAULTP11_PROTECTION) != VAULTP11_PROTECTION_HSM) continue;
    if (const Bytes* id = attrs->Get(CKA_VAULTP11_HSM_KEY_ID); id != nullptr && !id->empty()) inner.push_back(*id);
  }
  if (hsms)
    for (const Bytes& id : inner) hsms->DestroyEverywhere(id);
  io.out << fmt::format("{} {} of {} purged ({} object{}{})\n", *kind, QuotePrintable(o.name), QuotePrintable(o.where),
                        gone.size(), gone.size() == 1 ? "" : "s",
                        inner.empty() ? "" : fmt::format(", {} HSM key{}", inner.size(), inner.size() == 1 ? "" : "s"));
  return OkStatus();
}

}  // namespace

Result<std::shared_ptr<pool::HsmPool>> HsmPoolFor(const config::Config& cfg, const std::string& name) {
  if (const config::ManagedHsmPoolConfig* pc = cfg.FindPool(name)) return core::MakePool(cfg, *pc);
  const config::VaultConfig* vc = cfg.FindVault(name);
  if (vc == nullptr) return Err(CKR_ARGUMENTS_BAD, "no managed HSM pool or vault named {} in {}", QuotePrintable(name), cfg.source);
  if (vc->hsms.empty()) return std::shared_ptr<pool::HsmPool>();
  config::ManagedHsmPoolConfig one;
  one.name = vc->name;
  one.hsms = {vc->hsms.front()};
  one.quorum = 1;
  return core::MakePool(cfg, one);
}

Status DeletedListCommand(const config::Config& cfg, const DeletedOptions& opts, Io& io) {
  VAULTP11_RETURN_IF_ERROR(CheckWhere(cfg, opts.where));
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, opts.where));
  VAULTP11_ASSIGN_OR_RETURN(auto items, st->DeletedItems(opts.where));
  VAULTP11_ASSIGN_OR_RETURN(bool protection, st->PurgeProtection(opts.where));
  protection = protection || cfg.SoftDeleteOf(opts.where).purge_protection;
  Json out = Json::array();
  for (const auto& d : items) {
    if (!opts.name.empty() && d.name != opts.name) continue;
    std::set<std::string> versions;
    for (const auto& r : d.objects) versions.insert(r.version);
    out.push_back({{"name", d.name},
                   {"kind", KindOfRows(d.objects)},
                   {"versions", versions.size()},
                   {"deleted", UtcTimeString(d.deleted)},
                   {"purgeAfter", UtcTimeString(d.purge_after)},
                   {"purgeProtected", protection && time(nullptr) < d.purge_after}});
  }
  if (opts.json) {
    io.out << out.dump(2, ' ', false, Json::error_handler_t::replace) << "\n";
    return OkStatus();
  }
  for (const Json& j : out)
    io.out << fmt::format("{}  {}  {} version{}  deleted {}  purge after {}{}\n", QuotePrintable(j["name"].get<std::string>()),
                          j["kind"].get<std::string>(), j["versions"].get<size_t>(), j["versions"].get<size_t>() == 1 ? "" : "s",
                          j["deleted"].get<std::string>(), j["purgeAfter"].get<std::string>(),
                          j["purgeProtected"].get<bool>() ? "  (purge protected)" : "");
  return OkStatus();
}

Status DeletedRecoverCommand(const config::Config& cfg, const DeletedOptions& opts, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string kind;
  Status st = Recover(cfg, opts, io, &kind);
  audit.Record(kind == "Certificate" ? "CertificateRecover" : kind == "Secret" ? "SecretRecover" : "KeyRecover", st,
               Json::object(), opts.name, opts.where);
  return st;
}

Status PurgeDeleted(const config::Config& cfg, store::Store* st, OperatorAudit& audit, const DeletedOptions& opts,
                    Io& io) {
  std::string kind = "Key";
  Status s = Purge(cfg, st, opts, io, &kind);
  audit.Record((kind + "Purge").c_str(), s, Json::object(), opts.name, opts.where);
  return s;
}

Status DeletedPurgeCommand(const config::Config& cfg, const DeletedOptions& opts, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  return PurgeDeleted(cfg, nullptr, audit, opts, io);
}

Result<int64_t> ParseUtcTime(const std::string& text, bool end_of_day) {
  std::tm tm{};
  const char* end = nullptr;
  bool date_only = text.size() == 10;
  if (date_only) {
    end = strptime(text.c_str(), "%Y-%m-%d", &tm);
  } else {
    end = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  }
  if (end == nullptr || *end != '\0' || tm.tm_year + 1900 < 1970 || tm.tm_year + 1900 > 9999)
    return Err(CKR_ARGUMENTS_BAD, "{} is not a UTC time: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ", QuotePrintable(text, 40));
  const int mday = tm.tm_mday, mon = tm.tm_mon;
  int64_t t = timegm(&tm);
  if (tm.tm_mday != mday || tm.tm_mon != mon)  // 2026-02-30 and the like
    return Err(CKR_ARGUMENTS_BAD, "{} is not a calendar day", QuotePrintable(text, 40));
  if (date_only && end_of_day) t += 86399;
  return t;
}

Status SecretSetCommand(const config::Config& cfg, const SecretSetOptions& opts, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string version;
  Status st = SecretSet(cfg, opts, io, &version);
  audit.Record("SecretSet", st, version.empty() ? Json::object() : Json{{"version", version}}, opts.name, opts.vault);
  return st;
}

Status SecretGetCommand(const config::Config& cfg, const SecretGetOptions& opts, Io& io) {
  // The event is written before the value is handed out (a required sink that cannot be opened
  // stops the command before the value is read).
  std::string version;
  SecureBytes value;
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg, "the value was not read"));
  Status st = SecretGet(cfg, opts, &version, &value);
  audit.Record("SecretGet", st, version.empty() ? Json::object() : Json{{"version", version}}, opts.name, opts.vault);
  if (!st.ok()) return st;
  return WriteValue(opts, value, io);
}

Status SecretListCommand(const config::Config& cfg, const SecretListOptions& opts, Io& io) {
  VAULTP11_RETURN_IF_ERROR(CheckVault(cfg, opts.vault));
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenVaultStore(cfg, opts.vault));
  Json out = Json::array();
  if (!opts.name.empty()) {
    VAULTP11_RETURN_IF_ERROR(CheckName(opts.name));
    VAULTP11_ASSIGN_OR_RETURN(auto versions, SecretVersions(*st, opts.vault, opts.name));
    for (size_t i = 0; i < versions.size(); ++i) {
      Json j = Describe(opts.name, versions[i]);
      j["current"] = i + 1 == versions.size();
      out.push_back(std::move(j));
    }
  } else {
    VAULTP11_ASSIGN_OR_RETURN(auto records, st->LoadVault(opts.vault));
    std::map<std::string, std::pair<SecretVersion, int>> newest;  // by name: newest row, versions
    std::map<std::string, std::set<std::string>> seen;
    for (auto& r : records) {
      if (r.object_class != CKO_DATA || r.label.empty()) continue;
      VAULTP11_ASSIGN_OR_RETURN(auto attrs, model::AttributeMap::Deserialize(r.attributes));
      seen[r.label].insert(r.version);
      std::string label = r.label;
      auto& slot = newest[label];
      if (slot.first.rec.id < r.id) slot.first = SecretVersion{std::move(r), std::move(attrs)};
    }
    for (auto& [name, v] : newest) {
      Json j = Describe(name, v.first);
      j["versions"] = static_cast<int>(seen[name].size());
      out.push_back(std::move(j));
    }
  }
  if (opts.json) {
    io.out << out.dump(2, ' ', false, Json::error_handler_t::replace) << "\n";
  } else {
    for (const Json& j : out) io.out << Line(j);
  }
  return OkStatus();
}

Status SecretDeleteCommand(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  size_t versions = 0;
  Status st = SecretDelete(cfg, vault, name, io, &versions);
  audit.Record("SecretDelete", st, st.ok() ? Json{{"versions", versions}} : Json::object(), name, vault);
  return st;
}

}  // namespace vaultp11::cli
