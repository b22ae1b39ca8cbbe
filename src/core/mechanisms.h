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

}  // namespace vaultp11::core
