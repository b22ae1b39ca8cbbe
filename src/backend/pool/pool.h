// HsmPool models a managed HSM pool: its member HSMs (inner tokens), the security domain they
// share (one trusted AES-256 wrapping key with the same value on every member) and the copying
// of a new key from the member that generated it to the others, under that key (DESIGN.md 7).
#pragma once

#include <p11-kit/pkcs11.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/p11/inner_module.h"
#include "backend/p11/inner_token.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::pool {

// CKA_LABEL and CKA_ID of the security-domain key on every member. The key is also
// CKA_TRUSTED, which only the SO can set: a user-made look-alike is never taken for it.
inline constexpr std::string_view kDomainLabel = "vaultp11-security-domain";
// Pool keys travel between members wrapped with this mechanism under the domain key.
inline constexpr CK_MECHANISM_TYPE kReplicationMechanism = CKM_AES_KEY_WRAP_PAD;
inline constexpr size_t kDomainKeyBytes = 32;

struct Member {
  std::string name;                        // hsms[].name
  std::shared_ptr<p11::InnerToken> token;  // null while the member is unavailable
  std::string unavailable;                 // why token is null
};

// The domain key on a member, found by a user session: CK_INVALID_HANDLE when absent.
Result<CK_OBJECT_HANDLE> FindDomainKey(const p11::InnerToken& t);

class HsmPool {
 public:
  // `quorum` 0 means the default: every healthy member, at least 2 when the pool has 2 or more.
  HsmPool(std::string name, std::vector<Member> members, size_t quorum);

  const std::string& name() const { return name_; }
  const std::vector<Member>& members() const { return members_; }
  size_t healthy() const;  // members opened
  size_t Quorum() const;   // copies a new key needs before it is handed out

  // The member a new key is generated on: the first healthy one that holds the security
  // domain. None (the pool was never initialised): CKR_FUNCTION_FAILED naming
  // `vaultp11 pool init`; fewer healthy members than the quorum: CKR_DEVICE_ERROR.
  Result<size_t> GenerationMember() const;

  // Copies `key` (on member `source`, every object of it carrying CKA_ID `inner_id`) to every
  // other healthy member: C_WrapKey under the domain key there, C_UnwrapKey with
  // `unwrap_template` (which carries the same CKA_ID) on the member, and C_CreateObject of
  // `public_template` when not empty (the public half of a pair). Returns the members that
  // hold the key now, `source` first. When fewer than Quorum() do, the copies made here are
  // destroyed and the call fails with CKR_DEVICE_ERROR (the caller removes the source's).
  Result<std::vector<size_t>> Replicate(size_t source, CK_OBJECT_HANDLE key, std::span<const uint8_t> inner_id,
                                        std::span<const CK_ATTRIBUTE> unwrap_template,
                                        std::span<const CK_ATTRIBUTE> public_template) const;

  // Destroys every object with CKA_ID `inner_id` on member `i` (best effort, logged).
  void DestroyOn(size_t i, std::span<const uint8_t> inner_id) const;
  // ... on every healthy member.
  void DestroyEverywhere(std::span<const uint8_t> inner_id) const;

 private:
  std::string name_;
  std::vector<Member> members_;
  size_t quorum_;
};

// ---- security domain administration (`vaultp11 pool init`) ----------------------------------
// These run their own sessions on the member's slot, so the process must not be logged in to
// it as a user at the same time (the CLI never is).

struct DomainState {
  bool present = false;
  Bytes kcv;  // CKA_CHECK_VALUE of the domain key (3 bytes: AES-ECB of a zero block)
};

// Reads a member's domain in a public session (the domain key is a public object).
Result<DomainState> ReadDomain(const std::shared_ptr<p11::InnerModule>& m, CK_SLOT_ID slot);
// Creates the domain key with `value` in an SO session; returns the key's CKA_CHECK_VALUE.
Result<Bytes> InstallDomain(const std::shared_ptr<p11::InnerModule>& m, CK_SLOT_ID slot, const SecureString& so_pin,
                            std::span<const uint8_t> value);
// Destroys the domain key in an SO session (undoing a half-done InstallDomain).
Status RemoveDomain(const std::shared_ptr<p11::InnerModule>& m, CK_SLOT_ID slot, const SecureString& so_pin);
// The check value of an AES key: the first 3 bytes of AES-ECB(key, zero block).
Result<Bytes> AesCheckValue(std::span<const uint8_t> key);

}  // namespace vaultp11::pool
