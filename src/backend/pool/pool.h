// HsmPool models a managed HSM pool: its member HSMs (inner tokens), the security domain they
// share (one trusted AES-256 wrapping key with the same value on every member) and the copying
// of a new key from the member that generated it to the others, under that key (DESIGN.md 7).
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "backend/p11/inner_module.h"
#include "backend/p11/inner_token.h"
#include "util/result.h"
#include "util/fork_parking.h"
#include "util/secure_bytes.h"

namespace vaultp11::pool {

// CKA_LABEL and CKA_ID of the security-domain key on every member. The key is also
// CKA_TRUSTED, which only the SO can set: a user-made look-alike is never taken for it.
inline constexpr std::string_view kDomainLabel = "vaultp11-security-domain";
// Pool keys travel between members wrapped with this mechanism under the domain key.
inline constexpr CK_MECHANISM_TYPE kReplicationMechanism = CKM_AES_KEY_WRAP_PAD;
inline constexpr size_t kDomainKeyBytes = 32;

// One member as the pool is built: the inner token (null when it could not be opened, with
// the reason) and how to open it again (the health check retries members that failed).
struct MemberSpec {
  std::string name;                        // hsms[].name
  std::shared_ptr<p11::InnerToken> token;  // null while the member is unavailable
  std::string unavailable;                 // why token is null
  std::function<Result<std::shared_ptr<p11::InnerToken>>()> reopen;  // may be empty
};

// The domain key on a member, found by a user session: CK_INVALID_HANDLE when absent.
Result<CK_OBJECT_HANDLE> FindDomainKey(const p11::InnerToken& t);

// A pool key (or its private half) on its way from one member to another, or into a backup:
// the key wrapped under the security domain with the attributes needed to rebuild it there.
struct WrappedKey {
  CK_OBJECT_CLASS object_class = CKO_PRIVATE_KEY;  // CKO_PRIVATE_KEY or CKO_SECRET_KEY
  CK_KEY_TYPE key_type = CKK_RSA;
  Bytes inner_id;                                  // CKA_ID of the key's objects on every member
  std::vector<std::pair<CK_ATTRIBUTE_TYPE, bool>> usage;  // CKA_SIGN, CKA_DECRYPT, ... as on the source
  // A private key's public half: CKA_MODULUS + CKA_PUBLIC_EXPONENT, or CKA_EC_PARAMS + CKA_EC_POINT.
  std::vector<std::pair<CK_ATTRIBUTE_TYPE, Bytes>> public_values;
  Bytes wrapped;  // kReplicationMechanism under the domain key
};

// The pool keys a health check makes sure every member holds (from the pool's token).
struct CatalogEntry {
  CK_OBJECT_CLASS object_class;
  Bytes inner_id;
};
// The pool's keys; an error when they cannot be read (a member then stays out of service).
using Catalog = std::function<Result<std::vector<CatalogEntry>>()>;

class HsmPool;

// MemberLease is one operation's hold on one member: it counts as an outstanding call there
// until destroyed (the balancing measure).
class MemberLease {
 public:
  MemberLease() = default;
  MemberLease(MemberLease&& o) noexcept { *this = std::move(o); }
  MemberLease& operator=(MemberLease&& o) noexcept;
  MemberLease(const MemberLease&) = delete;
  MemberLease& operator=(const MemberLease&) = delete;
  ~MemberLease() { Release(); }
  void Release();

  explicit operator bool() const { return token != nullptr; }
  size_t index = 0;
  uint64_t generation = 0;  // of the member when leased (see HsmPool::Generation)
  std::shared_ptr<p11::InnerToken> token;

 private:
  friend class HsmPool;
  const HsmPool* pool_ = nullptr;
};

class HsmPool {
 public:
  struct Options {
    size_t quorum = 0;  // 0: every healthy member, at least 2 when the pool has 2 or more
    std::chrono::milliseconds health_check_interval{5000};
  };
  HsmPool(std::string name, std::vector<MemberSpec> members, Options options);
  HsmPool(std::string name, std::vector<MemberSpec> members, size_t quorum)
      : HsmPool(std::move(name), std::move(members), Options{quorum, std::chrono::milliseconds(5000)}) {}
  ~HsmPool();  // stops the health check
  HsmPool(const HsmPool&) = delete;
  HsmPool& operator=(const HsmPool&) = delete;

  const std::string& name() const { return name_; }
  size_t size() const { return members_.size(); }
  const std::string& member_name(size_t i) const;
  // The member's inner token while it is in service, else null.
  std::shared_ptr<p11::InnerToken> Token(size_t i) const;
  // Why member i is out of service ("" while in service).
  std::string Unavailable(size_t i) const;
  // Changes each time member i comes back into service: inner handles found before are stale.
  uint64_t Generation(size_t i) const;
  size_t healthy() const;  // members in service
  size_t Quorum() const;   // copies a new key needs before it is handed out

  // The member a new key is generated on: the healthy one with the fewest outstanding calls
  // that holds the security domain, skipping `exclude`d ones. None (the pool was never
  // initialised): CKR_FUNCTION_FAILED naming `vaultp11 pool init`; fewer healthy members than
  // the quorum: CKR_DEVICE_ERROR.
  Result<size_t> GenerationMember(const std::vector<bool>& exclude = {}) const;

  // Balancing: the healthy member with the fewest outstanding calls, not in `tried` (indexed
  // by member); ties go round-robin. None left: CKR_DEVICE_ERROR naming why each is out.
  Result<MemberLease> Acquire(const std::vector<bool>& tried = {}) const;

  // True for the inner CK_RVs that mean the member itself failed (not the request):
  // CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_SESSION_HANDLE_INVALID,
  // CKR_SESSION_CLOSED, CKR_TOKEN_NOT_RECOGNIZED, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_GENERAL_ERROR.
  static bool IsMemberFailure(CK_RV rv);
  // Takes member i out of service after `e` (if it is a member failure and the member is still
  // in the generation the caller used); the health check brings it back. Returns
  // IsMemberFailure(e.rv).
  bool ReportFailure(size_t i, uint64_t generation, const Error& e) const;
  // Member i lacks a key it should hold: the next health check copies the missing keys to it.
  void ReportMissingKey(size_t i) const;

  // Copies of pool keys. Export wraps the key `inner_id` of class `cls` on member i under the
  // domain key there and reads the attributes Import needs; Import unwraps it on member i
  // (and creates a private key's public half). Errors pass the inner CK_RV through.
  Result<WrappedKey> Export(size_t i, CK_OBJECT_CLASS cls, std::span<const uint8_t> inner_id) const;
  Status Import(size_t i, const WrappedKey& key) const;
  // Whether member i holds an object of class `cls` with CKA_ID `inner_id`.
  Result<bool> Holds(size_t i, CK_OBJECT_CLASS cls, std::span<const uint8_t> inner_id) const;

  // Copies the key `inner_id` (class `cls`, on member `source`) to every other healthy member.
  // Returns the members that hold it now, `source` first. A member that fails is taken out
  // of service. When fewer than Quorum() hold it, the copies made here are destroyed and the
  // call fails with CKR_DEVICE_ERROR (the caller removes the source's).
  Result<std::vector<size_t>> Replicate(size_t source, CK_OBJECT_CLASS cls, std::span<const uint8_t> inner_id) const;

  // Destroys every object with CKA_ID `inner_id` on member `i` (best effort, logged); on a
  // member out of service, before it is brought back.
  void DestroyOn(size_t i, std::span<const uint8_t> inner_id) const;
  // ... on every healthy member.
  void DestroyEverywhere(std::span<const uint8_t> inner_id) const;

  // Health check: a background thread that, every interval and whenever a member is taken
  // out, probes the members out of service (reopening those never opened) and brings back
  // those that answer, once the catalog's keys they lack are copied to them. Members in
  // service found lacking a key (ReportMissingKey), and every member on the first pass, get
  // the missing copies too. `on_change` runs after a member left or rejoined service (and
  // its copies were made). Started once (later calls are no-ops, also after StopHealthCheck,
  // so a pool stopped at process exit stays stopped); stopped by StopHealthCheck or the
  // destructor.
  void StartHealthCheck(Catalog catalog, std::function<void()> on_change);
  void StopHealthCheck();
  // One pass of the health check on the calling thread (also what the thread runs).
  void CheckNow() const;

 private:
  friend class MemberLease;
  struct MemberState;
  void Wake() const;
  void HealthLoop();
  // Member i's token when it answers and holds a security domain (reopened if need be).
  std::shared_ptr<p11::InnerToken> Probe(size_t i) const;
  // Copies to member i (through `target`) the catalog's keys it lacks.
  Status Reconcile(size_t i, const p11::InnerToken& target) const;
  Status ImportTo(size_t i, const p11::InnerToken& target, const WrappedKey& key) const;
  void DestroyOnToken(size_t i, const p11::InnerToken& target, std::span<const uint8_t> inner_id) const;

  std::string name_;
  std::vector<std::unique_ptr<MemberState>> members_;
  Options options_;
  mutable std::atomic<size_t> round_robin_{0};

  mutable std::mutex health_mu_;  // guards the fields below
  mutable std::condition_variable health_cv_;
  mutable bool wake_ = false;
  bool stop_ = false;
  bool stopped_ = false;  // StopHealthCheck ran: never started again
  Catalog catalog_;
  std::function<void()> on_change_;
  std::thread health_thread_;
  mutable std::mutex check_mu_;  // one CheckNow at a time
  // Parks the health thread at a fork (util/fork_parking.h): check_mu_ is held for a whole
  // pass (inner module calls, allocations), health_mu_ for the rest; a fork may so wait for a
  // pass in progress to end.
  using Parking = ForkParking<HsmPool, &HsmPool::check_mu_, &HsmPool::health_mu_>;
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
