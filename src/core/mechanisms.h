// The mechanism table: every mechanism the software backend offers, with its key sizes and
// flags, answering C_GetMechanismList / C_GetMechanismInfo and gating every *Init call.
#pragma once

#include <p11-kit/pkcs11.h>

#include <span>

namespace vaultp11::core {

struct MechanismEntry {
  CK_MECHANISM_TYPE type;
  CK_ULONG min_key;  // bits for RSA/EC, bytes for AES (spec convention)
  CK_ULONG max_key;
  CK_FLAGS flags;
};

std::span<const MechanismEntry> Mechanisms();
const MechanismEntry* FindMechanism(CK_MECHANISM_TYPE type);
// The flags a token reports for `m`: a managed HSM pool neither wraps nor unwraps (its keys
// never leave the HSMs but under the security domain, and it imports nothing); 0 means the
// token does not offer the mechanism.
inline CK_FLAGS FlagsOn(const MechanismEntry& m, bool pool) {
  return pool ? m.flags & ~static_cast<CK_FLAGS>(CKF_WRAP | CKF_UNWRAP) : m.flags;
}

}  // namespace vaultp11::core
