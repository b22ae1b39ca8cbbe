// The tamper-evident form of an audit file: one JSON object per line, each carrying its
// sequence number in the file ("seq", from 1) and the SHA-256 of the previous line
// ("prevHash"; the first line of a file carries the hash it continues from, 64 zeros for a
// chain's first file). Several processes append to one file under an exclusive flock, each
// batch continuing from the file's last line, so the file keeps one valid chain.
#pragma once

#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "audit/sink.h"
#include "util/result.h"

namespace vaultp11::audit {

inline constexpr char kGenesisHash[] = "0000000000000000000000000000000000000000000000000000000000000000";

// Lowercase hex SHA-256 of `line` (without its newline).
std::string LineHash(std::string_view line);

// Appends `events` (JSON objects; "seq" and "prevHash" are set here) to the file at `path`,
// created 0600 if missing, under an exclusive lock; a new file continues from `first_prev`.
Status Append(const std::string& path, std::span<const nlohmann::json> events, const std::string& first_prev = kGenesisHash);

// The lines that append `events` (JSON objects: anything else throws) to a chain whose last
// record is `seq` with hash `prev` (0 and the hash continued from, for an empty file): each
// with "seq" and "prevHash" set and a newline. `seq` and `prev` are advanced to the last line's.
std::string ChainLines(std::span<const nlohmann::json> events, uint64_t& seq, std::string& prev);
// The same for records (each one JSON object): "seq" and "prevHash" are put first in each.
std::string ChainLines(std::span<const Record> records, uint64_t& seq, std::string& prev);

// The end of an open file, read with pread (the file offset is not used): its last complete
// line (without its newline; "" when there is none), the offset just past that line's newline
// and the file's size. A writer that died in the middle of a line leaves size > complete.
struct FileEnd {
  std::string last_line;
  uint64_t complete = 0;
  uint64_t size = 0;
};
Result<FileEnd> ReadEnd(int fd);

// The "seq" of a record line, or an error when the line is no audit record.
Result<uint64_t> RecordSeq(std::string_view line);

struct Verdict {
  bool intact = false;
  size_t records = 0;     // lines read
  size_t line = 0;        // the first bad line (1-based), when not intact
  std::string problem;    // what is wrong there
  std::string last_hash;  // hash of the last line (what a following file must continue from)
  std::string first_prev; // the first record's prevHash (kGenesisHash: the file starts a chain)
};

// Checks a file's chain: every line parses, "seq" counts 1, 2, 3, ... and "prevHash" is the
// hash of the line before (the first one `first_prev`, when given). The first break is named:
// a record modified (its successor's prevHash no longer matches), deleted (a seq gap),
// inserted or reordered (a seq that does not follow).
Result<Verdict> VerifyFile(const std::string& path, const std::string& first_prev = "");
// The same for the first `limit` bytes of an open file (read with pread): a file that is still
// being appended to is checked as far as it was when its size was taken under the lock.
Result<Verdict> VerifyOpenFile(int fd, uint64_t limit, const std::string& first_prev = "");

// The hash of the seq-th line within the first `limit` bytes of an open file, or an error when
// there are fewer lines.
Result<std::string> RecordHash(int fd, uint64_t limit, uint64_t seq);

}  // namespace vaultp11::audit
