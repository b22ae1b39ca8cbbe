// Text helpers for messages.
#pragma once

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

}  // namespace vaultp11
