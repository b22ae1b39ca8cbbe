// `vaultp11 key rotate|policy` and `vaultp11 lifecycle run`: new key versions made the way the
// module makes them (core::Token, model generation, the vault's HSM or pool), as the operator.
#include <ctime>
#include <sstream>
#include <nlohmann/json.hpp>

#include "cli/audit_trail.h"
#include "cli/items.h"
#include "core/provider.h"
#include "model/attributes.h"
#include "model/object.h"
#include "util/strings.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::cli {

namespace {

using Json = nlohmann::ordered_json;
using model::AttributeMap;

constexpr int64_t kDay = 86400;
constexpr int kMinDays = 7, kMaxDays = 36500;

Json PolicyJson(const RotationPolicy& p) {
  Json j = Json::object();
  if (p.rotate_after_days) j["rotateAfterDays"] = p.rotate_after_days;
  if (p.rotate_before_expiry_days) j["rotateBeforeExpiryDays"] = p.rotate_before_expiry_days;
  if (p.notify_before_expiry_days) j["notifyBeforeExpiryDays"] = p.notify_before_expiry_days;
  if (p.expiry_days) j["expiryDays"] = p.expiry_days;
  return j;
}

RotationPolicy PolicyFrom(const std::string& text) {
  RotationPolicy p;
  Json j = Json::parse(text, nullptr, false);
  if (!j.is_object()) return p;
  p.rotate_after_days = j.value("rotateAfterDays", 0);
  p.rotate_before_expiry_days = j.value("rotateBeforeExpiryDays", 0);
  p.notify_before_expiry_days = j.value("notifyBeforeExpiryDays", 0);
  p.expiry_days = j.value("expiryDays", 0);
  return p;
}

std::string Describe(const RotationPolicy& p) {
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  if (p.rotate_after_days) add(fmt::format("rotate {} days after creation", p.rotate_after_days));
  if (p.rotate_before_expiry_days) add(fmt::format("rotate {} days before expiry", p.rotate_before_expiry_days));
  if (p.notify_before_expiry_days) add(fmt::format("notify {} days before expiry", p.notify_before_expiry_days));
  if (p.expiry_days) add(fmt::format("new versions expire after {} days", p.expiry_days));
  return out.empty() ? "no rotation policy" : out;
}

// The objects of a key's current version on `token`.
struct CurrentKey {
  model::ObjectPtr priv, pub, secret;
  std::string version;
};

Result<CurrentKey> FindCurrentKey(core::Token& token, const std::string& name) {
  // Only key objects: the first other one (in handle order) says what the item is instead.
  auto only_keys = [&](const model::Object& o) -> Status {
    switch (o.cls()) {
      case CKO_PRIVATE_KEY:
      case CKO_PUBLIC_KEY:
      case CKO_SECRET_KEY: return OkStatus();
      case CKO_CERTIFICATE:
        return Err(CKR_ACTION_PROHIBITED, "key {} belongs to a certificate: renew the certificate instead",
                   QuotePrintable(name));
      default:
        return Err(CKR_ARGUMENTS_BAD, "{} in {} is a secret, not a key", QuotePrintable(name), token.name());
    }
  };
  VAULTP11_ASSIGN_OR_RETURN(CurrentObjects cur, FindCurrentObjects(token, name, /*token_only=*/true, only_keys));
  CurrentKey k{cur.priv, cur.pub, cur.secret, {}};
  model::ObjectPtr main = k.priv ? k.priv : k.secret;
  if (!main) return Err(CKR_ARGUMENTS_BAD, "{} has no key named {}", token.name(), QuotePrintable(name));
  if (k.priv && !k.pub)
    return Err(CKR_FUNCTION_FAILED, "key {} has no public key in its current version: cannot tell its parameters",
               QuotePrintable(name));
  k.version = main->attrs.GetString(CKA_VAULTP11_VERSION);
  return k;
}

void CopyAttrs(const AttributeMap& from, AttributeMap& to, std::initializer_list<CK_ATTRIBUTE_TYPE> types) {
  for (CK_ATTRIBUTE_TYPE t : types)
    if (const Bytes* v = from.Get(t); v != nullptr && !(v->empty() && t == CKA_ALLOWED_MECHANISMS)) to.Set(t, *v);
}

// A new version of the key `name` on `token` with the current version's parameters and usage;
// `expiry_days` > 0 sets its expiry. Fails with CKR_FUNCTION_REJECTED when another version
// became current meanwhile (a concurrent rotation won); nothing is left behind then.
Result<std::string> Rotate(core::Token& token, const std::string& name, const std::string& expect, int expiry_days,
                           std::string* previous) {
  VAULTP11_ASSIGN_OR_RETURN(CurrentKey k, FindCurrentKey(token, name));
  if (!expect.empty() && k.version != expect)
    return Err(CKR_FUNCTION_REJECTED, "key {} was rotated meanwhile", QuotePrintable(name));
  *previous = k.version;
  const int64_t expires = expiry_days > 0 ? static_cast<int64_t>(time(nullptr)) + expiry_days * kDay : 0;
  const std::initializer_list<CK_ATTRIBUTE_TYPE> common = {
      CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_DERIVE,
      CKA_ALLOWED_MECHANISMS, CKA_VAULTP11_PROTECTION, CKA_VAULTP11_TAGS};
  const bool hsm = (k.priv ? k.priv : k.secret)->attrs.GetUlong(CKA_VAULTP11_PROTECTION) == VAULTP11_PROTECTION_HSM;
  if (hsm && token.hsm() == nullptr) return Err(CKR_DEVICE_ERROR, "{} has no HSM for key {}", token.name(), QuotePrintable(name));
  if (k.secret) {
    AttributeMap t;
    CopyAttrs(k.secret->attrs, t, common);
    CopyAttrs(k.secret->attrs, t, {CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_VERIFY, CKA_SENSITIVE,
                                   CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED, CKA_VALUE_LEN});
    if (expires) t.SetUlong(CKA_VAULTP11_EXPIRES, static_cast<CK_ULONG>(expires));
    std::shared_ptr<model::Object> key;
    if (hsm) {
      VAULTP11_ASSIGN_OR_RETURN(key, model::GenerateHsmSecretKey(CKM_AES_KEY_GEN, t, *token.hsm()));
    } else {
      VAULTP11_ASSIGN_OR_RETURN(key, model::GenerateSecretKey(CKM_AES_KEY_GEN, t));
    }
    auto added = token.Add(key, /*new_version=*/true, k.version);
    if (!added.ok()) {
      token.DiscardHsmKey(*key);
      return added.status();
    }
    return key->attrs.GetString(CKA_VAULTP11_VERSION);
  }
  AttributeMap pt, vt;
  CopyAttrs(k.pub->attrs, pt, common);
  CopyAttrs(k.priv->attrs, vt, common);
  const bool rsa = k.priv->key_type() == CKK_RSA;
  CopyAttrs(k.pub->attrs, pt, {CKA_VERIFY, CKA_ENCRYPT, CKA_WRAP, CKA_VERIFY_RECOVER, CKA_SUBJECT});
  if (rsa)
    CopyAttrs(k.pub->attrs, pt, {CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT});
  else
    CopyAttrs(k.pub->attrs, pt, {CKA_EC_PARAMS});
  CopyAttrs(k.priv->attrs, vt, {CKA_SIGN, CKA_DECRYPT, CKA_UNWRAP, CKA_SIGN_RECOVER, CKA_SENSITIVE, CKA_EXTRACTABLE,
                                CKA_WRAP_WITH_TRUSTED, CKA_ALWAYS_AUTHENTICATE, CKA_SUBJECT});
  if (expires) {
    pt.SetUlong(CKA_VAULTP11_EXPIRES, static_cast<CK_ULONG>(expires));
    vt.SetUlong(CKA_VAULTP11_EXPIRES, static_cast<CK_ULONG>(expires));
  }
  const CK_MECHANISM_TYPE mech = rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN;
  model::KeyPair kp;
  if (hsm) {
    VAULTP11_ASSIGN_OR_RETURN(kp, model::GenerateHsmKeyPair(mech, pt, vt, *token.hsm()));
  } else {
    VAULTP11_ASSIGN_OR_RETURN(kp, model::GenerateKeyPair(mech, pt, vt));
  }
  auto added = token.AddPair(kp.public_key, kp.private_key, /*new_version=*/true, k.version);
  if (!added.ok()) {
    token.DiscardHsmKey(*kp.private_key);
    return added.status();
  }
  return kp.private_key->attrs.GetString(CKA_VAULTP11_VERSION);
}

Result<core::Token*> TokenNamed(core::Provider& p, const std::string& where) {
  for (const auto& t : p.tokens())
    if (t->name() == where) return t.get();
  return Err(CKR_ARGUMENTS_BAD, "no vault or managed HSM pool named {} in {}", QuotePrintable(where), p.config().source);
}

Result<std::unique_ptr<core::Provider>> OpenProvider(const config::Config& cfg) {
  return core::Provider::Create(cfg.source, /*threads=*/true);
}

}  // namespace

Result<int> ParseDays(const std::string& text) {
  std::string digits = text;
  if (digits.size() >= 3 && (digits.front() == 'P' || digits.front() == 'p') && (digits.back() == 'D' || digits.back() == 'd'))
    digits = digits.substr(1, digits.size() - 2);
  else if (digits.size() >= 2 && (digits.back() == 'd' || digits.back() == 'D'))
    digits.pop_back();
  long long n = 0;
  bool ok = !digits.empty() && digits.size() <= 6;
  for (char c : digits) {
    ok = ok && c >= '0' && c <= '9';
    if (ok) n = n * 10 + (c - '0');
  }
  if (!ok) return Err(CKR_ARGUMENTS_BAD, "{} is not a number of days (use 90d or P90D)", QuotePrintable(text, 40));
  return static_cast<int>(n);
}

Status CheckPolicy(const RotationPolicy& p) {
  auto range = [](const char* what, int days) -> Status {
    if (days != 0 && (days < kMinDays || days > kMaxDays))
      return Err(CKR_ARGUMENTS_BAD, "{} must be from {} to {} days, got {}", what, kMinDays, kMaxDays, days);
    return OkStatus();
  };
  VAULTP11_RETURN_IF_ERROR(range("--rotate-after", p.rotate_after_days));
  VAULTP11_RETURN_IF_ERROR(range("--rotate-before-expiry", p.rotate_before_expiry_days));
  VAULTP11_RETURN_IF_ERROR(range("--notify-before-expiry", p.notify_before_expiry_days));
  VAULTP11_RETURN_IF_ERROR(range("--expiry", p.expiry_days));
  if (p.rotate_after_days && p.rotate_before_expiry_days)
    return Err(CKR_ARGUMENTS_BAD, "a policy has one rotate action: --rotate-after or --rotate-before-expiry, not both");
  if (p.expiry_days) {
    if (p.rotate_after_days >= p.expiry_days && p.rotate_after_days)
      return Err(CKR_ARGUMENTS_BAD, "--rotate-after ({} days) must be shorter than --expiry ({} days): versions would expire first",
                 p.rotate_after_days, p.expiry_days);
    if (p.rotate_before_expiry_days >= p.expiry_days)
      return Err(CKR_ARGUMENTS_BAD, "--rotate-before-expiry ({} days) must be shorter than --expiry ({} days)",
                 p.rotate_before_expiry_days, p.expiry_days);
    if (p.notify_before_expiry_days >= p.expiry_days)
      return Err(CKR_ARGUMENTS_BAD, "--notify-before-expiry ({} days) must be shorter than --expiry ({} days)",
                 p.notify_before_expiry_days, p.expiry_days);
  }
  return OkStatus();
}

Status KeyRotateCommand(const config::Config& cfg, const std::string& where, const std::string& name, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string previous, version;
  Status st = [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(auto provider, OpenProvider(cfg));
    VAULTP11_ASSIGN_OR_RETURN(core::Token * token, TokenNamed(*provider, where));
    VAULTP11_ASSIGN_OR_RETURN(auto st, store::Store::Open(cfg.store, false));
    VAULTP11_ASSIGN_OR_RETURN(std::string policy, st->Policy(where, name));
    VAULTP11_ASSIGN_OR_RETURN(version, Rotate(*token, name, "", PolicyFrom(policy).expiry_days, &previous));
    io.out << fmt::format("key {} of {}: version {} is current (was {})\n", QuotePrintable(name), where, version, previous);
    return OkStatus();
  }();
  Json props = Json::object();
  if (!version.empty()) props = {{"version", version}, {"previousVersion", previous}};
  audit.Record("KeyRotate", st, props, name, where);
  return st;
}

Status KeyPolicyCommand(const config::Config& cfg, const KeyPolicyOptions& opts, Io& io) {
  if (cfg.FindVault(opts.where) == nullptr && cfg.FindPool(opts.where) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault or managed HSM pool named {} in {}", QuotePrintable(opts.where), cfg.source);
  VAULTP11_RETURN_IF_ERROR(CheckName(opts.name));
  VAULTP11_ASSIGN_OR_RETURN(auto st, store::Store::Open(cfg.store, false));
  if (!opts.set) {
    VAULTP11_ASSIGN_OR_RETURN(std::string text, st->Policy(opts.where, opts.name));
    io.out << fmt::format("key {} of {}: {}\n", QuotePrintable(opts.name), opts.where, Describe(PolicyFrom(text)));
    return OkStatus();
  }
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  Status result = [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(CheckPolicy(opts.policy));
    // The key must exist (its current version, not deleted) and be a key.
    VAULTP11_ASSIGN_OR_RETURN(auto records, st->LoadVault(opts.where));
    bool key = false, other = false;
    for (const auto& r : records) {
      if (r.label != opts.name) continue;
      (r.object_class == CKO_PRIVATE_KEY || r.object_class == CKO_SECRET_KEY || r.object_class == CKO_PUBLIC_KEY ? key
                                                                                                                  : other) = true;
    }
    if (other) return Err(CKR_ARGUMENTS_BAD, "{} of {} is not a key", QuotePrintable(opts.name), opts.where);
    if (!key) return Err(CKR_ARGUMENTS_BAD, "{} has no key named {}", opts.where, QuotePrintable(opts.name));
    Json j = PolicyJson(opts.policy);
    VAULTP11_RETURN_IF_ERROR(st->SetPolicy(opts.where, opts.name, j.empty() ? std::string() : j.dump()));
    io.out << fmt::format("key {} of {}: {}\n", QuotePrintable(opts.name), opts.where, Describe(opts.policy));
    return OkStatus();
  }();
  audit.Record("KeyRotationPolicyUpdate", result, {{"policy", PolicyJson(opts.policy)}}, opts.name, opts.where);
  return result;
}

Status LifecycleRunCommand(const config::Config& cfg, const LifecycleOptions& opts, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  const int64_t now = opts.at != 0 ? opts.at : static_cast<int64_t>(time(nullptr));
  VAULTP11_ASSIGN_OR_RETURN(auto provider, OpenProvider(cfg));
  VAULTP11_ASSIGN_OR_RETURN(auto st, store::Store::Open(cfg.store, false));
  Status last = OkStatus();
  size_t rotated = 0, notified = 0, purged = 0, renewed = 0;
  for (const auto& token : provider->tokens()) {
    const std::string where = token->name();
    if (!token->is_pool()) {
      Status s = RunCertificateLifetimeActions(*token, *st, audit, now, io, &renewed, &notified);
      if (!s.ok()) last = s;
    }
    VAULTP11_ASSIGN_OR_RETURN(auto policies, st->Policies(where));
    for (const auto& [name, text] : policies) {
      const RotationPolicy p = PolicyFrom(text);
      auto current = FindCurrentKey(*token, name);
      if (!current.ok()) continue;  // deleted, or gone: nothing to do
      VAULTP11_ASSIGN_OR_RETURN(auto versions, st->VersionsOf(where, name));
      int64_t created = 0;
      for (const auto& v : versions)
        if (v.version == current->version) created = v.created;
      model::ObjectPtr main = current->priv ? current->priv : current->secret;
      const int64_t expires = static_cast<int64_t>(main->attrs.GetUlong(CKA_VAULTP11_EXPIRES).value_or(0));
      bool due = (p.rotate_after_days && created != 0 && now >= created + p.rotate_after_days * kDay) ||
                 (p.rotate_before_expiry_days && expires != 0 && now >= expires - p.rotate_before_expiry_days * kDay);
      if (p.notify_before_expiry_days && expires != 0 && now >= expires - p.notify_before_expiry_days * kDay) {
        VAULTP11_ASSIGN_OR_RETURN(bool first, st->ClaimNotice(where, name, current->version, "near-expiry"));
        if (first) {
          ++notified;
          io.out << fmt::format("notify: key {} of {} version {} expires {}\n", QuotePrintable(name), where,
                                current->version, UtcTimeString(expires));
          audit.Record("KeyNearExpiry", OkStatus(), {{"version", current->version}, {"expires", UtcTimeString(expires)}}, name, where);
        }
      }
      if (!due) continue;
      std::string previous;
      auto version = Rotate(*token, name, current->version, p.expiry_days, &previous);
      if (!version.ok() && version.rv() == CKR_FUNCTION_REJECTED) {
        io.out << fmt::format("key {} of {}: rotated by another run meanwhile\n", QuotePrintable(name), where);
        continue;
      }
      audit.Record("KeyRotate", version.status(),
                   version.ok() ? Json{{"version", *version}, {"previousVersion", previous}, {"trigger", "policy"}}
                                : Json{{"trigger", "policy"}},
                   name, where);
      if (!version.ok()) {
        io.err << fmt::format("vaultp11: rotating key {} of {} failed: {}\n", QuotePrintable(name), where,
                              version.error().message);
        last = version.status();
        continue;
      }
      ++rotated;
      io.out << fmt::format("rotated: key {} of {}: version {} is current (was {})\n", QuotePrintable(name), where,
                            *version, previous);
    }
    // Deleted items whose retention is over are purged.
    VAULTP11_ASSIGN_OR_RETURN(auto deleted, st->DeletedItems(where));
    VAULTP11_ASSIGN_OR_RETURN(bool protection, st->PurgeProtection(where));
    protection = protection || cfg.SoftDeleteOf(where).purge_protection;
    for (const auto& d : deleted) {
      if (now < d.purge_after) continue;
      if (protection && time(nullptr) < d.purge_after) {  // judged at the real time, whatever --at says
        io.out << fmt::format("{} of {}: under purge protection until {}\n", QuotePrintable(d.name), where, UtcTimeString(d.purge_after));
        continue;
      }
      DeletedOptions o{where, d.name, false};
      std::ostringstream quiet;
      Io sub{io.in, quiet, io.err, false};
      Status s = PurgeDeleted(cfg, st.get(), audit, o, sub);
      if (s.ok()) {
        ++purged;
        io.out << quiet.str();
      } else if (s.rv() != CKR_ARGUMENTS_BAD) {  // CKR_ARGUMENTS_BAD: purged by another run meanwhile
        last = s;
      }
    }
  }
  io.out << fmt::format("lifecycle run at {}: {} rotated, {} renewed, {} notified, {} purged\n", UtcTimeString(now), rotated,
                        renewed, notified, purged);
  return last;
}

}  // namespace vaultp11::cli
