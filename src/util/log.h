// Log writes one line per event to stderr (default), a file or syslog. Never give it secrets.
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

namespace vaultp11::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };

// Configures the sink: "stderr", "syslog" or "file:<path>". Level from config, overridden by
// $VAULTP11_DEBUG (any non-empty value other than 0 means debug).
void Configure(Level level, std::string_view sink);
Level CurrentLevel();
bool Enabled(Level l);
void Write(Level level, std::string_view msg);

template <typename... Args>
void Error(fmt::format_string<Args...> f, Args&&... a) {
  if (Enabled(Level::kError)) Write(Level::kError, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void Warning(fmt::format_string<Args...> f, Args&&... a) {
  if (Enabled(Level::kWarning)) Write(Level::kWarning, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void Info(fmt::format_string<Args...> f, Args&&... a) {
  if (Enabled(Level::kInfo)) Write(Level::kInfo, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void Debug(fmt::format_string<Args...> f, Args&&... a) {
  if (Enabled(Level::kDebug)) Write(Level::kDebug, fmt::format(f, std::forward<Args>(a)...));
}

}  // namespace vaultp11::log
