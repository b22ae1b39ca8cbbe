// Login throttling policy: how long to wait after a failed login, when to lock a principal out,
// and the PKCS#11 token flags that describe the state. Pure functions of the failure state
// kept by the store (store::LoginFailures) and an explicit `now`: no I/O, no clock, no sleep.
//
// Intended use in a login (the store keeps the state across processes):
//   auto st = store.GetLoginFailures(principal);
//   if (Decide(st, policy, now).locked) -> CKR_PIN_LOCKED, without checking the credential
//   check the credential; on success store.ResetLoginFailures(principal);
//   on failure: st = store.RecordLoginFailure(principal, now, policy.max_failures,
//                                              policy.lockout_seconds);
//               sleep Decide(st, policy, now).delay, then CKR_PIN_INCORRECT
//               (or CKR_PIN_LOCKED when that failure locked the principal).
#pragma once

#include <p11-kit/pkcs11.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "store/store.h"

namespace vaultp11::auth {

struct ThrottlePolicy {
  int64_t max_failures = 10;                  // failures in a row before a lockout (<= 0: never)
  int64_t lockout_seconds = 900;              // how long a lockout lasts
  std::chrono::milliseconds base_delay{100};  // delay after the n-th failure: base * 2^(n-1) ...
  std::chrono::milliseconds max_delay{3000};  // ... capped here
};

struct ThrottleDecision {
  bool locked = false;                 // refuse without checking the credential (CKR_PIN_LOCKED)
  std::chrono::milliseconds delay{0};  // how long to wait before answering a failed attempt
  int64_t remaining = 0;               // attempts left before a lockout (0 while locked)
};

// The decision for a principal in state `s` at now_unix.
// - Locked while now_unix < lock end, where lock end is s.locked_until, or, when s.failures has
//   reached p.max_failures, s.last_failure + p.lockout_seconds if later (so a state recorded
//   with another lock_after still locks under this policy).
// - A lockout that has ended counts as zero failures: the principal gets max_failures tries
//   again (RecordLoginFailure restarts the count the same way).
// - delay = base_delay * 2^(n-1) capped at max_delay for n >= 1 counted failures, 0 for none.
//   While locked it is the delay of s.failures (normally max_delay), which the caller may also
//   apply before refusing.
// - remaining = max_failures - n (not below 0); with max_failures <= 0 (lockout disabled) it is
//   INT64_MAX.
ThrottleDecision Decide(const store::LoginFailures& s, const ThrottlePolicy& p, int64_t now_unix);

// The name under which failed logins of a claimed name that is no configured principal are
// counted, audited and logged: "unknown:" + the first 16 bytes of HMAC-SHA256(key, name) in
// lowercase hex. The text before a PIN's ':' may be a secret typed in the wrong place, so it is
// never written; the same name under the same key gives the same tag, so its failures still
// add up and lock it out. `key` is derived from the store's master key ("login-names"), so the
// tag cannot be tested against guesses without it. "unknown:" followed by 32 zero digits if
// HMAC fails (never the name).
std::string UnknownNameTag(std::span<const uint8_t> key, std::string_view name);

// Token flags (CK_TOKEN_INFO.flags) for the state: CKF_USER_PIN_COUNT_LOW after any counted
// failure, CKF_USER_PIN_FINAL_TRY when exactly one attempt is left (not while locked),
// CKF_USER_PIN_LOCKED while locked.
CK_FLAGS PinFlags(const store::LoginFailures& s, const ThrottlePolicy& p, int64_t now_unix);

}  // namespace vaultp11::auth
