// Tests of the login throttling policy: delays, remaining attempts, lockouts and token flags.
#include "auth/throttle.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace vaultp11::auth {
namespace {

using std::chrono::milliseconds;
using store::LoginFailures;

constexpr int64_t kNow = 1'700'000'000;

// The state after n failures recorded the way the store records them under policy p, the last
// one at `at`.
LoginFailures After(int64_t n, const ThrottlePolicy& p, int64_t at = kNow) {
  LoginFailures s;
  s.failures = n;
  s.last_failure = n > 0 ? at : 0;
  s.locked_until = p.max_failures > 0 && n >= p.max_failures ? at + p.lockout_seconds : 0;
  return s;
}

TEST(ThrottleTest, NoFailuresMeansNoDelayAllAttemptsAndNoFlags) {
  ThrottlePolicy p;
  ThrottleDecision d = Decide(LoginFailures{}, p, kNow);
  EXPECT_FALSE(d.locked);
  EXPECT_EQ(d.delay, milliseconds(0));
  EXPECT_EQ(d.remaining, 10);
  EXPECT_EQ(PinFlags(LoginFailures{}, p, kNow), 0u);
}

TEST(ThrottleTest, DelaysDoubleFromTheBaseAndAreCapped) {
  ThrottlePolicy p;  // 100 ms base, 3000 ms cap
  const int64_t expected[] = {0, 100, 200, 400, 800, 1600, 3000, 3000, 3000, 3000};
  for (int64_t n = 0; n < 10; ++n) {
    ThrottleDecision d = Decide(After(n, p), p, kNow);
    EXPECT_FALSE(d.locked) << n;
    EXPECT_EQ(d.delay, milliseconds(expected[n])) << n;
  }
}

TEST(ThrottleTest, HugeFailureCountsDoNotOverflowTheDelay) {
  ThrottlePolicy p;
  p.max_failures = 0;  // lockout disabled: the count can grow without bound
  LoginFailures s{std::numeric_limits<int64_t>::max(), kNow, 0};
  EXPECT_EQ(Decide(s, p, kNow).delay, milliseconds(3000));
  p.max_delay = milliseconds(std::numeric_limits<int64_t>::max());
  EXPECT_EQ(Decide(s, p, kNow).delay, p.max_delay);
  p.base_delay = milliseconds(0);
  EXPECT_EQ(Decide(s, p, kNow).delay, milliseconds(0));
}

TEST(ThrottleTest, CapBelowTheBaseWins) {
  ThrottlePolicy p;
  p.base_delay = milliseconds(500);
  p.max_delay = milliseconds(300);
  EXPECT_EQ(Decide(After(1, p), p, kNow).delay, milliseconds(300));
}

TEST(ThrottleTest, RemainingCountsDownToTheLockout) {
  ThrottlePolicy p;
  for (int64_t n = 0; n < 10; ++n) EXPECT_EQ(Decide(After(n, p), p, kNow).remaining, 10 - n) << n;
  EXPECT_EQ(Decide(After(10, p), p, kNow).remaining, 0);
}

TEST(ThrottleTest, LockedFromTheLastAllowedFailureUntilLockedUntil) {
  ThrottlePolicy p;  // 10 failures, 900 s
  LoginFailures s = After(10, p, kNow);
  ASSERT_EQ(s.locked_until, kNow + 900);
  for (int64_t t : {kNow, kNow + 1, kNow + 899}) {
    ThrottleDecision d = Decide(s, p, t);
    EXPECT_TRUE(d.locked) << t;
    EXPECT_EQ(d.remaining, 0) << t;
    EXPECT_EQ(d.delay, milliseconds(3000)) << t;
  }
  EXPECT_FALSE(Decide(After(9, p), p, kNow).locked);
}

TEST(ThrottleTest, AnEndedLockoutStartsAgainFromZero) {
  ThrottlePolicy p;
  LoginFailures s = After(10, p, kNow);
  for (int64_t t : {kNow + 900, kNow + 901, kNow + 100000}) {
    ThrottleDecision d = Decide(s, p, t);
    EXPECT_FALSE(d.locked) << t;
    EXPECT_EQ(d.remaining, 10) << t;
    EXPECT_EQ(d.delay, milliseconds(0)) << t;
    EXPECT_EQ(PinFlags(s, p, t), 0u) << t;
  }
}

TEST(ThrottleTest, FailuresPastTheLimitWithoutLockedUntilStillLockFromTheLastFailure) {
  // E.g. recorded by a process configured with a higher limit.
  ThrottlePolicy p;
  LoginFailures s{12, kNow, 0};
  EXPECT_TRUE(Decide(s, p, kNow + 10).locked);
  EXPECT_EQ(PinFlags(s, p, kNow + 10), CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED);
  EXPECT_FALSE(Decide(s, p, kNow + 900).locked);
  EXPECT_EQ(Decide(s, p, kNow + 900).remaining, 10);
}

TEST(ThrottleTest, LockedUntilAloneLocksToo) {
  ThrottlePolicy p;
  LoginFailures s{3, kNow, kNow + 60};  // e.g. locked by a process with a lower limit
  EXPECT_TRUE(Decide(s, p, kNow + 59).locked);
  EXPECT_FALSE(Decide(s, p, kNow + 60).locked);
  EXPECT_EQ(Decide(s, p, kNow + 60).remaining, 10);
}

TEST(ThrottleTest, DisabledLockoutNeverLocks) {
  ThrottlePolicy p;
  p.max_failures = 0;
  LoginFailures s{1000, kNow, 0};
  ThrottleDecision d = Decide(s, p, kNow);
  EXPECT_FALSE(d.locked);
  EXPECT_EQ(d.remaining, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(d.delay, milliseconds(3000));
  EXPECT_EQ(PinFlags(s, p, kNow), CKF_USER_PIN_COUNT_LOW);
}

TEST(ThrottleTest, FlagsFollowTheState) {
  ThrottlePolicy p;
  EXPECT_EQ(PinFlags(After(1, p), p, kNow), CKF_USER_PIN_COUNT_LOW);
  EXPECT_EQ(PinFlags(After(8, p), p, kNow), CKF_USER_PIN_COUNT_LOW);
  EXPECT_EQ(PinFlags(After(9, p), p, kNow), CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY);
  EXPECT_EQ(PinFlags(After(10, p), p, kNow), CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED);
  EXPECT_EQ(PinFlags(After(10, p), p, kNow + 900), 0u);
}

TEST(ThrottleTest, SingleAttemptPolicyIsAlwaysTheFinalTry) {
  ThrottlePolicy p;
  p.max_failures = 1;
  p.lockout_seconds = 30;
  EXPECT_EQ(PinFlags(LoginFailures{}, p, kNow), CKF_USER_PIN_FINAL_TRY);
  EXPECT_EQ(Decide(LoginFailures{}, p, kNow).remaining, 1);
  LoginFailures s = After(1, p);
  EXPECT_TRUE(Decide(s, p, kNow + 29).locked);
  EXPECT_EQ(PinFlags(s, p, kNow + 29), CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED);
  EXPECT_EQ(PinFlags(s, p, kNow + 30), CKF_USER_PIN_FINAL_TRY);
}

// Computed independently (Python hmac) for the fixed vector below.
constexpr char kExpectedTag[] = "7f0063e032e6f9e9db41cd2b056e5bac";

// Failed logins under a name that is no configured principal are recorded under a keyed
// hash of the name (issue 16 item 9): stable for one key, different for another key or name,
// and never the text.
TEST(UnknownNameTagTest, IsAKeyedHashNeverTheText) {
  const std::vector<uint8_t> key(32, 0x11), other_key(32, 0x22);
  const std::string tag = UnknownNameTag(key, "secret-text");
  EXPECT_EQ(tag.rfind("unknown:", 0), 0u) << tag;
  EXPECT_EQ(tag.size(), std::string("unknown:").size() + 32);
  EXPECT_EQ(tag.find("secret"), std::string::npos);
  for (char c : tag.substr(8)) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << tag;
  EXPECT_EQ(UnknownNameTag(key, "secret-text"), tag);
  EXPECT_NE(UnknownNameTag(other_key, "secret-text"), tag);
  EXPECT_NE(UnknownNameTag(key, "secret-texu"), tag);
  // HMAC-SHA256(key 0x11 * 32, "secret-text") truncated to 16 bytes: a fixed vector, so the
  // tags stay comparable across versions of the module (rows already in a store).
  EXPECT_EQ(tag, "unknown:" + std::string(kExpectedTag));
}

}  // namespace
}  // namespace vaultp11::auth
