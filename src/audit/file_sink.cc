#include "audit/file_sink.h"

#include "audit/event.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "audit/chain.h"
#include "backend/ossl/ossl_backend.h"
#include "util/log.h"
#include "util/ossl_ptr.h"
#include "util/strings.h"

namespace vaultp11::audit {
namespace {

namespace fs = std::filesystem;
using std::chrono::sys_days;
using std::chrono::sys_seconds;
using Clock = std::chrono::system_clock;

constexpr char kHeadMacContext[] = "vaultp11 audit head v1\n";
constexpr size_t kMaxHeadBytes = 64 * 1024;
constexpr size_t kMaxFirstLineBytes = 1 << 20;

std::string ErrnoText(int e) { return std::strerror(e); }

std::string DirOf(const std::string& path) {
  std::string d = fs::path(path).parent_path().string();
  return d.empty() ? "." : d;
}
std::string BaseOf(const std::string& path) { return fs::path(path).filename().string(); }

// 0 when all of `data` was written, else the errno of the write that failed.
int WriteAll(int fd, std::string_view data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
    done += static_cast<size_t>(n);
  }
  return 0;
}


// "yyyymmddTHHMMSSZ".
std::string Stamp(sys_seconds t) {
  sys_days day = std::chrono::floor<std::chrono::days>(t);
  std::chrono::year_month_day ymd{day};
  std::chrono::hh_mm_ss hms{t - day};
  return fmt::format("{:04}{:02}{:02}T{:02}{:02}{:02}Z", static_cast<int>(ymd.year()),
                     static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), hms.hours().count(),
                     hms.minutes().count(), hms.seconds().count());
}

bool Digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

int Num(std::string_view s) {
  int v = 0;
  for (char c : s) v = v * 10 + (c - '0');
  return v;
}

std::optional<sys_seconds> ParseStamp(std::string_view s) {
  if (s.size() != 16 || s[8] != 'T' || s[15] != 'Z' || !Digits(s.substr(0, 8)) || !Digits(s.substr(9, 6)))
    return std::nullopt;
  std::string date = fmt::format("{}-{}-{}", s.substr(0, 4), s.substr(4, 2), s.substr(6, 2));
  std::optional<sys_days> day = ParseDate(date);
  int h = Num(s.substr(9, 2)), m = Num(s.substr(11, 2)), sec = Num(s.substr(13, 2));
  if (!day || h > 23 || m > 59 || sec > 59) return std::nullopt;
  return *day + std::chrono::hours(h) + std::chrono::minutes(m) + std::chrono::seconds(sec);
}

// The UTC day of a record's "time" ("2026-11-29T21:30:00.123456Z"), when it has one.
std::optional<sys_days> RecordDay(std::string_view line) {
  auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("time") || !j["time"].is_string()) return std::nullopt;
  const std::string t = j["time"].get<std::string>();
  if (t.size() < 20 || t[10] != 'T' || t.back() != 'Z') return std::nullopt;
  return ParseDate(std::string_view(t).substr(0, 10));
}

// The first line of the open file (without its newline), or nullopt when there is no complete
// one within kMaxFirstLineBytes.
std::optional<std::string> FirstLine(int fd) {
  std::string buf;
  char chunk[4096];
  while (buf.size() < kMaxFirstLineBytes) {
    ssize_t n = pread(fd, chunk, sizeof(chunk), static_cast<off_t>(buf.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    buf.append(chunk, static_cast<size_t>(n));
    size_t nl = buf.find('\n');
    if (nl != std::string::npos) return buf.substr(0, nl);
  }
  return std::nullopt;
}

struct Head {
  std::string file;
  uint64_t seq = 0;
  std::string hash, time, mac;
};

std::string HeadMac(const SecureBytes& key, const std::string& file, uint64_t seq, const std::string& hash,
                    const std::string& time) {
  // Sorted keys (nlohmann::json is a std::map) make the string canonical.
  nlohmann::json fields = {{"file", file}, {"seq", seq}, {"hash", hash}, {"time", time}};
  std::string msg = kHeadMacContext + fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t n = 0;
  if (EVP_Q_mac(ossl::LibCtx(), "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, sizeof(mac), &n) == nullptr)
    return "";  // never equal to a stored MAC (those are 64 hex digits)
  std::string hex;
  AppendHex(hex, std::string_view(reinterpret_cast<const char*>(mac), n));
  return hex;
}

bool MacMatches(const SecureBytes& key, const Head& h) {
  std::string expect = HeadMac(key, h.file, h.seq, h.hash, h.time);
  return !expect.empty() &&
         ConstantTimeEqual(std::span(reinterpret_cast<const uint8_t*>(expect.data()), expect.size()),
                           std::span(reinterpret_cast<const uint8_t*>(h.mac.data()), h.mac.size()));
}

// The head at `head_path`: nullopt when there is none; an error when it cannot be read or is
// not a head.
Result<std::optional<Head>> ReadHead(const std::string& head_path) {
  int fd = open(head_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<Head>();
    return Err(CKR_FUNCTION_FAILED, "cannot read {}: {}", head_path, ErrnoText(errno));
  }
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0 && text.size() < kMaxHeadBytes) text.append(buf, static_cast<size_t>(n));
  int read_errno = errno;
  close(fd);
  if (n < 0) return Err(CKR_FUNCTION_FAILED, "cannot read {}: {}", head_path, ErrnoText(read_errno));
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("file") || !j["file"].is_string() || !j.contains("seq") ||
      !j["seq"].is_number_unsigned() || !j.contains("hash") || !j["hash"].is_string() || !j.contains("time") ||
      !j["time"].is_string() || !j.contains("mac") || !j["mac"].is_string())
    return Err(CKR_FUNCTION_FAILED, "{} is not an audit head (damaged or replaced)", head_path);
  Head h;
  h.file = j["file"].get<std::string>();
  h.seq = j["seq"].get<uint64_t>();
  h.hash = j["hash"].get<std::string>();
  h.time = j["time"].get<std::string>();
  h.mac = j["mac"].get<std::string>();
  return std::optional<Head>(std::move(h));
}

// The last line's hash and seq of a complete audit file, or nullopt.
std::optional<std::pair<uint64_t, std::string>> LastRecordOf(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  auto end = ReadEnd(fd);
  close(fd);
  if (!end.ok() || end->size == 0 || end->complete != end->size) return std::nullopt;
  auto seq = RecordSeq(end->last_line);
  if (!seq.ok()) return std::nullopt;
  return std::make_pair(seq.value(), LineHash(end->last_line));
}

// Deletes the files of `rotated` whose name time is before `cutoff`; returns those deleted.
Result<std::vector<std::string>> DeleteBefore(const std::vector<RotatedFile>& rotated, sys_seconds cutoff) {
  std::vector<std::string> deleted;
  for (const RotatedFile& r : rotated) {
    if (r.time >= cutoff) continue;
    if (unlink(r.path.c_str()) != 0) {
      if (errno == ENOENT) continue;  // another process got there first
      return Err(CKR_FUNCTION_FAILED, "cannot delete {}: {} ({} files deleted before it)", r.path, ErrnoText(errno),
                 deleted.size());
    }
    deleted.push_back(r.path);
  }
  return deleted;
}

}  // namespace


std::optional<sys_days> ParseDate(std::string_view s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-' || !Digits(s.substr(0, 4)) || !Digits(s.substr(5, 2)) ||
      !Digits(s.substr(8, 2)))
    return std::nullopt;
  std::chrono::year_month_day ymd{std::chrono::year(Num(s.substr(0, 4))),
                                  std::chrono::month(static_cast<unsigned>(Num(s.substr(5, 2)))),
                                  std::chrono::day(static_cast<unsigned>(Num(s.substr(8, 2))))};
  if (!ymd.ok()) return std::nullopt;
  return sys_days(ymd);
}

std::string RotatedName(const std::string& path, sys_seconds time, unsigned n) {
  fs::path p(path);
  std::string name = p.stem().string() + "-" + Stamp(time);
  if (n > 0) name += fmt::format("-{}", n);
  name += p.extension().string();
  return (p.parent_path() / name).string();
}

std::string HeadPath(const std::string& path) { return path + ".head"; }

Result<std::vector<RotatedFile>> RotatedFiles(const std::string& path) {
  fs::path p(path);
  const std::string prefix = p.stem().string() + "-", ext = p.extension().string();
  std::vector<RotatedFile> out;
  std::error_code ec;
  fs::directory_iterator it(DirOf(path), ec);
  if (ec) return Err(CKR_FUNCTION_FAILED, "cannot list {}: {}", DirOf(path), ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() < prefix.size() + 16 + ext.size() || !name.starts_with(prefix) || !name.ends_with(ext)) continue;
    std::string_view mid = std::string_view(name).substr(prefix.size(), name.size() - prefix.size() - ext.size());
    std::optional<sys_seconds> t = ParseStamp(mid.substr(0, 16));
    if (!t) continue;
    unsigned n = 0;
    if (mid.size() > 16) {
      std::string_view num = mid.substr(17);
      // "-N": 1 to 9 digits, no leading zero (so each N has one spelling).
      if (mid[16] != '-' || !Digits(num) || num.size() > 9 || num[0] == '0') continue;
      n = static_cast<unsigned>(Num(num));
    }
    std::error_code tec;
    if (!it->is_regular_file(tec)) continue;
    out.push_back({it->path().string(), *t, n});
  }
  if (ec) return Err(CKR_FUNCTION_FAILED, "cannot list {}: {}", DirOf(path), ec.message());
  std::sort(out.begin(), out.end(),
            [](const RotatedFile& a, const RotatedFile& b) { return std::tie(a.time, a.n) < std::tie(b.time, b.n); });
  return out;
}

Result<std::vector<std::string>> ChainFiles(const std::string& path) {
  VAULTP11_ASSIGN_OR_RETURN(std::vector<RotatedFile> rotated, RotatedFiles(path));
  std::vector<std::string> out;
  for (const RotatedFile& r : rotated) out.push_back(r.path);
  struct stat st {};
  if (stat(path.c_str(), &st) == 0) out.push_back(path);
  return out;
}

Result<std::vector<std::string>> PurgeBefore(const std::string& path, sys_days date) {
  VAULTP11_ASSIGN_OR_RETURN(std::vector<RotatedFile> rotated, RotatedFiles(path));
  if (!rotated.empty()) rotated.pop_back();  // the newest: the one the current file continues
  return DeleteBefore(rotated, sys_seconds(date));
}

std::string CheckAnchor(const std::string& path, const ChainEnd& end, const ChainEnd& anchor) {
  auto where = [&](const ChainEnd& e) {
    std::string after =
        e.gen_time == 0 && e.gen_n == 0
            ? std::string("no rotation before it")
            : fmt::format("continuing {}", BaseOf(RotatedName(path, sys_seconds(std::chrono::seconds(e.gen_time)),
                                                               static_cast<unsigned>(e.gen_n))));
    return fmt::format("record {} of the current file ({})", e.seq, after);
  };
  if (end.Before(anchor))
    return fmt::format("rollback: the log ends at {}, but the store's audit anchor shows it reached {}: an older copy of "
                       "the log (and its head) was put back, or the newest records or files were deleted",
                       where(end), where(anchor));
  if (anchor.Before(end) && (end.gen_time != anchor.gen_time || end.gen_n != anchor.gen_n)) return "";
  // The anchor lies in the current file: the record it names must still be there.
  std::string at = end.hash;
  if (anchor.seq != end.seq) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fmt::format("cannot read {} to check its anchor: {}", path, ErrnoText(errno));
    struct stat st {};
    auto h = fstat(fd, &st) == 0 ? RecordHash(fd, static_cast<uint64_t>(st.st_size), anchor.seq)
                                 : Result<std::string>(Err(CKR_FUNCTION_FAILED, "cannot stat it"));
    close(fd);
    if (!h.ok()) return fmt::format("cannot check the anchor of {}: {}", path, h.error().message);
    at = h.value();
  }
  if (at != anchor.hash)
    return fmt::format("{} is not the record the store's audit anchor sealed (the file was replaced or rewritten)",
                       where(anchor));
  return "";
}

// ---- FileSink ----------------------------------------------------------------------------------

// The end of the locked current file: its size (complete lines only) and the chain position a
// batch continues from.
struct FileSink::Tail {
  uint64_t size = 0;
  uint64_t seq = 0;
  std::string hash;
};

FileSink::FileSink(FileSinkOptions options) : opts_(std::move(options)) {
  if (!opts_.now) opts_.now = [] { return Clock::now(); };
}

FileSink::~FileSink() { CloseFile(); }

std::string FileSink::Describe() const { return "file " + opts_.path; }

void FileSink::Close(int /*timeout_ms*/) {
  Anchor(/*force=*/true);  // what was written, sealed in the store before the process goes
  CloseFile();
}

void FileSink::CloseFile() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  cache_ = Cache{};
  first_day_.reset();
  gen_.reset();
}

void FileSink::FindGeneration() {
  if (gen_ || !opts_.anchor) return;
  auto rotated = RotatedFiles(opts_.path);
  if (!rotated.ok()) return;  // no anchor for this batch; the next one tries again
  gen_ = rotated->empty() ? std::pair<int64_t, int64_t>{0, 0}
                          : std::pair<int64_t, int64_t>{rotated->back().time.time_since_epoch().count(), rotated->back().n};
}

void FileSink::Anchor(bool force) {
  if (!opts_.anchor || !unanchored_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_anchor_ < opts_.anchor_interval) return;
  Status st = opts_.anchor(*unanchored_);
  last_anchor_ = now;
  if (!st.ok()) {
    // The log goes on; only the rollback check lags. Logged once per failure streak.
    if (!anchor_failing_)
      log::Warning("audit file {}: cannot record its anchor in the store: {}", opts_.path, st.error().message);
    anchor_failing_ = true;
    return;
  }
  if (anchor_failing_) log::Info("audit file {}: its anchor is recorded again", opts_.path);
  anchor_failing_ = false;
  unanchored_.reset();
}

void FileSink::CapTotal(const std::vector<RotatedFile>& older) {
  // Sizes of the current file, the file just rotated (kept whatever it takes) and `older`.
  auto size_of = [](const std::string& p) -> uint64_t {
    struct stat st {};
    return stat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  };
  struct stat cur {};
  uint64_t total = fstat(fd_, &cur) == 0 ? static_cast<uint64_t>(cur.st_size) : 0;
  auto rotated = RotatedFiles(opts_.path);
  if (rotated.ok() && !rotated->empty()) total += size_of(rotated->back().path);
  std::vector<uint64_t> sizes;
  for (const RotatedFile& r : older) {
    sizes.push_back(size_of(r.path));
    total += sizes.back();
  }
  for (size_t i = 0; i < older.size() && total > opts_.max_total_bytes; ++i) {
    if (sizes[i] == 0 && access(older[i].path.c_str(), F_OK) != 0) continue;  // gone already
    if (unlink(older[i].path.c_str()) != 0) {
      if (errno == ENOENT) continue;
      log::Warning("audit file {}: size cap: cannot delete {}: {}", opts_.path, older[i].path, ErrnoText(errno));
      return;
    }
    total -= sizes[i];
    log::Info("audit file {}: deleted {} (the files passed max_total_bytes {})", opts_.path, older[i].path,
              opts_.max_total_bytes);
  }
}

Status FileSink::Open() {
  const std::string& path = opts_.path;
  CloseFile();
  fd_ = open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot open: {}", path, ErrnoText(errno));
  struct stat st {};
  if (fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    CloseFile();
    return Err(CKR_FUNCTION_FAILED, "audit file {}: not a regular file", path);
  }
  const std::string dir = DirOf(path);
  if (faccessat(AT_FDCWD, dir.c_str(), W_OK | X_OK, AT_EACCESS) != 0)
    return Err(CKR_FUNCTION_FAILED, "audit file {}: its directory {} is not writable ({}): rotation and the head need it",
               path, dir, ErrnoText(errno));
  // A shared lock: a batch another process is appending is read whole or not at all.
  while (flock(fd_, LOCK_SH) != 0) {
    if (errno != EINTR) return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot lock: {}", path, ErrnoText(errno));
  }
  auto end = ReadEnd(fd_);
  flock(fd_, LOCK_UN);
  if (!end.ok()) return Err(CKR_FUNCTION_FAILED, "audit file {}: {}", path, end.error().message);
  if (end->complete > 0 && !RecordSeq(end->last_line).ok())
    return Err(CKR_FUNCTION_FAILED,
               "audit file {}: does not end with an audit record (check it with `vaultp11 audit verify`, then move it "
               "away to start a new file)",
               path);
  if (end->size != end->complete)
    log::Warning("audit file {}: ends with a partial line ({} bytes, a writer stopped in the middle of it); the next "
                 "write cuts it off",
                 path, end->size - end->complete);
  return OkStatus();
}

Status FileSink::LockCurrent() {
  const std::string& path = opts_.path;
  // Bounded: each round means another process rotated the file meanwhile.
  for (int round = 0; round < 1000; ++round) {
    if (fd_ < 0) {
      fd_ = open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
      if (fd_ < 0) return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot open: {}", path, ErrnoText(errno));
      cache_ = Cache{};
      first_day_.reset();
      gen_.reset();
    }
    while (flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot lock: {}", path, ErrnoText(errno));
    }
    struct stat held {}, named {};
    if (fstat(fd_, &held) != 0) return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot stat: {}", path, ErrnoText(errno));
    if (stat(path.c_str(), &named) == 0 && named.st_dev == held.st_dev && named.st_ino == held.st_ino)
      return OkStatus();
    // Rotated away (or removed) while we waited: the path names another file now.
    flock(fd_, LOCK_UN);
    CloseFile();
  }
  return Err(CKR_FUNCTION_FAILED, "audit file {}: keeps being replaced while it is being locked", opts_.path);
}

Result<FileSink::Tail> FileSink::ReadTail() {
  const std::string& path = opts_.path;
  struct stat st {};
  if (fstat(fd_, &st) != 0) return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot stat: {}", path, ErrnoText(errno));
  // Checked before anything is renamed or written beside it (a device such as /dev/full).
  if (!S_ISREG(st.st_mode)) return Err(CKR_FUNCTION_FAILED, "audit file {}: not a regular file", path);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (cache_.valid && cache_.size == size) return Tail{size, cache_.seq, cache_.hash};
  cache_.valid = false;
  auto end = ReadEnd(fd_);
  if (!end.ok()) return Err(CKR_FUNCTION_FAILED, "audit file {}: {}", path, end.error().message);
  if (end->size != end->complete) {
    // A writer died in the middle of a line: that line was never a record; the chain goes on
    // from the last complete one.
    log::Warning("audit file {}: cutting off a partial last line ({} bytes, a writer stopped in the middle of it)",
                 path, end->size - end->complete);
    if (ftruncate(fd_, static_cast<off_t>(end->complete)) != 0)
      return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot cut off a partial last line: {}", path, ErrnoText(errno));
    end->size = end->complete;
    if (end->size == 0) first_day_.reset();
  }
  Tail t;
  t.size = end->size;
  if (t.size == 0) {
    // An empty current file continues the newest rotated file, if any (the current file was
    // emptied or removed by someone: the chain goes on and its head shows the loss below).
    t.hash = kGenesisHash;
    auto rotated = RotatedFiles(path);
    if (rotated.ok() && !rotated->empty()) {
      auto last = LastRecordOf(rotated->back().path);
      if (last) {
        t.hash = last->second;
      } else {
        log::Warning("audit file {}: the newest rotated file {} does not end with an audit record; starting a new chain",
                     path, rotated->back().path);
      }
    }
  } else {
    auto seq = RecordSeq(end->last_line);
    if (!seq.ok())
      return Err(CKR_FUNCTION_FAILED,
                 "audit file {}: does not end with an audit record (check it with `vaultp11 audit verify`, then move it "
                 "away to start a new file)",
                 path);
    t.seq = seq.value();
    t.hash = LineHash(end->last_line);
  }
  if (opts_.head_key) CheckHead(t.seq, t.hash);
  return t;
}

void FileSink::CheckHead(uint64_t seq, const std::string& hash) const {
  // The writer is the first to see records cut from the end of the file: once it appends,
  // the chain looks whole again, so it says so in the log before rewriting the head.
  const std::string& path = opts_.path;
  auto head = ReadHead(HeadPath(path));
  if (!head.ok()) {
    log::Warning("audit file {}: {}; it is rewritten now", path, head.error().message);
    return;
  }
  if (!head->has_value()) return;
  const Head& h = head.value().value();
  if (!MacMatches(*opts_.head_key, h)) {
    log::Warning("audit file {}: the MAC of its head {} does not match (forged, or signed with another key); it is "
                 "rewritten now",
                 path, HeadPath(path));
    return;
  }
  if (h.file != BaseOf(path) || h.seq < seq || (h.seq == seq && h.hash == hash)) return;
  // A head written just before a rotation (a crash came between) names the rotated file's end.
  if (seq == 0 || h.seq > seq) {
    auto rotated = RotatedFiles(path);
    if (rotated.ok() && !rotated->empty()) {
      auto last = LastRecordOf(rotated->back().path);
      if (last && last->first == h.seq && last->second == h.hash) return;
    }
  }
  if (h.seq > seq) {
    log::Warning("audit file {}: records were deleted from its end: its head names record {} (signed {}), the file ends "
                 "at record {}; new records continue from there",
                 path, h.seq, h.time, seq);
  } else {
    log::Warning("audit file {}: record {} is not the one its head signed {} (the file was replaced or its end "
                 "rewritten)",
                 path, seq, h.time);
  }
}

Result<bool> FileSink::NeedsRotation(uint64_t size, uint64_t batch_bytes, Clock::time_point now) {
  if (size == 0) return false;  // never rotate an empty file (a batch may be larger than max_bytes)
  if (opts_.max_bytes != 0 && size + batch_bytes > opts_.max_bytes) return true;
  if (!opts_.daily) return false;
  const sys_days today = std::chrono::floor<std::chrono::days>(now);
  std::optional<sys_days> day = first_day_;
  if (!day) {
    // The first record's day; the file's mtime for records without a "time".
    std::optional<std::string> first = FirstLine(fd_);
    if (first) day = RecordDay(*first);
    if (day) {
      first_day_ = day;  // a file's first record never changes
    } else {
      struct stat st {};
      if (fstat(fd_, &st) != 0)
        return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot stat: {}", opts_.path, ErrnoText(errno));
      day = std::chrono::floor<std::chrono::days>(Clock::from_time_t(st.st_mtime));
    }
  }
  // Only forwards: a clock set back does not rotate again and again.
  return *day < today;
}

Status FileSink::Rotate(std::span<const Record> events, const Tail& tail, Clock::time_point now) {
  const std::string& path = opts_.path;
  auto rotated = RotatedFiles(path);
  if (!rotated.ok()) return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot rotate: {}", path, rotated.error().message);
  // The rotated name: never before the newest one, so names sort in chain order.
  sys_seconds stamp = std::chrono::floor<std::chrono::seconds>(now);
  unsigned n = 0;
  if (!rotated->empty() && stamp <= rotated->back().time) {
    stamp = rotated->back().time;
    n = rotated->back().n + 1;
  }
  // 1. The new file, complete with the batch, before anything is renamed.
  std::string tmp = DirOf(path) + "/." + BaseOf(path) + ".new-XXXXXX";
  int tfd = mkostemp(tmp.data(), O_CLOEXEC | O_APPEND);  // mode 0600; appended to like the path
  if (tfd < 0)
    return Err(CKR_FUNCTION_FAILED, "audit file {}: cannot rotate: cannot create a file in {}: {}", path, DirOf(path),
               ErrnoText(errno));
  auto discard = [&] {
    close(tfd);
    unlink(tmp.c_str());
  };
  flock(tfd, LOCK_EX);  // nobody else knows it yet; held until the batch and head are done
  uint64_t seq = 0;
  std::string hash = tail.hash;
  const std::string out = ChainLines(events, seq, hash);
  if (int e = WriteAll(tfd, out); e != 0) {
    discard();
    return Err(CKR_FUNCTION_FAILED, "audit file {}: rotating failed: writing {} records failed: {} (none was kept)",
               path, events.size(), ErrnoText(e));
  }
  // 2. The old file's rotated name: a hard link keeps the path naming a complete file.
  std::string name;
  bool linked = false;
  for (;; ++n) {
    name = RotatedName(path, stamp, n);
    if (link(path.c_str(), name.c_str()) == 0) {
      linked = true;
      break;
    }
    if (errno == EEXIST) continue;
    if (errno != EPERM && errno != EOPNOTSUPP && errno != EMLINK) {
      int e = errno;
      discard();
      return Err(CKR_FUNCTION_FAILED, "audit file {}: rotating failed: cannot create {}: {}", path, name, ErrnoText(e));
    }
    // No hard links here: rename, never over an existing file.
    if (renameat2(AT_FDCWD, path.c_str(), AT_FDCWD, name.c_str(), RENAME_NOREPLACE) == 0) break;
    if (errno == EEXIST) continue;
    int e = errno;
    discard();
    return Err(CKR_FUNCTION_FAILED, "audit file {}: rotating failed: cannot rename it to {}: {}", path, name,
               ErrnoText(e));
  }
  // 3. The new file takes the path.
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    if (linked) {
      unlink(name.c_str());
    } else if (rename(name.c_str(), path.c_str()) != 0) {
      log::Error("audit file {}: cannot move {} back: {}", path, name, ErrnoText(errno));
    }
    discard();
    return Err(CKR_FUNCTION_FAILED, "audit file {}: rotating failed: cannot rename the new file into place: {}", path,
               ErrnoText(e));
  }
  // The old file is done: its lock is released and waiting writers move to the new one.
  flock(fd_, LOCK_UN);
  close(fd_);
  fd_ = tfd;
  cache_ = Cache{true, out.size(), seq, hash};
  first_day_.reset();
  gen_ = std::pair<int64_t, int64_t>{stamp.time_since_epoch().count(), n};
  log::Info("audit file {}: rotated to {}", path, name);
  if (opts_.retention_days > 0) {
    const sys_seconds cutoff = std::chrono::floor<std::chrono::seconds>(now) - std::chrono::days(opts_.retention_days);
    auto deleted = DeleteBefore(*rotated, cutoff);
    if (!deleted.ok()) log::Warning("audit file {}: retention: {}", path, deleted.error().message);
    for (const std::string& d : deleted.ok() ? deleted.value() : std::vector<std::string>{})
      log::Info("audit file {}: deleted {} (older than {} days)", path, d, opts_.retention_days);
  }
  if (opts_.max_total_bytes > 0) CapTotal(*rotated);
  return OkStatus();
}

Status FileSink::WriteHead(uint64_t seq, const std::string& hash, Clock::time_point now) {
  const std::string& path = opts_.path;
  const std::string head_path = HeadPath(path);
  nlohmann::ordered_json j;
  j["file"] = BaseOf(path);
  j["seq"] = seq;
  j["hash"] = hash;
  j["time"] = FormatTime(now);
  j["mac"] = HeadMac(*opts_.head_key, j["file"].get<std::string>(), seq, hash, j["time"].get<std::string>());
  if (j["mac"].get<std::string>().empty())
    return Err(CKR_FUNCTION_FAILED, "audit file {}: the batch was written but its head could not be signed: {}", path,
               SslErrors());
  const std::string text = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  // A new file renamed over the old one: a reader never sees half a head.
  std::string tmp = head_path + ".XXXXXX";
  int fd = mkostemp(tmp.data(), O_CLOEXEC);  // mode 0600
  if (fd < 0)
    return Err(CKR_FUNCTION_FAILED, "audit file {}: the batch was written but its head could not be: cannot create {}: {}",
               path, tmp, ErrnoText(errno));
  int e = WriteAll(fd, text);
  close(fd);
  if (e == 0 && rename(tmp.c_str(), head_path.c_str()) != 0) e = errno;
  if (e != 0) {
    unlink(tmp.c_str());
    return Err(CKR_FUNCTION_FAILED, "audit file {}: the batch was written but its head {} could not be: {}", path,
               head_path, ErrnoText(e));
  }
  return OkStatus();
}

Status FileSink::Write(std::span<const Record> events) {
  bool rotated = false;
  Status st = WriteLocked(events, rotated);
  // Outside the file's lock: the store write may wait for other processes' transactions.
  // A rotation is anchored at once (the new file starts the next generation).
  if (st.ok()) Anchor(/*force=*/rotated);
  return st;
}

Status FileSink::WriteLocked(std::span<const Record> events, bool& rotated) {
  if (events.empty()) return OkStatus();
  for (const Record& e : events)
    if (e.json.size() < 2 || e.json.front() != '{' || e.json.back() != '}') return Err(CKR_GENERAL_ERROR, "audit file {}: an event is not a JSON object", opts_.path);
  VAULTP11_RETURN_IF_ERROR(LockCurrent());
  // Unlocks whichever file is current when Write returns (rotation switches it).
  struct Unlock {
    const int& fd;
    ~Unlock() {
      if (fd >= 0) flock(fd, LOCK_UN);
    }
  } unlock{fd_};
  VAULTP11_ASSIGN_OR_RETURN(Tail tail, ReadTail());
  const Clock::time_point now = opts_.now();
  uint64_t seq = tail.seq;
  std::string hash = tail.hash;
  const std::string out = ChainLines(events, seq, hash);
  VAULTP11_ASSIGN_OR_RETURN(bool rotate, NeedsRotation(tail.size, out.size(), now));
  rotated = rotate;
  if (rotate) {
    VAULTP11_RETURN_IF_ERROR(Rotate(events, tail, now));
  } else {
    if (int e = WriteAll(fd_, out); e != 0) {
      // Cut the batch off again so that no half line breaks the chain; the next Write starts
      // afresh from the last complete record.
      cache_.valid = false;
      if (ftruncate(fd_, static_cast<off_t>(tail.size)) != 0) {
        log::Error("audit file {}: cannot cut off the part of a failed batch: {}", opts_.path, ErrnoText(errno));
        return Err(CKR_FUNCTION_FAILED, "audit file {}: writing {} records failed: {} (part of them may remain)",
                   opts_.path, events.size(), ErrnoText(e));
      }
      return Err(CKR_FUNCTION_FAILED, "audit file {}: writing {} records failed: {} (none was kept)", opts_.path,
                 events.size(), ErrnoText(e));
    }
    cache_ = Cache{true, tail.size + out.size(), seq, hash};
  }
  if (opts_.head_key) VAULTP11_RETURN_IF_ERROR(WriteHead(cache_.seq, cache_.hash, now));
  // The position just sealed, placed by the file it continues (found under the lock, where no
  // rotation can come between); anchored by Write once the lock is released.
  FindGeneration();
  if (gen_) unanchored_ = ChainEnd{gen_->first, gen_->second, cache_.seq, cache_.hash};
  return OkStatus();
}

// ---- verification ------------------------------------------------------------------------------

namespace {

// The current file as it was at one moment: taken under a shared lock, so no batch is half
// written and the head belongs to exactly these bytes. The open descriptor keeps those bytes
// readable even if the file is rotated afterwards.
struct Snapshot {
  int fd = -1;  // -1: the file does not exist
  uint64_t size = 0;
  dev_t dev = 0;
  ino_t ino = 0;
  std::optional<Result<std::optional<Head>>> head;  // when asked for
  Snapshot() = default;
  Snapshot(const Snapshot&) = delete;
  Snapshot& operator=(const Snapshot&) = delete;
  ~Snapshot() {
    if (fd >= 0) close(fd);
  }
};

Status TakeSnapshot(const std::string& path, bool with_head, Snapshot& s) {
  for (int round = 0; round < 1000; ++round) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno != ENOENT) return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", path, ErrnoText(errno));
      if (with_head) s.head = ReadHead(HeadPath(path));
      return OkStatus();
    }
    while (flock(fd, LOCK_SH) != 0 && errno == EINTR) {
    }
    struct stat held {}, named {};
    if (fstat(fd, &held) == 0 && stat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino) {
      s.fd = fd;
      s.size = static_cast<uint64_t>(held.st_size);
      s.dev = held.st_dev;
      s.ino = held.st_ino;
      if (with_head) s.head = ReadHead(HeadPath(path));
      flock(fd, LOCK_UN);
      return OkStatus();
    }
    close(fd);  // rotated meanwhile: take the file the path names now
  }
  return Err(CKR_FUNCTION_FAILED, "{} keeps being replaced while it is being read", path);
}

// Verifies `earlier` (rotated files, oldest first), then the current file `current` from its
// snapshot, then the head.
Result<ChainVerdict> Verify(const std::vector<std::string>& earlier, const std::string& current, const Snapshot& snap,
                            const SecureBytes* head_key) {
  ChainVerdict cv;
  std::string prev;  // the first file may continue a file no longer there
  Verdict before_last, last;
  auto add = [&](const std::string& f, Verdict v) {
    if (cv.files.empty() && v.records > 0) {
      cv.from_genesis = v.first_prev == kGenesisHash;
      if (!cv.from_genesis)
        cv.notes.push_back(fmt::format("{} continues an earlier file that is not checked here (purged, deleted by "
                                       "retention, or not given)",
                                       f));
    }
    cv.files.push_back({f, v.records});
    if (v.records > 0) prev = v.last_hash;  // an empty file continues nothing: the next one goes on from here
    before_last = std::move(last);
    last = std::move(v);
  };
  auto broken = [&](const std::string& f, const Verdict& v) {
    cv.where = fmt::format("{}:{}", f, v.line);
    cv.problem = fmt::format("{} (the chain is broken there; {} records read)", v.problem, v.records);
    return cv;
  };
  for (const std::string& f : earlier) {
    VAULTP11_ASSIGN_OR_RETURN(Verdict v, VerifyFile(f, prev));
    if (!v.intact) return broken(f, v);
    add(f, std::move(v));
  }
  if (snap.fd >= 0) {
    auto v = VerifyOpenFile(snap.fd, snap.size, prev);
    if (!v.ok()) return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", current, v.error().message);
    if (!v->intact) return broken(current, v.value());
    cv.end = ChainEnd{0, 0, v->records, v->last_hash};
    add(current, std::move(v).value());
  } else {
    before_last = std::move(last);  // the current file is missing: it has no records
    last = Verdict{};
  }
  if (head_key == nullptr) {
    cv.intact = true;
    return cv;
  }
  const size_t records = last.records;
  const std::string head_path = HeadPath(current);
  auto fail = [&](std::string where, std::string problem) {
    cv.where = std::move(where);
    cv.problem = std::move(problem);
    return cv;
  };
  const Result<std::optional<Head>>& head = *snap.head;
  if (!head.ok()) return fail(head_path, head.error().message);
  if (!head->has_value()) {
    if (cv.files.empty()) {
      cv.intact = true;  // nothing written yet
      return cv;
    }
    return fail(head_path, "missing: the end of the chain cannot be checked (deleted?)");
  }
  const Head& h = head.value().value();
  if (!MacMatches(*head_key, h))
    return fail(head_path, "the head's MAC does not match (forged, or signed with another key)");
  if (h.file != BaseOf(current))
    return fail(head_path, fmt::format("the head is for {}, not {}", QuotePrintable(h.file, 200), BaseOf(current)));
  auto ok = [&](uint64_t seq) {
    cv.intact = true;
    cv.head_checked = true;
    cv.head = fmt::format("record {}, signed {}", seq, h.time);
    return cv;
  };
  if (h.seq == 0 || (h.seq == records && h.hash == last.last_hash)) return ok(h.seq);
  // Signed just before a rotation, with a crash before the next head: it names the end of the
  // file before the current one, which the current file continues.
  if (before_last.records > 0 && h.seq == before_last.records && h.hash == before_last.last_hash) {
    cv.notes.push_back(fmt::format("the head was signed before the last rotation; the {} records of {} are not covered "
                                   "by it",
                                   records, current));
    return ok(h.seq);
  }
  if (h.seq > records)
    return fail(records == 0 ? current : fmt::format("{}:{}", current, records),
                fmt::format("records were deleted from the end of {}: its head names record {} (signed {}), the file "
                            "{}",
                            current, h.seq, h.time,
                            snap.fd >= 0 ? fmt::format("ends at record {}", records) : std::string("is missing")));
  VAULTP11_ASSIGN_OR_RETURN(std::string at, RecordHash(snap.fd, snap.size, h.seq));
  if (at == h.hash) {
    cv.notes.push_back(fmt::format("records {} to {} of {} were written after the head was signed (a writer stopped "
                                   "in between)",
                                   h.seq + 1, records, current));
    return ok(h.seq);
  }
  return fail(fmt::format("{}:{}", current, h.seq),
              fmt::format("record {} is not the one the head signed {} (the file was replaced or rewritten)", h.seq,
                          h.time));
}

}  // namespace

Result<ChainVerdict> VerifyChain(const std::vector<std::string>& files, const SecureBytes* head_key) {
  if (files.empty()) return ChainVerdict{.intact = true};
  Snapshot snap;
  VAULTP11_RETURN_IF_ERROR(TakeSnapshot(files.back(), head_key != nullptr, snap));
  if (snap.fd < 0) return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", files.back(), ErrnoText(ENOENT));
  return Verify(std::vector<std::string>(files.begin(), files.end() - 1), files.back(), snap, head_key);
}

Result<bool> ResignHead(const std::string& path, const SecureBytes& old_key, const SecureBytes& new_key) {
  const std::string head_path = HeadPath(path);
  VAULTP11_ASSIGN_OR_RETURN(std::optional<Head> head, ReadHead(head_path));
  if (!head) return false;
  if (!MacMatches(old_key, *head))
    return Err(CKR_SIGNATURE_INVALID, "{}: the head's MAC does not match (forged, or signed with another key)",
               head_path);
  nlohmann::ordered_json j;
  j["file"] = head->file;
  j["seq"] = head->seq;
  j["hash"] = head->hash;
  j["time"] = head->time;
  j["mac"] = HeadMac(new_key, head->file, head->seq, head->hash, head->time);
  if (j["mac"].get<std::string>().empty()) return Err(CKR_FUNCTION_FAILED, "{}: cannot sign: {}", head_path, SslErrors());
  const std::string text = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  std::string tmp = head_path + ".XXXXXX";
  int fd = mkostemp(tmp.data(), O_CLOEXEC);  // mode 0600
  if (fd < 0) return Err(CKR_FUNCTION_FAILED, "{}: cannot create {}: {}", head_path, tmp, ErrnoText(errno));
  int e = WriteAll(fd, text);
  close(fd);
  if (e == 0 && rename(tmp.c_str(), head_path.c_str()) != 0) e = errno;
  if (e != 0) {
    unlink(tmp.c_str());
    return Err(CKR_FUNCTION_FAILED, "{}: cannot rewrite it: {}", head_path, ErrnoText(e));
  }
  return true;
}

Result<ChainVerdict> VerifySink(const std::string& path, const SecureBytes* head_key) {
  // The current file first: every file rotated before it is listed afterwards; files rotated
  // after it (it may be among them) are newer than what is checked and left out.
  Snapshot snap;
  VAULTP11_RETURN_IF_ERROR(TakeSnapshot(path, head_key != nullptr, snap));
  VAULTP11_ASSIGN_OR_RETURN(std::vector<RotatedFile> rotated, RotatedFiles(path));
  std::vector<std::string> earlier;
  for (const RotatedFile& r : rotated) {
    struct stat st {};
    if (snap.fd >= 0 && stat(r.path.c_str(), &st) == 0 && st.st_dev == snap.dev && st.st_ino == snap.ino) break;
    earlier.push_back(r.path);
  }
  if (snap.fd < 0 && earlier.empty() && head_key != nullptr && snap.head->ok() && !snap.head->value().has_value())
    return ChainVerdict{.intact = true};  // nothing written yet
  VAULTP11_ASSIGN_OR_RETURN(ChainVerdict cv, Verify(earlier, path, snap, head_key));
  if (!cv.end) cv.end = ChainEnd{};  // no current file: no records
  if (!earlier.empty()) {
    const RotatedFile& newest = rotated[earlier.size() - 1];
    cv.end->gen_time = newest.time.time_since_epoch().count();
    cv.end->gen_n = newest.n;
  }
  return cv;
}

}  // namespace vaultp11::audit
