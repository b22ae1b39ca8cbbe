// Text helpers for messages.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace vaultp11 {

// A user-supplied value for a message or a terminal: double-quoted, quotes and backslashes
// escaped, control characters as \xNN (they must not drive the terminal), cut after `max`
// bytes with "...".
inline std::string QuotePrintable(std::string_view s, size_t max = std::string_view::npos) {
  std::string out = "\"";
  for (unsigned char c : s.substr(0, max)) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max) out += "...";
  out += '"';
  return out;
}

// Unix time `t` as YYYY-MM-DDTHH:MM:SSZ (UTC), for messages and listings.
inline std::string UtcTimeString(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace vaultp11
