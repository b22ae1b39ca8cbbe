// `vaultp11 cert import`: a certificate with its private key (PEM or PKCS#12) becomes a
// certificate item of a vault: key pair and certificate as one version, the issuing CA
// certificates beside it.
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <type_traits>
#include <sstream>
#include <nlohmann/json.hpp>

#include "cli/audit_trail.h"
#include "cli/items.h"
#include "core/provider.h"
#include "model/attributes.h"
#include "model/object.h"
#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_ops.h"
#include "util/strings.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::cli {

namespace {

using Json = nlohmann::ordered_json;
using model::AttributeMap;

constexpr size_t kMaxImportBytes = 1 << 20;

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};

Result<SecureBytes> ReadFileLimited(const std::string& path, size_t max) {
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes data, ReadFileBounded(path, max + 1));
  if (data.size() > max) return Err(CKR_ARGUMENTS_BAD, "{} is over {} bytes", path, max);
  return data;
}

// What an import file holds: the private key and every certificate in it.
struct Bundle {
  PkeyPtr key;
  std::vector<X509Ptr> certs;
};

int PasswordCallback(char* buf, int size, int, void* u) {
  const SecureString* pw = static_cast<const SecureString*>(u);
  if (pw == nullptr || size <= 0 || pw->size() > static_cast<size_t>(size)) return 0;
  std::memcpy(buf, pw->data(), pw->size());
  return static_cast<int>(pw->size());
}

Result<Bundle> ParseBundle(const SecureBytes& data, const SecureString& password, const std::string& file) {
  Bundle b;
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (!bio) return Err(CKR_HOST_MEMORY, "out of memory");
  const std::string_view all(reinterpret_cast<const char*>(data.data()), data.size());
  if (all.find("-----BEGIN ") != std::string_view::npos) {
    // PEM: every certificate, and the private key (OpenSSL skips the other blocks, reads legacy
    // encrypted keys, and keeps key bytes in its secure heap).
    for (;;) {
      X509Ptr c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
      if (!c) break;
      b.certs.push_back(std::move(c));
    }
    ERR_clear_error();
    std::unique_ptr<BIO, BioFree> again(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
    if (!again) return Err(CKR_HOST_MEMORY, "out of memory");
    if (all.find("PRIVATE KEY-----") != std::string_view::npos) {
      b.key.reset(PEM_read_bio_PrivateKey(again.get(), nullptr, PasswordCallback, const_cast<SecureString*>(&password)));
      if (!b.key) {
        ERR_clear_error();
        return Err(CKR_ARGUMENTS_BAD, "{}: the private key cannot be read (wrong password?)", file);
      }
    }
    ERR_clear_error();
  } else {
    PKCS12* p12 = d2i_PKCS12_bio(bio.get(), nullptr);
    if (p12 == nullptr) return Err(CKR_ARGUMENTS_BAD, "{} is neither PEM nor PKCS#12", file);
    EVP_PKEY* key = nullptr;
    X509* cert = nullptr;
    STACK_OF(X509)* ca = nullptr;
    int ok = PKCS12_parse(p12, password.c_str(), &key, &cert, &ca);
    PKCS12_free(p12);
    if (ok != 1) {
      ERR_clear_error();
      return Err(CKR_ARGUMENTS_BAD, "{}: the PKCS#12 file cannot be opened (wrong password?)", file);
    }
    b.key.reset(key);
    if (cert != nullptr) b.certs.emplace_back(cert);
    for (int i = 0; ca != nullptr && i < sk_X509_num(ca); ++i) b.certs.emplace_back(sk_X509_value(ca, i));
    sk_X509_free(ca);  // the certificates now belong to b.certs
  }
  if (!b.key) return Err(CKR_ARGUMENTS_BAD, "{} holds no private key: a certificate is imported with its key", file);
  if (b.certs.empty()) return Err(CKR_ARGUMENTS_BAD, "{} holds no certificate", file);
  return b;
}

// The templates of a certificate's key pair: token objects named like the certificate, managed
// by it (neither modifiable nor destroyable on their own); the private key sensitive and not
// extractable.
void CertKeyTemplates(const std::string& name, const std::string& tags, AttributeMap& pt, AttributeMap& vt) {
  for (AttributeMap* t : {&pt, &vt}) {
    if (!tags.empty()) t->SetString(CKA_VAULTP11_TAGS, tags);
    t->SetBool(CKA_TOKEN, true);
    t->SetString(CKA_LABEL, name);
    t->SetBool(CKA_MODIFIABLE, false);
    t->SetBool(CKA_DESTROYABLE, false);
  }
  vt.SetBool(CKA_PRIVATE, true);
  vt.SetBool(CKA_SENSITIVE, true);
  vt.SetBool(CKA_EXTRACTABLE, false);
}

Result<Bytes> Der(X509* x) {
  int n = i2d_X509(x, nullptr);
  if (n <= 0) return Err(CKR_ARGUMENTS_BAD, "a certificate cannot be encoded");
  Bytes out(static_cast<size_t>(n));
  unsigned char* p = out.data();
  i2d_X509(x, &p);
  return out;
}

Result<std::shared_ptr<model::Object>> CertObject(const std::string& label, const Bytes& der, const std::string& tags = "") {
  AttributeMap t;
  if (!tags.empty()) t.SetString(CKA_VAULTP11_TAGS, tags);
  t.SetUlong(CKA_CLASS, CKO_CERTIFICATE);
  t.SetUlong(CKA_CERTIFICATE_TYPE, CKC_X_509);
  t.SetBool(CKA_TOKEN, true);
  t.SetString(CKA_LABEL, label);
  t.Set(CKA_VALUE, der);
  return model::CreateObject(t);
}

// An exportable certificate's bundle: a data object of the version holding the certificate,
// its issuers and the private key, as PEM (PKCS#8 key, then the certificates) or PKCS#12 (empty
// password); private, and neither modifiable nor destroyable on its own. Its value is read with
// the secrets get permission, like any secret.
Result<std::shared_ptr<model::Object>> BundleObject(const std::string& name, const std::string& format, EVP_PKEY* key,
                                                    X509* leaf, const std::vector<X509*>& issuers) {
  std::unique_ptr<BIO, BioFree> mem(BIO_new(BIO_s_secmem()));
  if (!mem) return Err(CKR_HOST_MEMORY, "out of memory");
  bool ok = true;
  if (format == "pkcs12") {
    STACK_OF(X509)* ca = sk_X509_new_null();
    for (X509* c : issuers) ok = ok && ca != nullptr && sk_X509_push(ca, c) > 0;
    PKCS12* p12 = ok ? PKCS12_create_ex("", name.c_str(), key, leaf, ca, 0, 0, 0, 0, 0, ossl::LibCtx(), nullptr) : nullptr;
    sk_X509_free(ca);  // the certificates stay the caller's
    ok = p12 != nullptr && i2d_PKCS12_bio(mem.get(), p12) == 1;
    PKCS12_free(p12);
  } else {
    ok = PEM_write_bio_PrivateKey(mem.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1 &&
         PEM_write_bio_X509(mem.get(), leaf) == 1;
    for (X509* c : issuers) ok = ok && PEM_write_bio_X509(mem.get(), c) == 1;
  }
  ERR_clear_error();
  if (!ok) return Err(CKR_FUNCTION_FAILED, "the certificate's {} bundle cannot be made", format);
  BUF_MEM* buf = nullptr;
  BIO_get_mem_ptr(mem.get(), &buf);
  AttributeMap t;
  t.SetUlong(CKA_CLASS, CKO_DATA);
  t.SetBool(CKA_TOKEN, true);
  t.SetBool(CKA_PRIVATE, true);
  t.SetString(CKA_LABEL, name);
  t.SetBool(CKA_MODIFIABLE, false);
  t.SetBool(CKA_DESTROYABLE, false);
  t.SetString(CKA_VAULTP11_CONTENT_TYPE, format == "pkcs12" ? kPkcs12BundleType : kPemBundleType);
  t.Set(CKA_VALUE, std::span(reinterpret_cast<const uint8_t*>(buf->data), buf->length));
  auto obj = model::CreateObject(t);
  if (const Bytes* v = t.Get(CKA_VALUE)) OPENSSL_cleanse(const_cast<uint8_t*>(v->data()), v->size());
  return obj;
}

// What `cert` commands work on: the vault's token in a provider of their own, and the store.
struct CertPlace {
  std::unique_ptr<core::Provider> provider;
  core::Token* token = nullptr;
  std::unique_ptr<store::Store> st;
};
Result<CertPlace> OpenCertPlace(const config::Config& cfg, const std::string& vault) {
  CertPlace p;
  VAULTP11_ASSIGN_OR_RETURN(p.provider, core::Provider::Create(cfg.source, /*threads=*/true));
  for (const auto& t : p.provider->tokens())
    if (t->name() == vault) p.token = t.get();
  if (p.token == nullptr) return Err(CKR_ARGUMENTS_BAD, "vault {} is not loaded", QuotePrintable(vault));
  VAULTP11_ASSIGN_OR_RETURN(p.st, store::Store::Open(cfg.store, false));
  return p;
}

// Issuer certificates of `certs` (all but `leaf`), each stored as an item of its own (named
// <name>-chain-<n>, the first free n) unless the vault has it; returns how many were added.
Result<size_t> StoreIssuers(core::Token& token, const std::string& name, const std::vector<X509Ptr>& certs, size_t leaf,
                            const std::string& version) {
  size_t added = 0;
  for (size_t i = 0; i < certs.size(); ++i) {
    if (i == leaf) continue;
    VAULTP11_ASSIGN_OR_RETURN(Bytes der, Der(certs[i].get()));
    AttributeMap find;
    find.SetUlong(CKA_CLASS, CKO_CERTIFICATE);
    find.Set(CKA_VALUE, der);
    VAULTP11_ASSIGN_OR_RETURN(const auto same, token.Find(find));
    if (!same.empty()) continue;
    // The first free name <name>-chain-N (an issuer never becomes a version of another item).
    Status stored = Err(CKR_FUNCTION_FAILED, "no free name for an issuer certificate of {}", name);
    for (int n = 1; n <= 100 && !stored.ok(); ++n) {
      const std::string label = fmt::format("{}-chain-{}", name.substr(0, 110), n);
      VAULTP11_ASSIGN_OR_RETURN(auto ca, CertObject(label, der));
      stored = token.AddVersion({ca}, /*new_version=*/false).status();
      if (!stored.ok() && stored.rv() != CKR_ATTRIBUTE_VALUE_INVALID) break;  // not a name clash
    }
    if (!stored.ok())
      return Err(stored.rv(), "the certificate was stored (version {}) but an issuer certificate was not: {}", version,
                 stored.error().message);
    ++added;
  }
  return added;
}

Status Import(const config::Config& cfg, const CertImportOptions& o, Io& io, std::string* version, size_t* chain) {
  if (cfg.FindVault(o.vault) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {} (pools hold HSM keys only, no certificates)",
               QuotePrintable(o.vault), cfg.source);
  VAULTP11_RETURN_IF_ERROR(CheckName(o.name));
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes data, ReadFileLimited(o.file, kMaxImportBytes));
  SecureString password;
  if (!o.password_file.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes pw, ReadFileLimited(o.password_file, 4096));
    auto eol = std::find_if(pw.begin(), pw.end(), [](uint8_t c) { return c == '\n' || c == '\r'; });
    password.assign(pw.begin(), eol);  // the first line
  } else if (io.interactive) {
    VAULTP11_ASSIGN_OR_RETURN(password, PromptSecret(io, "Password of " + o.file));
  }
  VAULTP11_ASSIGN_OR_RETURN(Bundle b, ParseBundle(data, password, o.file));
  // The leaf is the certificate of the key; the others are its issuers.
  size_t leaf = b.certs.size();
  for (size_t i = 0; i < b.certs.size() && leaf == b.certs.size(); ++i)
    if (X509_check_private_key(b.certs[i].get(), b.key.get()) == 1) leaf = i;
  ERR_clear_error();
  if (leaf == b.certs.size())
    return Err(CKR_ARGUMENTS_BAD, "{}: no certificate in it matches its private key; nothing imported", o.file);
  // The key in PKCS#8 for the module (its own library context).
  std::unique_ptr<BIO, BioFree> mem(BIO_new(BIO_s_secmem()));
  if (!mem || i2d_PKCS8PrivateKey_bio(mem.get(), b.key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return Err(CKR_FUNCTION_FAILED, "the private key cannot be encoded");
  BUF_MEM* buf = nullptr;
  BIO_get_mem_ptr(mem.get(), &buf);
  SecureBytes pkcs8(reinterpret_cast<const uint8_t*>(buf->data), reinterpret_cast<const uint8_t*>(buf->data) + buf->length);

  if (o.exportable && o.hsm) return Err(CKR_ARGUMENTS_BAD, "--exportable: an HSM key never leaves the HSM");
  if (o.export_format != "pem" && o.export_format != "pkcs12")
    return Err(CKR_ARGUMENTS_BAD, "--export-format must be pem or pkcs12");
  std::shared_ptr<model::Object> bundle;
  if (o.exportable) {
    std::vector<X509*> issuers;
    for (size_t i = 0; i < b.certs.size(); ++i)
      if (i != leaf) issuers.push_back(b.certs[i].get());
    VAULTP11_ASSIGN_OR_RETURN(bundle, BundleObject(o.name, o.export_format, b.key.get(), b.certs[leaf].get(), issuers));
  }
  b.key.reset();

  VAULTP11_ASSIGN_OR_RETURN(CertPlace place, OpenCertPlace(cfg, o.vault));
  core::Token* token = place.token;
  if (o.hsm && (token->hsm() == nullptr || token->is_pool()))
    return Err(CKR_ARGUMENTS_BAD, "vault {} has no HSM: --hsm needs a vault with `hsms` (sku premium)", o.vault);
  std::string tags;
  if (!o.tags.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(tags, TagsJson(o.tags));
  }
  VAULTP11_ASSIGN_OR_RETURN(Bytes leaf_der, Der(b.certs[leaf].get()));
  VAULTP11_ASSIGN_OR_RETURN(auto cert, CertObject(o.name, leaf_der, tags));
  AttributeMap pt, vt;
  CertKeyTemplates(o.name, tags, pt, vt);
  VAULTP11_ASSIGN_OR_RETURN(model::KeyPair kp, o.hsm ? model::ImportHsmKeyPair(pt, vt, pkcs8, *token->hsm())
                                                     : model::ImportKeyPair(pt, vt, pkcs8));
  // A new version when the name is a certificate already; refused when it is a key or secret
  // (an HSM key made for it is then destroyed).
  std::vector<std::shared_ptr<model::Object>> objs = {kp.private_key, kp.public_key, cert};
  if (bundle) objs.push_back(bundle);
  auto added = token->AddVersion(objs, /*new_version=*/true);
  if (!added.ok()) {
    token->DiscardHsmKey(*kp.private_key);
    return added.status();
  }
  *version = cert->attrs.GetString(CKA_VAULTP11_VERSION);
  // An imported certificate is managed from outside: a `cert create` policy no longer applies.
  VAULTP11_RETURN_IF_ERROR(place.st->SetPolicy(o.vault, o.name, ""));
  // The issuers, each an item of its own unless the vault has it.
  VAULTP11_ASSIGN_OR_RETURN(*chain, StoreIssuers(*token, o.name, b.certs, leaf, *version));
  io.out << fmt::format("certificate {} imported into vault {}: version {} ({} key {}), {} issuer certificate{} added\n",
                        QuotePrintable(o.name), QuotePrintable(o.vault), *version, o.hsm ? "HSM" : "software",
                        kp.private_key->key_type() == CKK_RSA ? "RSA" : "EC", *chain, *chain == 1 ? "" : "s");
  return OkStatus();
}

}  // namespace

Status CertImportCommand(const config::Config& cfg, const CertImportOptions& opts, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string version;
  size_t chain = 0;
  Status st = Import(cfg, opts, io, &version, &chain);
  Json props = {{"file", AbsolutePath(opts.file)}};
  if (!version.empty()) {
    props["version"] = version;
    props["issuersAdded"] = chain;
  }
  audit.Record("CertificateImport", st, props, opts.name, opts.vault);
  return st;
}

}  // namespace vaultp11::cli

// ---- cert create / cert renew ---------------------------------------------------------------

namespace vaultp11::cli {

namespace {

// DER OID of a named curve for CKA_EC_PARAMS.
Result<Bytes> CurveParams(const std::string& curve) {
  int nid = curve == "P-256" ? NID_X9_62_prime256v1
            : curve == "P-384" ? NID_secp384r1
            : curve == "P-521" ? NID_secp521r1
            : curve == "secp256k1" ? NID_secp256k1 : NID_undef;
  if (nid == NID_undef) return Err(CKR_ARGUMENTS_BAD, "curve {} is not one of P-256, P-384, P-521, secp256k1", QuotePrintable(curve));
  ASN1_OBJECT* obj = OBJ_nid2obj(nid);
  int n = i2d_ASN1_OBJECT(obj, nullptr);
  Bytes out(static_cast<size_t>(n));
  unsigned char* p = out.data();
  i2d_ASN1_OBJECT(obj, &p);
  return out;
}

// "CN=a,O=b" or "/CN=a/O=b" as an X509_NAME.
Result<X509_NAME*> ParseSubject(const std::string& dn) {
  std::vector<std::string> parts;
  std::string cur;
  const char sep = !dn.empty() && dn[0] == '/' ? '/' : ',';
  for (char c : (sep == '/' ? dn.substr(1) : dn)) {
    if (c == sep) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  X509_NAME* name = X509_NAME_new();
  for (std::string p : parts) {
    while (!p.empty() && p.front() == ' ') p.erase(0, 1);
    size_t eq = p.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == p.size() ||
        X509_NAME_add_entry_by_txt(name, p.substr(0, eq).c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(p.c_str() + eq + 1), -1, -1, 0) != 1) {
      X509_NAME_free(name);
      ERR_clear_error();
      return Err(CKR_ARGUMENTS_BAD, "subject {}: each part must be ATTRIBUTE=value (CN, O, OU, C, L, ST, ...)", QuotePrintable(dn, 200));
    }
  }
  return name;
}

Json PolicyJsonOf(const CertCreateOptions& o) {
  return {{"kind", "certificate"}, {"subject", o.subject}, {"sans", o.sans},     {"ekus", o.ekus},
          {"keyUsage", o.key_usage}, {"validityMonths", o.validity_months},    {"issuer", o.issuer},
          {"key", o.key},           {"hsm", o.hsm},       {"exportable", o.exportable}, {"exportFormat", o.export_format}, {"tags", o.tags}, {"ca", o.ca},         {"reuseKey", o.reuse_key},
          {"lifetimeAction", o.lifetime_action}, {"lifetimePercentage", o.lifetime_percentage},
          {"daysBeforeExpiry", o.days_before_expiry}};
}

CertCreateOptions OptionsFromPolicy(const std::string& vault, const std::string& name, const Json& j) {
  CertCreateOptions o;
  o.vault = vault;
  o.name = name;
  o.subject = j.value("subject", "");
  o.sans = j.value("sans", std::vector<std::string>{});
  o.ekus = j.value("ekus", std::vector<std::string>{});
  o.key_usage = j.value("keyUsage", std::vector<std::string>{});
  o.validity_months = j.value("validityMonths", 12);
  o.issuer = j.value("issuer", "Self");
  o.key = j.value("key", "ec:P-256");
  o.hsm = j.value("hsm", false);
  o.exportable = j.value("exportable", false);
  o.tags = j.value("tags", std::vector<std::string>{});
  o.export_format = j.value("exportFormat", "pem");
  o.ca = j.value("ca", false);
  o.reuse_key = j.value("reuseKey", false);
  o.lifetime_action = j.value("lifetimeAction", "auto-renew");
  o.lifetime_percentage = j.value("lifetimePercentage", 0);
  o.days_before_expiry = j.value("daysBeforeExpiry", 0);
  return o;
}

Status AddExt(X509* x, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str());
  if (ext == nullptr) {
    ERR_clear_error();
    return Err(CKR_ARGUMENTS_BAD, "{} {} is not valid", OBJ_nid2sn(nid), QuotePrintable(value, 200));
  }
  int ok = X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  if (ok != 1) return Err(CKR_FUNCTION_FAILED, "adding {} failed", OBJ_nid2sn(nid));
  return OkStatus();
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

// Who signs a certificate or a request: a private key object (software, or in the vault's HSM)
// and its public key (the HSM's signature is checked with it before it is used).
struct Signer {
  model::ObjectPtr priv;
  EVP_PKEY* pub = nullptr;
};

// The digest follows the signer's key: SHA-384 for P-384, SHA-512 for P-521, else SHA-256.
const EVP_MD* DigestFor(EVP_PKEY* key) {
  const int bits = EVP_PKEY_get_bits(key);
  return !EVP_PKEY_is_a(key, "EC") || bits <= 256 ? EVP_sha256() : bits <= 384 ? EVP_sha384() : EVP_sha512();
}

Status SetAlgorithm(X509_ALGOR* a, EVP_PKEY* pub, const EVP_MD* md) {
  const bool rsa = EVP_PKEY_is_a(pub, "RSA");
  int nid = NID_undef;
  if (OBJ_find_sigid_by_algs(&nid, EVP_MD_get_type(md), rsa ? NID_rsaEncryption : NID_X9_62_id_ecPublicKey) != 1)
    return Err(CKR_FUNCTION_FAILED, "no signature algorithm for this key and digest");
  if (X509_ALGOR_set0(a, OBJ_nid2obj(nid), rsa ? V_ASN1_NULL : V_ASN1_UNDEF, nullptr) != 1)
    return Err(CKR_HOST_MEMORY, "out of memory");
  return OkStatus();
}

// The signature of `tbs` by an HSM key: the digest made here, signed in the HSM (CKM_RSA_PKCS
// over the DigestInfo, or CKM_ECDSA), as X.509 carries it (ECDSA as a DER ECDSA-Sig-Value).
Result<Bytes> HsmSign(const model::Object& priv, EVP_PKEY* pub, const EVP_MD* md, std::span<const uint8_t> tbs) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(tbs.data(), tbs.size(), digest, &digest_len, md, nullptr) != 1)
    return Err(CKR_FUNCTION_FAILED, "hashing failed");
  VAULTP11_ASSIGN_OR_RETURN(model::InnerKeyRef ik, priv.material->HsmTarget());
  const bool rsa = EVP_PKEY_is_a(pub, "RSA");
  Bytes in;
  if (rsa) {
    // DigestInfo prefixes (RFC 8017 section 9.2, note 1).
    static const Bytes k256 = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    static const Bytes k384 = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
    static const Bytes k512 = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};
    const int nid = EVP_MD_get_type(md);
    in = nid == NID_sha512 ? k512 : nid == NID_sha384 ? k384 : k256;
  }
  in.insert(in.end(), digest, digest + digest_len);
  const size_t half = static_cast<size_t>(EVP_PKEY_get_bits(pub) + 7) / 8;
  CK_MECHANISM m{rsa ? CKM_RSA_PKCS : CKM_ECDSA, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(auto op, p11::NewInnerSignOp(ik.token, ik.handle, m, rsa ? half : 2 * half));
  VAULTP11_ASSIGN_OR_RETURN(Bytes sig, op->Sign(in));
  if (rsa) return sig;
  if (sig.size() != 2 * half) return Err(CKR_DEVICE_ERROR, "the HSM's ECDSA signature has {} bytes", sig.size());
  ECDSA_SIG* es = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(sig.data(), static_cast<int>(half), nullptr);
  BIGNUM* sv = BN_bin2bn(sig.data() + half, static_cast<int>(half), nullptr);
  if (es == nullptr || r == nullptr || sv == nullptr || ECDSA_SIG_set0(es, r, sv) != 1) {
    ECDSA_SIG_free(es);
    BN_free(r);
    BN_free(sv);
    return Err(CKR_HOST_MEMORY, "out of memory");
  }
  unsigned char* der = nullptr;
  const int n = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  if (n <= 0) return Err(CKR_FUNCTION_FAILED, "encoding the signature failed");
  Bytes out(der, der + n);
  OPENSSL_free(der);
  return out;
}

void SetSignature(const ASN1_BIT_STRING* sig, const Bytes& value) {
  auto* bs = const_cast<ASN1_BIT_STRING*>(sig);  // OpenSSL hands it out const, for signers like this one
  ASN1_BIT_STRING_set(bs, const_cast<uint8_t*>(value.data()), static_cast<int>(value.size()));
  bs->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
  bs->flags |= ASN1_STRING_FLAG_BITS_LEFT;
}

// Signs certificate `x` (X509) or request `x` (X509_REQ) with `s`.
template <typename T>
Status SignAsn1(T* x, const Signer& s) {
  constexpr bool kCert = std::is_same_v<T, X509>;
  const EVP_MD* md = DigestFor(s.pub);
  if (s.priv->material->hsm() == nullptr) {
    VAULTP11_ASSIGN_OR_RETURN(ossl::KeyRef k, s.priv->Key());
    int ok = 0;
    if constexpr (kCert) ok = X509_sign(x, k.pkey.get(), md);
    else ok = X509_REQ_sign(x, k.pkey.get(), md);
    if (ok <= 0) {
      ERR_clear_error();
      return Err(CKR_FUNCTION_FAILED, "signing failed");
    }
    return OkStatus();
  }
  const ASN1_BIT_STRING* sig = nullptr;
  const X509_ALGOR* alg = nullptr;
  unsigned char* tbs = nullptr;
  int n = 0;
  if constexpr (kCert) {
    X509_get0_signature(&sig, &alg, x);
    VAULTP11_RETURN_IF_ERROR(SetAlgorithm(const_cast<X509_ALGOR*>(X509_get0_tbs_sigalg(x)), s.pub, md));
    VAULTP11_RETURN_IF_ERROR(SetAlgorithm(const_cast<X509_ALGOR*>(alg), s.pub, md));
    n = i2d_re_X509_tbs(x, &tbs);
  } else {
    X509_REQ_get0_signature(x, &sig, &alg);
    VAULTP11_RETURN_IF_ERROR(SetAlgorithm(const_cast<X509_ALGOR*>(alg), s.pub, md));
    n = i2d_re_X509_REQ_tbs(x, &tbs);
  }
  if (n <= 0) return Err(CKR_FUNCTION_FAILED, "encoding what is signed failed");
  auto signature = HsmSign(*s.priv, s.pub, md, std::span<const uint8_t>(tbs, static_cast<size_t>(n)));
  OPENSSL_free(tbs);
  VAULTP11_RETURN_IF_ERROR(signature.status());
  SetSignature(sig, *signature);
  int verified = 0;
  if constexpr (kCert) verified = X509_verify(x, s.pub);
  else verified = X509_REQ_verify(x, s.pub);
  ERR_clear_error();
  if (verified != 1) return Err(CKR_DEVICE_ERROR, "the HSM's signature does not verify with the key's public key");
  return OkStatus();
}

// The certificate for public key `subject_key` under `o`'s policy, signed by `issuer` (the
// subject's own key for Self) with `issuer_cert` as issuer (null for Self).
Result<Bytes> MakeCertificate(const CertCreateOptions& o, EVP_PKEY* subject_key, const Signer& issuer, X509* issuer_cert) {
  std::unique_ptr<X509, X509Free> x(X509_new_ex(ossl::LibCtx(), nullptr));
  if (!x) return Err(CKR_HOST_MEMORY, "out of memory");
  X509_set_version(x.get(), X509_VERSION_3);
  uint8_t serial[16];
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(serial));
  serial[0] &= 0x7f;  // positive
  serial[0] |= 0x01;  // and 16 bytes long
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x.get()));
  BN_free(bn);
  VAULTP11_ASSIGN_OR_RETURN(X509_NAME * subject, ParseSubject(o.subject));
  X509_set_subject_name(x.get(), subject);
  X509_set_issuer_name(x.get(), issuer_cert ? X509_get_subject_name(issuer_cert) : subject);
  X509_NAME_free(subject);
  const time_t now = time(nullptr);
  std::tm end{};
  gmtime_r(&now, &end);
  end.tm_mon += o.validity_months;
  const time_t not_after = timegm(&end);
  if (issuer_cert != nullptr && ASN1_TIME_cmp_time_t(X509_get0_notAfter(issuer_cert), not_after) < 0)
    return Err(CKR_ARGUMENTS_BAD, "the issuer's certificate expires before {} months from now", o.validity_months);
  ASN1_TIME_set(X509_getm_notBefore(x.get()), now - 300);  // 5 minutes of clock skew
  ASN1_TIME_set(X509_getm_notAfter(x.get()), not_after);
  X509_set_pubkey(x.get(), subject_key);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer_cert ? issuer_cert : x.get(), x.get(), nullptr, nullptr, 0);
  VAULTP11_RETURN_IF_ERROR(AddExt(x.get(), &ctx, NID_basic_constraints, o.ca ? "critical,CA:TRUE" : "critical,CA:FALSE"));
  std::vector<std::string> usage = o.key_usage;
  if (usage.empty()) usage = o.ca ? std::vector<std::string>{"keyCertSign", "cRLSign"} : std::vector<std::string>{"digitalSignature"};
  VAULTP11_RETURN_IF_ERROR(AddExt(x.get(), &ctx, NID_key_usage, "critical," + Join(usage)));
  if (!o.ekus.empty()) VAULTP11_RETURN_IF_ERROR(AddExt(x.get(), &ctx, NID_ext_key_usage, Join(o.ekus)));
  if (!o.sans.empty()) VAULTP11_RETURN_IF_ERROR(AddExt(x.get(), &ctx, NID_subject_alt_name, Join(o.sans)));
  VAULTP11_RETURN_IF_ERROR(AddExt(x.get(), &ctx, NID_subject_key_identifier, "hash"));
  if (issuer_cert != nullptr)
    VAULTP11_RETURN_IF_ERROR(AddExt(x.get(), &ctx, NID_authority_key_identifier,
                                    X509_get0_subject_key_id(issuer_cert) != nullptr ? "keyid:always" : "issuer:always"));
  VAULTP11_RETURN_IF_ERROR(SignAsn1(x.get(), issuer));
  return Der(x.get());
}

// The current version's objects of certificate item `name` on `token` (a pending request's
// version has its key pair and its CSR, no certificate yet).
struct CurrentCert {
  model::ObjectPtr priv, pub, cert, csr;
  std::string version;
};
Result<CurrentCert> FindCurrentVersion(core::Token& token, const std::string& name) {
  VAULTP11_ASSIGN_OR_RETURN(CurrentObjects cur, FindCurrentObjects(token, name, /*token_only=*/false));
  CurrentCert c{cur.priv, cur.pub, cur.cert, cur.data, {}};
  if (c.priv) c.version = c.priv->attrs.GetString(CKA_VAULTP11_VERSION);
  return c;
}
Result<CurrentCert> FindCurrentCert(core::Token& token, const std::string& name) {
  VAULTP11_ASSIGN_OR_RETURN(CurrentCert c, FindCurrentVersion(token, name));
  if (!c.cert || !c.priv) return Err(CKR_ARGUMENTS_BAD, "vault {} has no certificate {} with its key", token.name(), QuotePrintable(name));
  return c;
}

Result<X509Ptr> ParseDer(const Bytes& der) {
  const unsigned char* p = der.data();
  X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!x) return Err(CKR_FUNCTION_FAILED, "a stored certificate cannot be read");
  return x;
}

// The policy's checks that need no store: names, months, lifetime action, SANs, subject.
Status CheckCertPolicy(const config::Config& cfg, const CertCreateOptions& o) {
  if (cfg.FindVault(o.vault) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {} (pools hold HSM keys only, no certificates)",
               QuotePrintable(o.vault), cfg.source);
  VAULTP11_RETURN_IF_ERROR(CheckName(o.name));
  if (o.validity_months < 1 || o.validity_months > 1200)
    return Err(CKR_ARGUMENTS_BAD, "--validity-months must be from 1 to 1200, got {}", o.validity_months);
  if (o.exportable && o.hsm) return Err(CKR_ARGUMENTS_BAD, "--exportable: an HSM key never leaves the HSM");
  if (o.export_format != "pem" && o.export_format != "pkcs12")
    return Err(CKR_ARGUMENTS_BAD, "--export-format must be pem or pkcs12");
  if (o.lifetime_action != "auto-renew" && o.lifetime_action != "notify")
    return Err(CKR_ARGUMENTS_BAD, "--lifetime-action must be auto-renew or notify");
  if (o.lifetime_percentage != 0 && o.days_before_expiry != 0)
    return Err(CKR_ARGUMENTS_BAD, "give --lifetime-percentage or --days-before-expiry, not both");
  if (o.lifetime_percentage < 0 || o.lifetime_percentage > 99)
    return Err(CKR_ARGUMENTS_BAD, "--lifetime-percentage must be from 1 to 99");
  if (o.days_before_expiry < 0 || o.days_before_expiry > 36500)
    return Err(CKR_ARGUMENTS_BAD, "--days-before-expiry must be from 1 to 36500");
  if (o.days_before_expiry >= o.validity_months * 28)
    return Err(CKR_ARGUMENTS_BAD, "--days-before-expiry ({}) is not shorter than the validity ({} months)",
               o.days_before_expiry, o.validity_months);
  for (const std::string& san : o.sans)
    if (!(san.rfind("DNS:", 0) == 0 || san.rfind("email:", 0) == 0 || san.rfind("URI:", 0) == 0) || san.find(',') != std::string::npos)
      return Err(CKR_ARGUMENTS_BAD, "--san {} must be DNS:name, email:address or URI:uri", QuotePrintable(san, 200));
  VAULTP11_ASSIGN_OR_RETURN(X509_NAME * probe, ParseSubject(o.subject));
  X509_NAME_free(probe);
  return OkStatus();
}

// The key pair of a new version: a fresh one (in the vault's HSM with --hsm), or (a renewal
// with reuse) the current one's: the same software key, or the same HSM key referenced again
// (`*reused` then says so: a failure must not destroy it).
Result<model::KeyPair> NewKeyPair(core::Token& token, const CertCreateOptions& o, bool renewal, bool* reused) {
  std::string tags;
  if (!o.tags.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(tags, TagsJson(o.tags));
  }
  AttributeMap pt, vt;
  CertKeyTemplates(o.name, tags, pt, vt);
  model::KeyPair kp;
  *reused = false;
  if (o.hsm && (token.hsm() == nullptr || token.is_pool()))
    return Err(CKR_ARGUMENTS_BAD, "vault {} has no HSM: --hsm needs a vault with `hsms` (sku premium)", token.name());
  if (renewal && o.reuse_key) {
    VAULTP11_ASSIGN_OR_RETURN(CurrentCert cur, FindCurrentVersion(token, o.name));
    if (!cur.priv || !cur.pub) return Err(CKR_ARGUMENTS_BAD, "vault {} has no key {} to reuse", token.name(), QuotePrintable(o.name));
    if (cur.priv->material->hsm() != nullptr) {
      // New outer objects for the same inner key (the version's own CKA_ID is given on insert).
      kp.private_key = std::make_shared<model::Object>(*cur.priv);
      kp.public_key = std::make_shared<model::Object>(*cur.pub);
      for (model::Object* k : {kp.private_key.get(), kp.public_key.get()}) {
        k->store_id = 0;
        k->attrs.Erase(CKA_VAULTP11_VERSION);
        k->attrs.Erase(CKA_ID);
      }
      *reused = true;
      return kp;
    }
    VAULTP11_ASSIGN_OR_RETURN(auto secret, cur.priv->material->Secret());
    VAULTP11_ASSIGN_OR_RETURN(kp, model::ImportKeyPair(pt, vt, *secret));
    // The same key: its history (made here, never extractable) carries over.
    for (CK_ATTRIBUTE_TYPE t : {CKA_LOCAL, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_KEY_GEN_MECHANISM})
      if (const Bytes* v = cur.priv->attrs.Get(t)) {
        kp.private_key->attrs.Set(t, *v);
        if (t == CKA_LOCAL || t == CKA_KEY_GEN_MECHANISM) kp.public_key->attrs.Set(t, *v);
      }
    return kp;
  }
  if (o.key.rfind("rsa:", 0) == 0) {
    const std::string bits = o.key.substr(4);
    if (bits != "2048" && bits != "3072" && bits != "4096")
      return Err(CKR_ARGUMENTS_BAD, "--key rsa:{} : RSA keys are 2048, 3072 or 4096 bits", bits);
    pt.SetUlong(CKA_MODULUS_BITS, std::stoul(bits));
    if (o.hsm) return model::GenerateHsmKeyPair(CKM_RSA_PKCS_KEY_PAIR_GEN, pt, vt, *token.hsm());
    return model::GenerateKeyPair(CKM_RSA_PKCS_KEY_PAIR_GEN, pt, vt);
  }
  if (o.key.rfind("ec:", 0) == 0) {
    VAULTP11_ASSIGN_OR_RETURN(Bytes params, CurveParams(o.key.substr(3)));
    pt.Set(CKA_EC_PARAMS, params);
    if (o.hsm) return model::GenerateHsmKeyPair(CKM_EC_KEY_PAIR_GEN, pt, vt, *token.hsm());
    return model::GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, pt, vt);
  }
  return Err(CKR_ARGUMENTS_BAD, "--key {} must be rsa:BITS or ec:CURVE", QuotePrintable(o.key, 40));
}

// A key made for a new version and not kept (any failure before the version is stored) leaves
// nothing in the HSM; a reused key is never discarded.
struct NewKeyGuard {
  core::Token& token;
  const model::Object& key;
  bool keep = false;
  ~NewKeyGuard() {
    if (!keep) token.DiscardHsmKey(key);
  }
};

// A new item's policy is written first and taken back when the item cannot be made; a new
// version commits only over `expect`, the version it replaces.
Result<std::vector<CK_OBJECT_HANDLE>> AddCertVersion(core::Token& token, store::Store& st, const CertCreateOptions& o,
                                                     const std::string& expect,
                                                     const std::vector<std::shared_ptr<model::Object>>& objs) {
  if (!expect.empty()) return token.AddVersion(objs, /*new_version=*/true, expect);
  // A new item: the name must be free (not a key, secret or deleted item).
  VAULTP11_ASSIGN_OR_RETURN(std::string existing, st.Policy(o.vault, o.name));
  if (!existing.empty()) return Err(CKR_ARGUMENTS_BAD, "{} has a policy already: renew it instead", QuotePrintable(o.name));
  VAULTP11_RETURN_IF_ERROR(st.SetPolicy(o.vault, o.name, PolicyJsonOf(o).dump()));
  auto added = token.AddVersion(objs, /*new_version=*/false);
  if (!added.ok()) (void)st.SetPolicy(o.vault, o.name, "");
  return added;
}

// Creates (expect empty) or renews (expect = the current version) certificate `o.name`.
Status CreateOrRenew(core::Token& token, store::Store& st, const CertCreateOptions& o, const std::string& expect, Io& io,
                     std::string* version) {
  if (o.issuer == "Unknown")
    return Err(CKR_ARGUMENTS_BAD,
               "certificate {} is issued by an external CA: make a new request with `vaultp11 cert csr`, then `cert merge`",
               QuotePrintable(o.name));
  bool reused = false;
  VAULTP11_ASSIGN_OR_RETURN(model::KeyPair kp, NewKeyPair(token, o, !expect.empty(), &reused));
  NewKeyGuard guard{token, *kp.private_key, reused};
  VAULTP11_ASSIGN_OR_RETURN(ossl::KeyRef subject_pub, kp.public_key->Key());
  // The issuer: the key itself, or a CA certificate item of the vault (software or HSM key).
  Signer signer{kp.private_key, subject_pub.pkey.get()};
  X509Ptr issuer_cert;
  if (o.issuer != "Self") {
    if (o.issuer == o.name) return Err(CKR_ARGUMENTS_BAD, "a certificate cannot be its own named issuer (use Self)");
    VAULTP11_ASSIGN_OR_RETURN(CurrentCert issuer, FindCurrentCert(token, o.issuer));
    VAULTP11_ASSIGN_OR_RETURN(issuer_cert, ParseDer(*issuer.cert->attrs.Get(CKA_VALUE)));
    if (X509_check_ca(issuer_cert.get()) == 0)
      return Err(CKR_ARGUMENTS_BAD, "issuer {} is not a CA certificate (create it with --ca)", QuotePrintable(o.issuer));
    signer = Signer{issuer.priv, X509_get0_pubkey(issuer_cert.get())};
    if (signer.pub == nullptr) return Err(CKR_FUNCTION_FAILED, "issuer {}'s public key cannot be read", QuotePrintable(o.issuer));
  }
  VAULTP11_ASSIGN_OR_RETURN(Bytes der, MakeCertificate(o, subject_pub.pkey.get(), signer, issuer_cert.get()));
  std::string tags;
  if (!o.tags.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(tags, TagsJson(o.tags));
  }
  VAULTP11_ASSIGN_OR_RETURN(auto cert, CertObject(o.name, der, tags));
  std::vector<std::shared_ptr<model::Object>> objs = {kp.private_key, kp.public_key, cert};
  if (o.exportable) {
    VAULTP11_ASSIGN_OR_RETURN(ossl::KeyRef key, kp.private_key->Key());
    VAULTP11_ASSIGN_OR_RETURN(X509Ptr leaf, ParseDer(der));
    std::vector<X509*> issuers;
    if (issuer_cert) issuers.push_back(issuer_cert.get());
    VAULTP11_ASSIGN_OR_RETURN(auto bundle, BundleObject(o.name, o.export_format, key.pkey.get(), leaf.get(), issuers));
    objs.push_back(bundle);
  }
  VAULTP11_RETURN_IF_ERROR(AddCertVersion(token, st, o, expect, objs).status());
  guard.keep = true;
  *version = cert->attrs.GetString(CKA_VAULTP11_VERSION);
  io.out << fmt::format("certificate {} of vault {}: version {} ({}, issuer {}, {} months)\n", QuotePrintable(o.name),
                        QuotePrintable(o.vault), *version, o.key, o.issuer, o.validity_months);
  return OkStatus();
}


// The certificate request of `o`'s policy for `key`, signed by it (PEM).
Result<std::string> MakeRequest(const CertCreateOptions& o, const Signer& key) {
  std::unique_ptr<X509_REQ, decltype(&X509_REQ_free)> req(X509_REQ_new_ex(ossl::LibCtx(), nullptr), X509_REQ_free);
  if (!req) return Err(CKR_HOST_MEMORY, "out of memory");
  X509_REQ_set_version(req.get(), X509_REQ_VERSION_1);
  VAULTP11_ASSIGN_OR_RETURN(X509_NAME * subject, ParseSubject(o.subject));
  X509_REQ_set_subject_name(req.get(), subject);
  X509_NAME_free(subject);
  X509_REQ_set_pubkey(req.get(), key.pub);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, nullptr, nullptr, req.get(), nullptr, 0);
  std::vector<std::string> usage = o.key_usage.empty() ? std::vector<std::string>{"digitalSignature"} : o.key_usage;
  std::vector<std::pair<int, std::string>> wanted = {{NID_basic_constraints, "critical,CA:FALSE"},
                                                     {NID_key_usage, "critical," + Join(usage)}};
  if (!o.ekus.empty()) wanted.emplace_back(NID_ext_key_usage, Join(o.ekus));
  if (!o.sans.empty()) wanted.emplace_back(NID_subject_alt_name, Join(o.sans));
  Status st = OkStatus();
  for (const auto& [nid, value] : wanted) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (ext == nullptr) {
      ERR_clear_error();
      st = Err(CKR_ARGUMENTS_BAD, "{} {} is not valid", OBJ_nid2sn(nid), QuotePrintable(value, 200));
      break;
    }
    sk_X509_EXTENSION_push(exts, ext);
  }
  if (st.ok() && X509_REQ_add_extensions(req.get(), exts) != 1) st = Err(CKR_FUNCTION_FAILED, "adding the request's extensions failed");
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  VAULTP11_RETURN_IF_ERROR(st);
  VAULTP11_RETURN_IF_ERROR(SignAsn1(req.get(), key));
  std::unique_ptr<BIO, BioFree> mem(BIO_new(BIO_s_mem()));
  if (!mem || PEM_write_bio_X509_REQ(mem.get(), req.get()) != 1) return Err(CKR_FUNCTION_FAILED, "encoding the request failed");
  BUF_MEM* buf = nullptr;
  BIO_get_mem_ptr(mem.get(), &buf);
  return std::string(buf->data, buf->length);
}


// `cert csr`: a pending version (key pair and CSR as a data object); the CSR's PEM.
Status Request(const config::Config& cfg, const CertCsrOptions& o, Io& io, std::string* version) {
  VAULTP11_RETURN_IF_ERROR(CheckCertPolicy(cfg, o));
  if (!o.out.empty() && access(o.out.c_str(), F_OK) == 0)
    return Err(CKR_ARGUMENTS_BAD, "{} exists: the request is written to a new file only", o.out);
  VAULTP11_ASSIGN_OR_RETURN(CertPlace place, OpenCertPlace(cfg, o.vault));
  // An existing certificate item gets a new pending version (its policy becomes this one).
  std::string expect;
  VAULTP11_ASSIGN_OR_RETURN(CurrentCert cur, FindCurrentVersion(*place.token, o.name));
  if (cur.priv && (cur.cert || cur.csr)) expect = cur.version;
  bool reused = false;
  VAULTP11_ASSIGN_OR_RETURN(model::KeyPair kp, NewKeyPair(*place.token, o, !expect.empty(), &reused));
  NewKeyGuard guard{*place.token, *kp.private_key, reused};
  VAULTP11_ASSIGN_OR_RETURN(ossl::KeyRef pub, kp.public_key->Key());
  VAULTP11_ASSIGN_OR_RETURN(std::string pem, MakeRequest(o, Signer{kp.private_key, pub.pkey.get()}));
  AttributeMap t;
  t.SetUlong(CKA_CLASS, CKO_DATA);
  t.SetBool(CKA_TOKEN, true);
  t.SetString(CKA_LABEL, o.name);
  t.SetString(CKA_VAULTP11_CONTENT_TYPE, "application/pkcs10");
  t.SetBool(CKA_PRIVATE, true);  // every vault data object is private (README "Authorization")
  t.SetBool(CKA_MODIFIABLE, false);
  t.SetBool(CKA_DESTROYABLE, false);  // `cert cancel` takes a pending version back
  t.Set(CKA_VALUE, std::span(reinterpret_cast<const uint8_t*>(pem.data()), pem.size()));
  VAULTP11_ASSIGN_OR_RETURN(auto csr, model::CreateObject(t));
  // The request file first (a request is public): a file that cannot be written leaves no
  // pending version behind.
  if (!o.out.empty()) VAULTP11_RETURN_IF_ERROR(WriteNewFile(o.out, pem));
  auto added = AddCertVersion(*place.token, *place.st, o, expect, {kp.private_key, kp.public_key, csr});
  if (!added.ok()) {
    if (!o.out.empty()) unlink(o.out.c_str());
    return added.status();
  }
  guard.keep = true;
  if (!expect.empty()) {
    // The new request's policy; the one it replaces is kept inside it for `cert cancel`.
    VAULTP11_ASSIGN_OR_RETURN(std::string previous, place.st->Policy(o.vault, o.name));
    Json policy = PolicyJsonOf(o);
    policy["previous"] = previous;
    VAULTP11_RETURN_IF_ERROR(place.st->SetPolicy(o.vault, o.name, policy.dump()));
  }
  *version = kp.private_key->attrs.GetString(CKA_VAULTP11_VERSION);
  if (o.out.empty()) io.out << pem;
  io.err << fmt::format("certificate {} of vault {}: version {} is pending; have the request signed, then `vaultp11 cert "
                        "merge {} {} --file CERT`\n",
                        QuotePrintable(o.name), QuotePrintable(o.vault), *version, o.vault, o.name);
  return OkStatus();
}

// Every certificate of a PEM (or one DER) file.
Result<std::vector<X509Ptr>> ReadCertificates(const std::string& file) {
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes data, ReadFileLimited(file, kMaxImportBytes));
  std::vector<X509Ptr> certs;
  const std::string_view all(reinterpret_cast<const char*>(data.data()), data.size());
  if (all.find("-----BEGIN ") != std::string_view::npos) {
    std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
    if (!bio) return Err(CKR_HOST_MEMORY, "out of memory");
    for (;;) {
      X509Ptr c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
      if (!c) break;
      certs.push_back(std::move(c));
    }
  } else {
    const unsigned char* p = data.data();
    X509Ptr c(d2i_X509(nullptr, &p, static_cast<long>(data.size())));
    if (c) certs.push_back(std::move(c));
  }
  ERR_clear_error();
  if (certs.empty()) return Err(CKR_ARGUMENTS_BAD, "{} holds no certificate (PEM or DER)", file);
  return certs;
}

// `cert merge`: the signed certificate joins the pending version; its issuers go beside it.
Status Merge(const config::Config& cfg, const std::string& vault, const std::string& name, const std::string& file,
             Io& io, std::string* version, size_t* chain) {
  if (cfg.FindVault(vault) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {}", QuotePrintable(vault), cfg.source);
  VAULTP11_RETURN_IF_ERROR(CheckName(name));
  VAULTP11_ASSIGN_OR_RETURN(std::vector<X509Ptr> certs, ReadCertificates(file));
  VAULTP11_ASSIGN_OR_RETURN(CertPlace place, OpenCertPlace(cfg, vault));
  VAULTP11_ASSIGN_OR_RETURN(CurrentCert cur, FindCurrentVersion(*place.token, name));
  if (!cur.priv || !cur.pub || !cur.csr || cur.cert)
    return Err(CKR_ARGUMENTS_BAD, "{} of vault {} has no pending request (make one with `vaultp11 cert csr`)",
               QuotePrintable(name), QuotePrintable(vault));
  VAULTP11_ASSIGN_OR_RETURN(ossl::KeyRef key, cur.pub->Key());
  size_t leaf = certs.size();
  for (size_t i = 0; i < certs.size() && leaf == certs.size(); ++i)
    if (EVP_PKEY_eq(X509_get0_pubkey(certs[i].get()), key.pkey.get()) == 1) leaf = i;
  ERR_clear_error();
  if (leaf == certs.size())
    return Err(CKR_ARGUMENTS_BAD, "{}: no certificate in it is for the key of {}'s pending request (version {}); nothing merged",
               file, QuotePrintable(name), cur.version);
  VAULTP11_ASSIGN_OR_RETURN(Bytes der, Der(certs[leaf].get()));
  AttributeMap t;
  t.SetUlong(CKA_CLASS, CKO_CERTIFICATE);
  t.SetUlong(CKA_CERTIFICATE_TYPE, CKC_X_509);
  t.SetBool(CKA_TOKEN, true);
  t.SetString(CKA_LABEL, name);
  t.Set(CKA_ID, *cur.priv->attrs.Get(CKA_ID));
  t.Set(CKA_VALUE, der);
  if (const Bytes* tags = cur.priv->attrs.Get(CKA_VAULTP11_TAGS)) t.Set(CKA_VAULTP11_TAGS, *tags);  // the request's
  VAULTP11_ASSIGN_OR_RETURN(auto cert, model::CreateObject(t));
  // It joins the pending version (its CKA_ID, no certificate yet): one store transaction.
  VAULTP11_RETURN_IF_ERROR(place.token->AddVersion({cert}, /*new_version=*/false).status());
  *version = cur.version;
  // The request has served: it goes (a failure leaves it beside the certificate, harmless).
  AttributeMap request;
  request.SetUlong(CKA_CLASS, CKO_DATA);
  request.SetString(CKA_LABEL, name);
  request.SetString(CKA_VAULTP11_VERSION, cur.version);
  if (auto requests = place.token->Find(request); requests.ok())
    for (CK_OBJECT_HANDLE h : *requests) (void)place.token->Remove(h);
  VAULTP11_ASSIGN_OR_RETURN(*chain, StoreIssuers(*place.token, name, certs, leaf, *version));
  io.out << fmt::format("certificate {} of vault {}: version {} merged ({} issuer certificate{} added)\n",
                        QuotePrintable(name), QuotePrintable(vault), *version, *chain, *chain == 1 ? "" : "s");
  return OkStatus();
}

// `cert cancel`: the pending version goes (its request and key pair; an HSM key only when no
// other version uses it); the policy it replaced comes back.
Status Cancel(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io, std::string* version) {
  if (cfg.FindVault(vault) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {}", QuotePrintable(vault), cfg.source);
  VAULTP11_RETURN_IF_ERROR(CheckName(name));
  VAULTP11_ASSIGN_OR_RETURN(CertPlace place, OpenCertPlace(cfg, vault));
  VAULTP11_ASSIGN_OR_RETURN(CurrentCert cur, FindCurrentVersion(*place.token, name));
  if (!cur.csr || cur.cert || !cur.priv)
    return Err(CKR_ARGUMENTS_BAD, "{} of vault {} has no pending request", QuotePrintable(name), QuotePrintable(vault));
  *version = cur.version;
  VAULTP11_ASSIGN_OR_RETURN(std::string text, place.st->Policy(vault, name));
  Json j = Json::parse(text, nullptr, false);
  const std::string previous = j.is_object() ? j.value("previous", "") : "";
  // The version's rows and the policy change in one store transaction; its HSM key goes once
  // that has committed, unless another version uses it.
  VAULTP11_ASSIGN_OR_RETURN(auto gone, place.st->DeleteVersion(vault, name, cur.version, previous));
  if (!place.token->SharesHsmKey(*cur.priv)) place.token->DiscardHsmKey(*cur.priv);
  VAULTP11_ASSIGN_OR_RETURN(auto left, place.st->VersionsOf(vault, name));
  io.out << fmt::format("certificate {} of vault {}: pending version {} cancelled ({} objects){}\n", QuotePrintable(name),
                        QuotePrintable(vault), cur.version, gone.size(), left.empty() ? "; the item is gone" : "");
  return OkStatus();
}

}  // namespace

Status CertCreateCommand(const config::Config& cfg, const CertCreateOptions& opts, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string version;
  Status st = [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(CheckCertPolicy(cfg, opts));
    if (opts.issuer == "Unknown")
      return Err(CKR_ARGUMENTS_BAD, "--issuer Unknown: an external CA signs a request made by `vaultp11 cert csr`");
    VAULTP11_ASSIGN_OR_RETURN(CertPlace place, OpenCertPlace(cfg, opts.vault));
    return CreateOrRenew(*place.token, *place.st, opts, "", io, &version);
  }();
  Json props = {{"issuer", opts.issuer}};
  if (!version.empty()) props["version"] = version;
  audit.Record("CertificateCreate", st, props, opts.name, opts.vault);
  return st;
}

Status CertCsrCommand(const config::Config& cfg, const CertCsrOptions& opts, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string version;
  Status st = Request(cfg, opts, io, &version);
  Json props = {{"issuer", "Unknown"}, {"pending", true}};
  if (!version.empty()) props["version"] = version;
  audit.Record("CertificateCreate", st, props, opts.name, opts.vault);
  return st;
}

Status CertMergeCommand(const config::Config& cfg, const std::string& vault, const std::string& name,
                        const std::string& file, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string version;
  size_t chain = 0;
  Status st = Merge(cfg, vault, name, file, io, &version, &chain);
  Json props = {{"file", AbsolutePath(file)}};
  if (!version.empty()) {
    props["version"] = version;
    props["issuersAdded"] = chain;
  }
  audit.Record("CertificatePendingMerge", st, props, name, vault);
  return st;
}

Status CertCancelCommand(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string version;
  Status st = Cancel(cfg, vault, name, io, &version);
  Json props = Json::object();
  if (!version.empty()) props["version"] = version;
  audit.Record("CertificatePendingDelete", st, props, name, vault);
  return st;
}

Status CertRenewCommand(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::string version, previous;
  Status st = [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(CheckName(name));
    if (cfg.FindVault(vault) == nullptr)
      return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {}", QuotePrintable(vault), cfg.source);
    VAULTP11_ASSIGN_OR_RETURN(CertPlace place, OpenCertPlace(cfg, vault));
    VAULTP11_ASSIGN_OR_RETURN(std::string text, place.st->Policy(vault, name));
    Json j = Json::parse(text, nullptr, false);
    if (!j.is_object() || j.value("kind", "") != "certificate")
      return Err(CKR_ARGUMENTS_BAD, "{} of {} has no certificate policy (made by `cert create`)", QuotePrintable(name),
                 QuotePrintable(vault));
    VAULTP11_ASSIGN_OR_RETURN(auto versions, place.st->VersionsOf(vault, name));
    for (const auto& v : versions)
      if (v.current) previous = v.version;
    return CreateOrRenew(*place.token, *place.st, OptionsFromPolicy(vault, name, j), previous, io, &version);
  }();
  Json props = Json::object();
  if (!version.empty()) props = {{"version", version}, {"previousVersion", previous}};
  audit.Record("CertificateRenew", st, props, name, vault);
  return st;
}

bool LifetimeActionDue(const CertCreateOptions& p, int64_t not_before, int64_t not_after, int64_t now) {
  if (not_after <= not_before) return false;
  if (p.days_before_expiry > 0) return now >= not_after - int64_t{p.days_before_expiry} * 86400;
  const int pct = p.lifetime_percentage > 0 ? p.lifetime_percentage : 80;
  return now >= not_before + (not_after - not_before) * pct / 100;
}

Status RunCertificateLifetimeActions(core::Token& token, store::Store& st, OperatorAudit& audit, int64_t now, Io& io,
                                     size_t* renewed, size_t* notified) {
  const std::string vault = token.name();
  VAULTP11_ASSIGN_OR_RETURN(auto policies, st.Policies(vault));
  Status last = OkStatus();
  for (const auto& [name, text] : policies) {
    Json j = Json::parse(text, nullptr, false);
    if (!j.is_object() || j.value("kind", "") != "certificate") continue;
    const CertCreateOptions p = OptionsFromPolicy(vault, name, j);
    // The current version's certificate (a pending request has none: nothing to act on).
    auto cur = FindCurrentVersion(token, name);
    if (!cur.ok() || !cur->cert) continue;
    const Bytes* der = cur->cert->attrs.Get(CKA_VALUE);
    if (der == nullptr) continue;
    auto x = ParseDer(*der);
    if (!x.ok()) continue;
    int64_t nb = 0, na = 0;
    {
      std::tm t{};
      if (ASN1_TIME_to_tm(X509_get0_notBefore(x->get()), &t) == 1) nb = timegm(&t);
      if (ASN1_TIME_to_tm(X509_get0_notAfter(x->get()), &t) == 1) na = timegm(&t);
    }
    if (!LifetimeActionDue(p, nb, na, now)) continue;
    // An external CA's certificate cannot be renewed here: its owner is told.
    if (p.lifetime_action == "notify" || p.issuer == "Unknown") {
      VAULTP11_ASSIGN_OR_RETURN(bool first, st.ClaimNotice(vault, name, cur->version, "lifetime"));
      if (!first) continue;
      ++*notified;
      io.out << fmt::format("notify: certificate {} of {} version {} expires {}\n", QuotePrintable(name), vault,
                            cur->version, UtcTimeString(na));
      audit.Record("CertificateNearExpiry", OkStatus(), {{"version", cur->version}, {"expires", UtcTimeString(na)}}, name, vault);
      continue;
    }
    std::string version;
    std::ostringstream quiet;
    Io sub{io.in, quiet, io.err, false};
    Status s = CreateOrRenew(token, st, p, cur->version, sub, &version);
    if (!s.ok() && s.rv() == CKR_FUNCTION_REJECTED) {
      io.out << fmt::format("certificate {} of {}: renewed by another run meanwhile\n", QuotePrintable(name), vault);
      continue;
    }
    audit.Record("CertificateRenew", s,
                 s.ok() ? Json{{"version", version}, {"previousVersion", cur->version}, {"trigger", "lifetime"}}
                        : Json{{"trigger", "lifetime"}},
                 name, vault);
    if (!s.ok()) {
      io.err << fmt::format("vaultp11: renewing certificate {} of {} failed: {}\n", QuotePrintable(name), vault,
                            s.error().message);
      last = s;
      continue;
    }
    ++*renewed;
    io.out << fmt::format("renewed: certificate {} of {}: version {} is current (was {})\n", QuotePrintable(name), vault,
                          version, cur->version);
  }
  return last;
}

}  // namespace vaultp11::cli
