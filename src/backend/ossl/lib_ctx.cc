// The module-private OpenSSL library context and the AES-256-GCM helpers used for storage.
#include <openssl/provider.h>
#include <openssl/rand.h>

#include <mutex>

#include "backend/ossl/ossl_backend.h"

namespace vaultp11::ossl {

OSSL_LIB_CTX* LibCtx() {
  // Never freed: sessions of any thread may still use keys bound to it during exit.
  static OSSL_LIB_CTX* ctx = [] {
    OSSL_LIB_CTX* c = OSSL_LIB_CTX_new();
    if (c != nullptr) OSSL_PROVIDER_load(c, "default");
    return c;
  }();
  return ctx;
}

PkeyRef Share(EvpPkeyPtr p) { return PkeyRef(p.release(), [](EVP_PKEY* k) { EVP_PKEY_free(k); }); }

Status RandomBytes(std::span<uint8_t> out) {
  if (out.empty()) return OkStatus();
  if (RAND_bytes_ex(LibCtx(), out.data(), out.size(), 0) != 1)
    return Err(CKR_FUNCTION_FAILED, "random generator failed: {}", SslErrors());
  return OkStatus();
}

namespace {
constexpr size_t kIvLen = 12;
constexpr size_t kTagLen = 16;

EVP_CIPHER* Aes256Gcm() {
  static EVP_CIPHER* c = EVP_CIPHER_fetch(LibCtx(), "AES-256-GCM", nullptr);
  return c;
}
}  // namespace

Result<Bytes> SealAesGcm(std::span<const uint8_t> key32, std::span<const uint8_t> plaintext,
                         std::span<const uint8_t> aad) {
  if (key32.size() != 32) return Err(CKR_GENERAL_ERROR, "data key must be 32 bytes");
  Bytes out(kIvLen + plaintext.size() + kTagLen);
  VAULTP11_RETURN_IF_ERROR(RandomBytes(std::span(out.data(), kIvLen)));
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || Aes256Gcm() == nullptr ||
      EVP_EncryptInit_ex2(ctx.get(), Aes256Gcm(), key32.data(), out.data(), nullptr) != 1 ||
      (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), aad.size()) != 1) ||
      EVP_EncryptUpdate(ctx.get(), out.data() + kIvLen, &len, plaintext.data(), plaintext.size()) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + kIvLen + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagLen,
                          out.data() + kIvLen + plaintext.size()) != 1)
    return Err(CKR_FUNCTION_FAILED, "AES-GCM seal failed: {}", SslErrors());
  return out;
}

Result<SecureBytes> OpenAesGcm(std::span<const uint8_t> key32, std::span<const uint8_t> sealed,
                               std::span<const uint8_t> aad) {
  if (key32.size() != 32) return Err(CKR_GENERAL_ERROR, "data key must be 32 bytes");
  if (sealed.size() < kIvLen + kTagLen) return Err(CKR_DEVICE_ERROR, "sealed blob too short");
  size_t ct_len = sealed.size() - kIvLen - kTagLen;
  SecureBytes out(ct_len);
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  Bytes tag(sealed.end() - kTagLen, sealed.end());
  if (!ctx || Aes256Gcm() == nullptr ||
      EVP_DecryptInit_ex2(ctx.get(), Aes256Gcm(), key32.data(), sealed.data(), nullptr) != 1 ||
      (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), aad.size()) != 1) ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &len, sealed.data() + kIvLen, ct_len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagLen, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &len) != 1) {
    SslErrors();  // drain
    return Err(CKR_DEVICE_ERROR, "stored data failed authentication (tampered, or wrong master key)");
  }
  return out;
}

}  // namespace vaultp11::ossl
