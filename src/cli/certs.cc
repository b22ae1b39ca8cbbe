// `vaultp11 cert import`: a certificate with its private key (PEM or PKCS#12) becomes a
// certificate item of a vault: key pair and certificate as one version, the issuing CA
// certificates beside it.
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
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
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", path, std::strerror(errno));
  SecureBytes data(max + 1);
  size_t got = 0;
  while (got < data.size()) {
    ssize_t n = read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", path, std::strerror(e));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  close(fd);
  if (got > max) return Err(CKR_ARGUMENTS_BAD, "{} is over {} bytes", path, max);
  data.resize(got);
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
  const std::string_view head(reinterpret_cast<const char*>(data.data()), std::min<size_t>(data.size(), 64));
  if (head.find("-----BEGIN") != std::string_view::npos) {
    // PEM: every certificate and the (one) private key, in any order.
    for (;;) {
      char* name = nullptr;
      char* header = nullptr;
      unsigned char* body = nullptr;
      long len = 0;
      if (PEM_read_bio(bio.get(), &name, &header, &body, &len) != 1) break;
      std::string type = name;
      OPENSSL_free(name);
      OPENSSL_free(header);
      std::unique_ptr<BIO, BioFree> one(BIO_new(BIO_s_mem()));
      bool ok = one && PEM_write_bio(one.get(), type.c_str(), "", body, len) == 1;
      OPENSSL_clear_free(body, static_cast<size_t>(len));
      if (!ok) return Err(CKR_HOST_MEMORY, "out of memory");
      if (type == "CERTIFICATE") {
        X509Ptr c(PEM_read_bio_X509(one.get(), nullptr, nullptr, nullptr));
        if (!c) return Err(CKR_ARGUMENTS_BAD, "{}: a certificate that cannot be read", file);
        b.certs.push_back(std::move(c));
      } else if (type.find("PRIVATE KEY") != std::string::npos) {
        if (b.key) return Err(CKR_ARGUMENTS_BAD, "{} holds more than one private key", file);
        b.key.reset(PEM_read_bio_PrivateKey(one.get(), nullptr, PasswordCallback, const_cast<SecureString*>(&password)));
        if (!b.key) return Err(CKR_ARGUMENTS_BAD, "{}: the private key cannot be read (wrong password?)", file);
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

Result<Bytes> Der(X509* x) {
  int n = i2d_X509(x, nullptr);
  if (n <= 0) return Err(CKR_ARGUMENTS_BAD, "a certificate cannot be encoded");
  Bytes out(static_cast<size_t>(n));
  unsigned char* p = out.data();
  i2d_X509(x, &p);
  return out;
}

Result<std::shared_ptr<model::Object>> CertObject(const std::string& label, const Bytes& der) {
  AttributeMap t;
  t.SetUlong(CKA_CLASS, CKO_CERTIFICATE);
  t.SetUlong(CKA_CERTIFICATE_TYPE, CKC_X_509);
  t.SetBool(CKA_TOKEN, true);
  t.SetString(CKA_LABEL, label);
  t.Set(CKA_VALUE, der);
  return model::CreateObject(t);
}

Status Import(const config::Config& cfg, const CertImportOptions& o, Io& io, std::string* version, size_t* chain) {
  if (cfg.FindVault(o.vault) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {} (pools hold HSM keys only, no certificates)",
               QuotePrintable(o.vault), cfg.source);
  if (!config::IsValidName(o.name))
    return Err(CKR_ARGUMENTS_BAD, "invalid name {}: use 1-127 characters of 0-9 a-z A-Z -", QuotePrintable(o.name, 140));
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes data, ReadFileLimited(o.file, kMaxImportBytes));
  SecureString password;
  if (!o.password_file.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes pw, ReadFileLimited(o.password_file, 4096));
    password.assign(pw.begin(), pw.end());
    while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) password.pop_back();
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

  AttributeMap pt, vt;
  for (AttributeMap* t : {&pt, &vt}) {
    t->SetBool(CKA_TOKEN, true);
    t->SetString(CKA_LABEL, o.name);
  }
  vt.SetBool(CKA_PRIVATE, true);
  vt.SetBool(CKA_SENSITIVE, true);
  vt.SetBool(CKA_EXTRACTABLE, false);
  VAULTP11_ASSIGN_OR_RETURN(model::KeyPair kp, model::ImportKeyPair(pt, vt, pkcs8));
  VAULTP11_ASSIGN_OR_RETURN(Bytes leaf_der, Der(b.certs[leaf].get()));
  VAULTP11_ASSIGN_OR_RETURN(auto cert, CertObject(o.name, leaf_der));

  VAULTP11_ASSIGN_OR_RETURN(auto provider, core::Provider::Create(cfg.source, /*threads=*/true));
  core::Token* token = nullptr;
  for (const auto& t : provider->tokens())
    if (t->name() == o.vault) token = t.get();
  if (token == nullptr) return Err(CKR_ARGUMENTS_BAD, "vault {} is not loaded", QuotePrintable(o.vault));
  // A new version when the name is a certificate already; refused when it is a key or secret.
  VAULTP11_RETURN_IF_ERROR(token->AddVersion({kp.private_key, kp.public_key, cert}, /*new_version=*/true).status());
  *version = cert->attrs.GetString(CKA_VAULTP11_VERSION);
  // The issuers, each an item of its own (named <name>-chain-<n>) unless the vault has it.
  for (size_t i = 0; i < b.certs.size(); ++i) {
    if (i == leaf) continue;
    VAULTP11_ASSIGN_OR_RETURN(Bytes der, Der(b.certs[i].get()));
    AttributeMap find;
    find.SetUlong(CKA_CLASS, CKO_CERTIFICATE);
    find.Set(CKA_VALUE, der);
    if (!token->Find(find).empty()) continue;
    const std::string label = fmt::format("{}-chain-{}", o.name.substr(0, 110), ++*chain);
    VAULTP11_ASSIGN_OR_RETURN(auto ca, CertObject(label, der));
    auto added = token->AddVersion({ca}, /*new_version=*/true);
    if (!added.ok())
      io.err << fmt::format("vaultp11: issuer certificate {} not stored: {}\n", label, added.error().message);
  }
  io.out << fmt::format("certificate {} imported into vault {}: version {} (key {}), {} issuer certificate{} added\n",
                        QuotePrintable(o.name), QuotePrintable(o.vault), *version,
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
