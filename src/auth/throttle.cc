// Login throttling policy (see throttle.h).
#include "auth/throttle.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <limits>

#include "backend/ossl/ossl_backend.h"
#include "util/strings.h"

namespace vaultp11::auth {

namespace {

using std::chrono::milliseconds;

int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  return r;
}

// base * 2^(n-1), capped at max; 0 for n <= 0 or a non-positive base or cap.
milliseconds Backoff(int64_t n, milliseconds base, milliseconds max) {
  if (n <= 0 || base.count() <= 0 || max.count() <= 0) return milliseconds(0);
  int64_t cap = max.count();
  int64_t d = std::min(base.count(), cap);
  // Doubling from >= 1 reaches any int64 cap within 63 steps, so this loop is short.
  for (int64_t i = 1; i < n && d < cap; ++i) d = d > cap / 2 ? cap : d * 2;
  return milliseconds(d);
}

struct Counted {
  bool locked = false;
  int64_t failures = 0;  // failures that count under the policy (0 after an ended lockout)
};

Counted Evaluate(const store::LoginFailures& s, const ThrottlePolicy& p, int64_t now_unix) {
  Counted c;
  int64_t lock_end = s.locked_until;
  if (p.max_failures > 0 && s.failures >= p.max_failures && s.last_failure != 0)
    lock_end =
        std::max(lock_end, SaturatingAdd(s.last_failure, std::max<int64_t>(p.lockout_seconds, 0)));
  c.failures = std::max<int64_t>(s.failures, 0);
  if (lock_end != 0 && now_unix < lock_end)
    c.locked = true;
  else if (lock_end != 0)
    c.failures = 0;  // the lockout is over: a fresh start
  return c;
}

}  // namespace

ThrottleDecision Decide(const store::LoginFailures& s, const ThrottlePolicy& p, int64_t now_unix) {
  Counted c = Evaluate(s, p, now_unix);
  ThrottleDecision d;
  d.locked = c.locked;
  d.delay = Backoff(c.failures, p.base_delay, p.max_delay);
  if (p.max_failures <= 0)
    d.remaining = std::numeric_limits<int64_t>::max();
  else
    d.remaining = c.locked ? 0 : std::max<int64_t>(p.max_failures - c.failures, 0);
  return d;
}

std::string UnknownNameTag(std::span<const uint8_t> key, std::string_view name) {
  std::array<uint8_t, 32> mac{};
  size_t len = 0;
  if (EVP_Q_mac(ossl::LibCtx(), "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                reinterpret_cast<const unsigned char*>(name.data()), name.size(), mac.data(),
                mac.size(), &len) != nullptr &&
      len == mac.size())
    return "unknown:" + HexOf(std::span<const uint8_t>(mac.data(), 16));
  return "unknown:" + std::string(32, '0');
}

CK_FLAGS PinFlags(const store::LoginFailures& s, const ThrottlePolicy& p, int64_t now_unix) {
  Counted c = Evaluate(s, p, now_unix);
  CK_FLAGS flags = 0;
  if (c.failures > 0) flags |= CKF_USER_PIN_COUNT_LOW;
  if (c.locked) return flags | CKF_USER_PIN_LOCKED;
  if (p.max_failures > 0 && p.max_failures - c.failures == 1) flags |= CKF_USER_PIN_FINAL_TRY;
  return flags;
}

}  // namespace vaultp11::auth
