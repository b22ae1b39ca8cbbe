// Text helpers for messages.
#pragma once

#include <cstdint>
#include <ctime>
#include <optional>
#include <span>
#include <string>
#include <vector>
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

// Bytes as lowercase hex digits.
inline std::string HexOf(std::span<const uint8_t> raw) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (uint8_t b : raw) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

// Lowercase hex digits as bytes; nullopt for anything else (odd length, other characters).
inline std::optional<std::vector<uint8_t>> ParseHex(std::string_view s) {
  if (s.size() % 2 != 0) return std::nullopt;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nib(s[2 * i]), lo = nib(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

}  // namespace vaultp11
