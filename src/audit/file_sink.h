// The file sink: appends each batch to a hash-chained audit file (chain.h), rotates the file by
// size and by UTC day, deletes old rotated files, and signs the chain's end in a head file.
//
// Several processes share one path (every process that loads the module has its own FileSink
// on it) and still keep ONE valid chain:
//   - Write takes an exclusive flock on the current file and, once it holds it, checks that the
//     path still names the file it locked (another process may have rotated it while it
//     waited); if not, it reopens the path and locks again. Everything below happens under
//     that lock, so batches never interleave and each continues from the file's last line.
//   - Rotation never leaves the path without a complete file: the batch is first written to a
//     new temporary file beside it (locked as well) continuing the chain (seq 1, prevHash = the
//     old file's last hash), then the old file gets its rotated name with link(2) and rename(2)
//     puts the new file at the path. A process that opens the path meanwhile gets either file,
//     blocks on its lock, and sees the new file once the rotation is done. (On a filesystem
//     without hard links the old file is renamed instead, which leaves the path missing for a
//     moment; writers that create it then lose that race to the rename.)
//   - The head is rewritten under the same lock, after the batch.
//
// Files, for path <dir>/<stem><ext> (e.g. /var/log/vaultp11/audit.log):
//   <path>          the current file;
//   <dir>/<stem>-<yyyymmddTHHMMSSZ>[-N]<ext>   a rotated file (audit-20261129T213000Z.log): the
//                   UTC time of its rotation, so at or after every record in it; -N (1, 2, ...)
//                   for further rotations in the same second. Names never go backwards: a
//                   rotation in the second of the newest rotated file, or before it (the clock
//                   was set back), takes that file's time and the next N, so sorting the names by
//                   (time, N) gives the chain order;
//   <path>.head     the signed head (when a head key is set): JSON {"file": basename of the
//                   path, "seq": the last record's seq, "hash": the last line's hash, "time":
//                   RFC 3339 UTC, "mac": hex HMAC-SHA256(key, "vaultp11 audit head v1\n" +
//                   the other four fields as compact JSON with sorted keys)}. It shows what the
//                   chain alone cannot: records deleted from the end of the current file, and a
//                   current file replaced by another one.
//
// When: by size, when the file is not empty and would pass max_bytes with the batch (a batch
// larger than max_bytes goes whole into an empty file); daily, at the first write of a UTC day
// later than the day of the file's first record ("time"; the file's mtime for records without
// one). A clock set back never rotates.
//
// Retention: at each rotation, rotated files whose name time is more than retention_days
// before now are deleted. The name time stands for the file's newest record (it is at or after
// it), so no file holding a record younger than that is deleted; PurgeBefore uses the same rule.
// Then, with max_total_bytes, the oldest rotated files are deleted until all the sink's files
// fit in it. Neither ever deletes the newest rotated file (the one the current file continues).
//
// What the head cannot do: once a writer appends again, a cut end is no longer visible in the
// files (the chain goes on from the last record left, and the new head matches); the writer
// therefore compares the head with the file before it appends and logs a warning when records
// are missing at the end or the last one differs. An old head saved and put back later is not
// recognised as old by the head alone: the anchor (ChainEnd, kept in the store) does that. An
// emptied current file continues from the newest rotated file.
//
// Failures leave the chain valid: a batch that cannot be written completely (disk full, file
// size limit) is cut off again with ftruncate to the file's size before it and the error is
// returned (the next Write starts afresh); a failed rotation removes the new file and keeps the
// old one current. A file whose writer died in the middle of a line (no final newline) has that
// partial line cut off, with a warning, by the next Write. The path must name a regular file
// (or nothing yet): a device such as /dev/full is refused by Open and Write alike, so neither
// rotation nor the head ever renames or creates anything beside it.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "audit/event.h"
#include "audit/sink.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::audit {

// A position in a sink's chain, in an order that survives rotation (seq starts again at 1 in
// every file): the newest rotated file before the current one (its name's time, Unix seconds,
// and N; 0 and 0 when there is none), then the current file's last record (its seq and hash).
// The store keeps the furthest one each sink sealed (store::Store::AdvanceAuditAnchor), so that
// `vaultp11 audit verify` recognises an older log put back with its older head.
struct ChainEnd {
  int64_t gen_time = 0;
  int64_t gen_n = 0;
  uint64_t seq = 0;
  std::string hash;
  // Orders by position only (the hash is compared where the positions are equal).
  bool Before(const ChainEnd& o) const {
    return std::tie(gen_time, gen_n, seq) < std::tie(o.gen_time, o.gen_n, o.seq);
  }
};

struct FileSinkOptions {
  std::string path;                    // the current file; its directory must exist
  uint64_t max_bytes = 100ull << 20;   // rotate before the file would pass this (0: never by size)
  bool daily = true;                   // rotate at the first write of a new UTC day
  int retention_days = 0;              // delete rotated files older than this at rotation (0: keep all)
  std::optional<SecureBytes> head_key; // signs <path>.head after every batch (32 bytes; "audit-head")
  std::function<std::chrono::system_clock::time_point()> now;  // the clock (default system_clock::now)
  // At each rotation, delete the oldest rotated files until the rotated files and the current
  // one together take at most this many bytes (0: no cap). The newest rotated file (the one the
  // current file continues) is always kept.
  uint64_t max_total_bytes = 1ull << 30;
  // Records the end of the chain outside the log (the store's audit anchor). Called on the
  // writer thread after a batch, never more than once per `anchor_interval` (a rotation and
  // Close always anchor what was written), so the store is not written per event or per batch.
  // An error is logged once per failure streak; the log itself is unaffected.
  std::function<Status(const ChainEnd&)> anchor;
  std::chrono::milliseconds anchor_interval{1000};
};

struct RotatedFile;

class FileSink : public Sink {
 public:
  explicit FileSink(FileSinkOptions options);
  ~FileSink() override;
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;

  // "file <path>".
  std::string Describe() const override;
  // Opens (creating, 0600) the current file and checks that it is a regular file ending with a
  // complete audit record (a partial last line only gives a warning: Write cuts it off) and
  // that its directory is writable (rotation and the head need it). Errors name the file:
  // "audit file /x/audit.log: cannot open: Permission denied".
  Status Open() override;
  // Appends the batch (adding "seq" and "prevHash"), rotating first when needed, then rewrites
  // the head. Needs no Open before it. An error names the file and never contains event data.
  using Sink::Write;
  Status Write(std::span<const Record> events) override;
  void Close(int timeout_ms) override;

 private:
  struct Tail;
  // Write under the file's lock; `rotated` tells whether it rotated the file.
  Status WriteLocked(std::span<const Record> events, bool& rotated);
  Status LockCurrent();
  Result<Tail> ReadTail();
  Status Rotate(std::span<const Record> events, const Tail& tail, std::chrono::system_clock::time_point now);
  Result<bool> NeedsRotation(uint64_t size, uint64_t batch_bytes, std::chrono::system_clock::time_point now);
  Status WriteHead(uint64_t seq, const std::string& hash, std::chrono::system_clock::time_point now);
  // After a batch: the position written, anchored now when it is due (or `force`).
  void Anchor(bool force);
  // The newest rotated file before the open one (ChainEnd's gen), found once per open file.
  void FindGeneration();
  void CapTotal(const std::vector<RotatedFile>& older);
  void CheckHead(uint64_t seq, const std::string& hash) const;
  void CloseFile();

  FileSinkOptions opts_;
  int fd_ = -1;
  // The end of the open file as this sink last wrote it (its last seq and hash), valid while
  // the file keeps that size (nobody else appended): saves reading it back before each batch.
  struct Cache {
    bool valid = false;
    uint64_t size = 0, seq = 0;
    std::string hash;
  } cache_;
  std::optional<std::chrono::sys_days> first_day_;  // of the open file, once known
  // The anchor: the open file's generation (once known) and the last position this sink wrote
  // and has not anchored yet.
  std::optional<std::pair<int64_t, int64_t>> gen_;
  std::optional<ChainEnd> unanchored_;
  std::chrono::steady_clock::time_point last_anchor_{};
  bool anchor_failing_ = false;
};

// FormatTime (audit/event.h) writes the times of records and heads.
// A calendar date "YYYY-MM-DD" (exactly that form, a real date), e.g. the start of a record's
// "time" or `audit purge --before`.
std::optional<std::chrono::sys_days> ParseDate(std::string_view text);

// The rotated name for `path` at `time` (seconds), with "-N" when n > 0.
std::string RotatedName(const std::string& path, std::chrono::sys_seconds time, unsigned n = 0);

struct RotatedFile {
  std::string path;
  std::chrono::sys_seconds time;  // from the name: when it was rotated
  unsigned n = 0;                 // the "-N" of the name (0: none)
};
// The rotated files of the sink at `path` (names of exactly the rotated form, beside it), in
// chain order (by time, then N). A missing directory is an error.
Result<std::vector<RotatedFile>> RotatedFiles(const std::string& path);

// Every file of the sink at `path` in chain order: the rotated files, then the current file
// when it exists.
Result<std::vector<std::string>> ChainFiles(const std::string& path);

// <path>.head.
std::string HeadPath(const std::string& path);

struct ChainFileVerdict {
  std::string path;
  size_t records = 0;
};

struct ChainVerdict {
  bool intact = false;
  std::vector<ChainFileVerdict> files;  // the files found intact, in order (all of them when intact)
  // The first problem, when not intact: `where` is "FILE:LINE" or "FILE", `problem` says what.
  std::string where;
  std::string problem;
  bool from_genesis = false;  // the first file starts the chain (else it continues a file not given)
  std::optional<ChainEnd> end;  // VerifySink, when intact: where the chain ends (the current file's last record)
  bool head_checked = false;  // the head was read, its MAC checked and it matched the chain
  std::string head;           // when head_checked: "record N, signed TIME"
  std::vector<std::string> notes;  // things that are not breaks, one sentence each, naming files
};

// Verifies `files` (in chain order) as one chain, each continuing from the last hash of the one
// before; the first may continue from anything (older files may have been purged). The last
// file is read as it was at one moment, under a shared flock (a writer may be appending to it:
// a batch is never seen half-written, and the head matches what was read). With `head_key`,
// also checks the last file's head (<last>.head): its MAC, its file name, and that the record
// it names is in the file with that hash: a head naming a record past the end is "records
// were deleted from the end of FILE", a different hash is a replaced or rewritten file, records
// after it are only a note (written after the head, e.g. a writer stopped in between). A
// missing or unreadable head is a problem. An error result means a file could not be read.
Result<ChainVerdict> VerifyChain(const std::vector<std::string>& files, const SecureBytes* head_key = nullptr);

// The same for every file of the sink at `path` (ChainFiles), taken consistently while
// writers go on: the current file and its head first (under the lock), then the rotated files
// older than it. A missing current file counts as one without records (its head, if any, then
// shows what was lost); a sink without files or head verifies with no files.
Result<ChainVerdict> VerifySink(const std::string& path, const SecureBytes* head_key = nullptr);

// Re-signs the head of the sink at `path` (<path>.head) with `new_key` after checking its MAC
// under `old_key` (`vaultp11 store reseal` rotates the key the heads are signed with): the
// same file, record, hash and time, a new MAC, written atomically. No head: false (nothing to
// do); a head whose MAC does not match `old_key`: CKR_SIGNATURE_INVALID, left alone.
Result<bool> ResignHead(const std::string& path, const SecureBytes& old_key, const SecureBytes& new_key);

// Compares the end of the sink at `path` (VerifySink's `end`, of an intact chain) with its
// anchor (the furthest position a writer sealed): "" when the log reaches or passes the anchor
// (and, in the anchor's file, still holds the anchored record), else the problem: the log
// was rolled back (an older copy put back), or the anchored record was rewritten.
std::string CheckAnchor(const std::string& path, const ChainEnd& end, const ChainEnd& anchor);

// Deletes the rotated files of the sink at `path` whose newest record is before `date` (00:00
// UTC), judged by the time in their names (see Retention above); never the current file, and
// never the newest rotated file (the current file continues it, and the rollback check places
// the chain by its name, see ChainEnd). Returns the paths deleted, oldest first.
Result<std::vector<std::string>> PurgeBefore(const std::string& path, std::chrono::sys_days date);

}  // namespace vaultp11::audit
