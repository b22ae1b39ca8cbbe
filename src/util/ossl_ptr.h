// RAII owners for OpenSSL objects.
#pragma once

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

namespace vaultp11 {

template <auto FreeFn>
struct OsslDeleter {
  template <typename T>
  void operator()(T* p) const noexcept { FreeFn(p); }
};

using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OsslDeleter<&EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OsslDeleter<&EVP_PKEY_CTX_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, OsslDeleter<&EVP_MD_CTX_free>>;
using EvpCipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, OsslDeleter<&EVP_CIPHER_CTX_free>>;
using EvpCipherPtr = std::unique_ptr<EVP_CIPHER, OsslDeleter<&EVP_CIPHER_free>>;
using EvpMdPtr = std::unique_ptr<EVP_MD, OsslDeleter<&EVP_MD_free>>;
using EvpKdfPtr = std::unique_ptr<EVP_KDF, OsslDeleter<&EVP_KDF_free>>;
using EvpKdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, OsslDeleter<&EVP_KDF_CTX_free>>;
using OsslLibCtxPtr = std::unique_ptr<OSSL_LIB_CTX, OsslDeleter<&OSSL_LIB_CTX_free>>;
using OsslParamBldPtr = std::unique_ptr<OSSL_PARAM_BLD, OsslDeleter<&OSSL_PARAM_BLD_free>>;
using OsslParamPtr = std::unique_ptr<OSSL_PARAM, OsslDeleter<&OSSL_PARAM_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, OsslDeleter<&BN_free>>;
using BignumClearPtr = std::unique_ptr<BIGNUM, OsslDeleter<&BN_clear_free>>;
using X509Ptr = std::unique_ptr<X509, OsslDeleter<&X509_free>>;

// Drains the thread's OpenSSL error queue into one line (for error messages).
std::string SslErrors();

}  // namespace vaultp11
