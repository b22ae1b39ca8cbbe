// Operations with a managed HSM pool's keys. Each operation runs on one member leased from the
// pool (the one with the fewest outstanding operations) and holds it until the operation ends.
// When that member fails (HsmPool::IsMemberFailure), it is taken out of service and the
// operation starts again on another member: the call being made is repeated there after the
// multi-part input given so far is replayed (outputs already returned are recomputed and
// dropped: the same key and parameters give the same bytes). Replay keeps at most
// kMaxReplayBytes of input; a longer multi-part operation is not moved and fails with the
// member's error.
#pragma once

#include <p11-kit/pkcs11.h>

#include <memory>

#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_ops.h"
#include "model/object.h"
#include "util/result.h"

namespace vaultp11::core {

inline constexpr size_t kMaxReplayBytes = 1 << 20;

// `key` is a pool key (its material names the pool); `mech` is copied.
Result<std::unique_ptr<ossl::SignOp>> NewPoolSignOp(model::ObjectPtr key, const CK_MECHANISM& mech,
                                                    size_t signature_length);
Result<std::unique_ptr<ossl::CipherOp>> NewPoolCipherOp(model::ObjectPtr key, const CK_MECHANISM& mech, bool encrypt);

}  // namespace vaultp11::core
