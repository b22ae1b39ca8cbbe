#include "core/mechanisms.h"

namespace vaultp11::core {
namespace {

constexpr CK_FLAGS kEc = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
constexpr CK_FLAGS kSV = CKF_SIGN | CKF_VERIFY;
constexpr CK_FLAGS kED = CKF_ENCRYPT | CKF_DECRYPT;
constexpr CK_FLAGS kWU = CKF_WRAP | CKF_UNWRAP;

// Sizes: RSA 2048-4096 bits; EC 256-521 bits; AES 16-32 bytes.
constexpr MechanismEntry kTable[] = {
    {CKM_RSA_PKCS_KEY_PAIR_GEN, 2048, 4096, CKF_GENERATE_KEY_PAIR},
    {CKM_EC_KEY_PAIR_GEN, 256, 521, CKF_GENERATE_KEY_PAIR | kEc},
    {CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE},
    {CKM_RSA_PKCS, 2048, 4096, kSV | kED | kWU},
    {CKM_SHA1_RSA_PKCS, 2048, 4096, kSV},
    {CKM_SHA224_RSA_PKCS, 2048, 4096, kSV},
    {CKM_SHA256_RSA_PKCS, 2048, 4096, kSV},
    {CKM_SHA384_RSA_PKCS, 2048, 4096, kSV},
    {CKM_SHA512_RSA_PKCS, 2048, 4096, kSV},
    {CKM_RSA_PKCS_PSS, 2048, 4096, kSV},
    {CKM_SHA256_RSA_PKCS_PSS, 2048, 4096, kSV},
    {CKM_SHA384_RSA_PKCS_PSS, 2048, 4096, kSV},
    {CKM_SHA512_RSA_PKCS_PSS, 2048, 4096, kSV},
    {CKM_RSA_PKCS_OAEP, 2048, 4096, kED | kWU},
    {CKM_ECDSA, 256, 521, kSV | kEc},
    {CKM_ECDSA_SHA256, 256, 521, kSV | kEc},
    {CKM_ECDSA_SHA384, 256, 521, kSV | kEc},
    {CKM_ECDSA_SHA512, 256, 521, kSV | kEc},
    {CKM_AES_ECB, 16, 32, kED},
    {CKM_AES_CBC, 16, 32, kED},
    {CKM_AES_CBC_PAD, 16, 32, kED},
    {CKM_AES_CTR, 16, 32, kED},
    {CKM_AES_GCM, 16, 32, kED},
    {CKM_AES_KEY_WRAP, 16, 32, kWU},
    {CKM_AES_KEY_WRAP_PAD, 16, 32, kWU},
    {CKM_SHA_1, 0, 0, CKF_DIGEST},
    {CKM_SHA224, 0, 0, CKF_DIGEST},
    {CKM_SHA256, 0, 0, CKF_DIGEST},
    {CKM_SHA384, 0, 0, CKF_DIGEST},
    {CKM_SHA512, 0, 0, CKF_DIGEST},
};

}  // namespace

std::span<const MechanismEntry> Mechanisms() { return kTable; }

const MechanismEntry* FindMechanism(CK_MECHANISM_TYPE type) {
  for (const auto& m : kTable)
    if (m.type == type) return &m;
  return nullptr;
}

}  // namespace vaultp11::core
