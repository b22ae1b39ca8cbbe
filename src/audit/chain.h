// The tamper-evident form of an audit file: one JSON object per line, each carrying its
// sequence number in the file ("seq", from 1) and the SHA-256 of the previous line
// ("prevHash"; the first line of a file carries the hash it continues from, 64 zeros for a
// chain's first file). Several processes append to one file under an exclusive flock, each
// batch continuing from the file's last line, so the file keeps one valid chain.
#pragma once

#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "util/result.h"

namespace vaultp11::audit {

inline constexpr char kGenesisHash[] = "0000000000000000000000000000000000000000000000000000000000000000";

// Lowercase hex SHA-256 of `line` (without its newline).
std::string LineHash(std::string_view line);

// Appends `events` (JSON objects; "seq" and "prevHash" are set here) to the file at `path`,
// created 0600 if missing, under an exclusive lock; a new file continues from `first_prev`.
Status Append(const std::string& path, std::span<const nlohmann::json> events, const std::string& first_prev = kGenesisHash);

struct Verdict {
  bool intact = false;
  size_t records = 0;     // lines read
  size_t line = 0;        // the first bad line (1-based), when not intact
  std::string problem;    // what is wrong there
  std::string last_hash;  // hash of the last line (what a following file must continue from)
};

// Checks a file's chain: every line parses, "seq" counts 1, 2, 3, ... and "prevHash" is the
// hash of the line before (the first one `first_prev`, when given). The first break is named:
// a record modified (its successor's prevHash no longer matches), deleted (a seq gap),
// inserted or reordered (a seq that does not follow).
Result<Verdict> VerifyFile(const std::string& path, const std::string& first_prev = "");

}  // namespace vaultp11::audit
