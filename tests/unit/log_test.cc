// Tests of the log level: the configured level, and $VAULTP11_DEBUG read when the log is configured.
#include "util/log.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace vaultp11::log {
namespace {

// The level comes from the configuration unless $VAULTP11_DEBUG forces debug; the environment
// is read when the module configures its log (C_Initialize), not on every check.
class LogLevelTest : public ::testing::Test {
 protected:
  void TearDown() override {
    unsetenv("VAULTP11_DEBUG");
    Configure(Level::kWarning, "stderr");
  }
};

TEST_F(LogLevelTest, ConfiguredLevelDecides) {
  unsetenv("VAULTP11_DEBUG");
  Configure(Level::kError, "stderr");
  EXPECT_EQ(CurrentLevel(), Level::kError);
  EXPECT_TRUE(Enabled(Level::kError));
  EXPECT_FALSE(Enabled(Level::kWarning));
  Configure(Level::kInfo, "stderr");
  EXPECT_TRUE(Enabled(Level::kInfo));
  EXPECT_FALSE(Enabled(Level::kDebug));
  Configure(Level::kOff, "stderr");
  EXPECT_FALSE(Enabled(Level::kError));
}

TEST_F(LogLevelTest, EnvironmentForcesDebugAtConfiguration) {
  setenv("VAULTP11_DEBUG", "1", 1);
  Configure(Level::kError, "stderr");
  EXPECT_EQ(CurrentLevel(), Level::kDebug);
  setenv("VAULTP11_DEBUG", "0", 1);  // "0" means off
  Configure(Level::kError, "stderr");
  EXPECT_EQ(CurrentLevel(), Level::kError);
}

TEST_F(LogLevelTest, EnvironmentIsReadWhenConfiguredOnly) {
  unsetenv("VAULTP11_DEBUG");
  Configure(Level::kError, "stderr");
  setenv("VAULTP11_DEBUG", "1", 1);
  EXPECT_FALSE(Enabled(Level::kDebug));  // until the next Configure
  Configure(Level::kError, "stderr");
  EXPECT_TRUE(Enabled(Level::kDebug));
}

}  // namespace
}  // namespace vaultp11::log
