#include "audit/chain.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <vector>

#include "audit/event.h"
#include "backend/ossl/ossl_backend.h"

namespace vaultp11::audit {
namespace {

// Longest line ReadEnd looks through; records are a few hundred bytes.
constexpr uint64_t kMaxLineBytes = 64ull << 20;

}  // namespace

namespace {

// SHA-256 of lines in lowercase hex, with one digest context for all of them (a writer hashes
// every line of a batch: no context made and freed per line).
class LineHasher {
 public:
  LineHasher() : ctx_(EVP_MD_CTX_new()) {}
  ~LineHasher() { EVP_MD_CTX_free(ctx_); }
  LineHasher(const LineHasher&) = delete;
  LineHasher& operator=(const LineHasher&) = delete;

  // Replaces `hex` with the hash of `line`, reusing its buffer; empty if OpenSSL fails.
  void Hash(std::string_view line, std::string& hex) {
    // Fetched once: EVP_MD_fetch takes a lock and searches the providers. Never freed (it
    // lives as long as the process).
    static EVP_MD* const sha = EVP_MD_fetch(ossl::LibCtx(), "SHA256", nullptr);
    unsigned char md[32];
    unsigned int n = 0;
    hex.clear();
    if (ctx_ == nullptr || sha == nullptr || EVP_DigestInit_ex2(ctx_, sha, nullptr) != 1 ||
        EVP_DigestUpdate(ctx_, line.data(), line.size()) != 1 || EVP_DigestFinal_ex(ctx_, md, &n) != 1) {
      ERR_clear_error();
      return;
    }
    AppendHex(hex, std::string_view(reinterpret_cast<const char*>(md), n));
  }

 private:
  EVP_MD_CTX* ctx_;
};

}  // namespace

std::string LineHash(std::string_view line) {
  LineHasher h;
  std::string out;
  h.Hash(line, out);
  return out;
}

Result<FileEnd> ReadEnd(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return Err(CKR_FUNCTION_FAILED, "cannot stat the audit file: {}", std::strerror(errno));
  FileEnd end;
  end.size = static_cast<uint64_t>(st.st_size);
  std::string tail;
  const uint64_t chunk = 4096;
  uint64_t pos = end.size;
  while (pos > 0) {
    uint64_t start = pos > chunk ? pos - chunk : 0;
    std::string buf(static_cast<size_t>(pos - start), '\0');
    if (pread(fd, buf.data(), buf.size(), static_cast<off_t>(start)) != static_cast<ssize_t>(buf.size()))
      return Err(CKR_FUNCTION_FAILED, "cannot read the audit file: {}", std::strerror(errno));
    tail = buf + tail;
    pos = start;
    size_t last_nl = tail.rfind('\n');
    if (last_nl == std::string::npos) {
      if (tail.size() > kMaxLineBytes) return Err(CKR_FUNCTION_FAILED, "the audit file ends with a line longer than 64 MiB");
      continue;
    }
    // The line before the final newline is complete once another newline precedes it.
    size_t prev_nl = last_nl == 0 ? std::string::npos : tail.rfind('\n', last_nl - 1);
    if (prev_nl != std::string::npos || pos == 0) {
      size_t from = prev_nl == std::string::npos ? 0 : prev_nl + 1;
      end.last_line = tail.substr(from, last_nl - from);
      end.complete = pos + last_nl + 1;
      return end;
    }
    if (tail.size() > kMaxLineBytes) return Err(CKR_FUNCTION_FAILED, "the audit file ends with a line longer than 64 MiB");
  }
  return end;  // no newline at all: no complete line
}

Result<uint64_t> RecordSeq(std::string_view line) {
  auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("seq") || !j["seq"].is_number_unsigned() ||
      !j.contains("prevHash") || !j["prevHash"].is_string())
    return Err(CKR_FUNCTION_FAILED, "not an audit record");
  return j["seq"].get<uint64_t>();
}

std::string ChainLines(std::span<const nlohmann::json> events, uint64_t& seq, std::string& prev) {
  std::vector<Record> records;
  records.reserve(events.size());
  for (nlohmann::json e : events) {
    e.erase("seq");
    e.erase("prevHash");
    records.push_back(Record::From(e));
  }
  return ChainLines(std::span<const Record>(records), seq, prev);
}

std::string ChainLines(std::span<const Record> records, uint64_t& seq, std::string& prev) {
  size_t total = 0;
  for (const Record& r : records) total += r.json.size() + 100;
  std::string out;
  out.reserve(total);
  LineHasher hasher;
  for (const Record& r : records) {
    const size_t start = out.size();
    out += "{\"seq\":";
    out += std::to_string(++seq);
    out += ",\"prevHash\":\"";
    out += prev;
    out += '"';
    const std::string_view body(r.json);  // "{...}"
    if (body.size() > 2) {
      out += ',';
      out.append(body.substr(1));
    } else {
      out += '}';
    }
    hasher.Hash(std::string_view(out).substr(start), prev);
    out += '\n';
  }
  return out;
}

Status Append(const std::string& path, std::span<const nlohmann::json> events, const std::string& first_prev) {
  for (const nlohmann::json& e : events)
    if (!e.is_object()) return Err(CKR_GENERAL_ERROR, "audit file {}: an event is not a JSON object", path);
  int fd = open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Err(CKR_FUNCTION_FAILED, "cannot open audit file {}: {}", path, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() {
      flock(fd, LOCK_UN);
      close(fd);
    }
  } closer{fd};
  if (flock(fd, LOCK_EX) != 0) return Err(CKR_FUNCTION_FAILED, "cannot lock audit file {}", path);
  VAULTP11_ASSIGN_OR_RETURN(FileEnd end, ReadEnd(fd));
  std::string prev = first_prev;
  uint64_t seq = 0;
  if (end.size != 0) {
    auto last_seq = RecordSeq(end.last_line);
    if (end.complete != end.size || !last_seq.ok())
      return Err(CKR_FUNCTION_FAILED, "audit file {} does not end with an audit record", path);
    seq = last_seq.value();
    prev = LineHash(end.last_line);
  }
  std::string out = ChainLines(events, seq, prev);
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = write(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Err(CKR_FUNCTION_FAILED, "writing audit file {} failed: {}", path, std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

namespace {

// Calls `on_line` with each line of the first `limit` bytes of the open file (read with pread;
// a last line without its newline too) until it returns false.
Status ForEachLine(int fd, uint64_t limit, const std::function<bool(std::string_view)>& on_line) {
  std::string buf;
  std::vector<char> chunk(64 * 1024);
  uint64_t pos = 0;
  while (pos < limit) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(chunk.size(), limit - pos));
    ssize_t n = pread(fd, chunk.data(), want, static_cast<off_t>(pos));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Err(CKR_FUNCTION_FAILED, "{}", std::strerror(errno));
    if (n == 0) break;
    pos += static_cast<uint64_t>(n);
    buf.append(chunk.data(), static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1)
      if (!on_line(std::string_view(buf).substr(start, nl - start))) return OkStatus();
    buf.erase(0, start);
  }
  if (!buf.empty()) on_line(buf);
  return OkStatus();
}

}  // namespace

Result<Verdict> VerifyOpenFile(int fd, uint64_t limit, const std::string& first_prev) {
  Verdict v;
  uint64_t expect_seq = 0;
  std::string prev_hash;
  bool broken = false;
  auto fail = [&](std::string problem, size_t back = 0) {
    broken = true;
    v.line = v.records - back;
    v.problem = std::move(problem);
    return false;
  };
  Status st = ForEachLine(fd, limit, [&](std::string_view line) {
    ++v.records;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("seq") || !j["seq"].is_number_unsigned() ||
        !j.contains("prevHash") || !j["prevHash"].is_string())
      return fail("not an audit record (modified)");
    const uint64_t seq = j["seq"].get<uint64_t>();
    const std::string claimed_prev = j["prevHash"].get<std::string>();
    if (expect_seq == 0) {
      v.first_prev = claimed_prev;
      // A file's first record: seq 1, continuing from the hash given (if any).
      if (seq != 1) return fail(fmt::format("the file starts at record {}: records before it were deleted", seq));
      if (!first_prev.empty() && claimed_prev != first_prev)
        return fail("the first record does not continue from the previous file");
    } else {
      if (seq > expect_seq)
        return fail(fmt::format("records {} to {} are missing here (deleted or moved)", expect_seq, seq - 1));
      if (seq < expect_seq) return fail(fmt::format("record {} appears again or out of order (inserted or reordered)", seq));
      if (claimed_prev != prev_hash) return fail(fmt::format("record {} was modified", seq - 1), 1);
    }
    expect_seq = seq + 1;
    prev_hash = LineHash(line);
    return true;
  });
  if (!st.ok()) return st;
  v.intact = !broken;
  if (v.intact) v.last_hash = prev_hash;
  return v;
}

Result<Verdict> VerifyFile(const std::string& path, const std::string& first_prev) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Err(CKR_ARGUMENTS_BAD, "cannot read {}", path);
  auto v = VerifyOpenFile(fd, std::numeric_limits<uint64_t>::max(), first_prev);
  close(fd);
  if (!v.ok()) return Err(CKR_ARGUMENTS_BAD, "cannot read {}: {}", path, v.error().message);
  return v;
}

Result<std::string> RecordHash(int fd, uint64_t limit, uint64_t seq) {
  std::string hash;
  uint64_t n = 0;
  VAULTP11_RETURN_IF_ERROR(ForEachLine(fd, limit, [&](std::string_view line) {
    if (++n < seq) return true;
    hash = LineHash(line);
    return false;
  }));
  if (n < seq) return Err(CKR_ARGUMENTS_BAD, "the file has fewer than {} lines", seq);
  return hash;
}

}  // namespace vaultp11::audit
