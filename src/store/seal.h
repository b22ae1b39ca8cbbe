// The HSM seal of a store's root key (store.seal): one non-extractable AES-256 key in an inner
// PKCS#11 token that every host reaches. The root key (what a master key file holds otherwise:
// it wraps the vaults' data keys and keys DeriveKey) is kept in the database only as
// AES-256-GCM ciphertext made inside that token, so a copy of the database and of a host's
// files opens nothing without the HSM (and its PIN).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "store/options.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::p11 {
class InnerToken;
}

namespace vaultp11::store {

class HsmSeal {
 public:
  // Opens the token of `seal` (its module loaded once per process, logged in with the hsm's
  // pin_file / pin_env) and finds the AES key labelled seal.key_label (CKO_SECRET_KEY, CKK_AES,
  // CKA_TOKEN). Absent: with `create`, generates it (AES-256, token, private, sensitive,
  // non-extractable, encrypt/decrypt only; *created set), else CKR_KEY_HANDLE_INVALID naming hsm
  // and label. A key that is extractable or not sensitive, or several keys with the label, are
  // refused (CKR_KEY_FUNCTION_NOT_PERMITTED / CKR_FUNCTION_FAILED). Errors never hold the PIN.
  static Result<std::unique_ptr<HsmSeal>> Open(const Options::Seal& seal, bool create, bool* created = nullptr);
  ~HsmSeal();
  HsmSeal(const HsmSeal&) = delete;
  HsmSeal& operator=(const HsmSeal&) = delete;

  // Encrypts `plain` inside the HSM (CKM_AES_GCM, a fresh random 96-bit IV, 128-bit tag, `aad`):
  // returns 0x01 || IV || ciphertext || tag.
  Result<Bytes> Seal(std::span<const uint8_t> plain, std::string_view aad) const;
  // The inverse; a blob that does not authenticate under this key and `aad` is CKR_DEVICE_ERROR.
  Result<SecureBytes> Unseal(std::span<const uint8_t> blob, std::string_view aad) const;

  // "key 'label' in hsm NAME (token ...)", for messages.
  const std::string& description() const { return description_; }

 private:
  HsmSeal() = default;
  std::shared_ptr<p11::InnerToken> token_;
  unsigned long key_ = 0;  // CK_OBJECT_HANDLE, valid while token_ lives
  std::string description_;
};

}  // namespace vaultp11::store
