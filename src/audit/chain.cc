#include "audit/chain.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "backend/ossl/ossl_backend.h"
#include "util/ossl_ptr.h"

namespace vaultp11::audit {
namespace {

// The last complete line of the open file (without its newline), or "" when empty.
Result<std::string> LastLine(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return Err(CKR_FUNCTION_FAILED, "cannot stat the audit file: {}", std::strerror(errno));
  off_t end = st.st_size;
  if (end == 0) return std::string();
  std::string tail;
  const off_t chunk = 4096;
  off_t pos = end;
  while (pos > 0) {
    off_t start = pos > chunk ? pos - chunk : 0;
    std::string buf(static_cast<size_t>(pos - start), '\0');
    if (pread(fd, buf.data(), buf.size(), start) != static_cast<ssize_t>(buf.size()))
      return Err(CKR_FUNCTION_FAILED, "cannot read the audit file");
    tail = buf + tail;
    pos = start;
    // The line before the final newline is complete once another newline precedes it.
    size_t last_nl = tail.size() > 1 ? tail.rfind('\n', tail.size() - 2) : std::string::npos;
    if (last_nl != std::string::npos || pos == 0) {
      std::string line = tail.substr(last_nl == std::string::npos ? 0 : last_nl + 1);
      if (!line.empty() && line.back() == '\n') line.pop_back();
      return line;
    }
  }
  return std::string();
}

}  // namespace

std::string LineHash(std::string_view line) {
  unsigned char md[32];
  unsigned int n = 0;
  EvpMdPtr sha(EVP_MD_fetch(ossl::LibCtx(), "SHA256", nullptr));
  EVP_Digest(line.data(), line.size(), md, &n, sha.get(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

Status Append(const std::string& path, std::span<const nlohmann::json> events, const std::string& first_prev) {
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
  VAULTP11_ASSIGN_OR_RETURN(std::string last, LastLine(fd));
  std::string prev = first_prev;
  uint64_t seq = 0;
  if (!last.empty()) {
    auto j = nlohmann::json::parse(last, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("seq") || !j["seq"].is_number_unsigned())
      return Err(CKR_FUNCTION_FAILED, "audit file {} does not end with an audit record", path);
    seq = j["seq"].get<uint64_t>();
    prev = LineHash(last);
  }
  std::string out;
  for (nlohmann::json e : events) {
    e["seq"] = ++seq;
    e["prevHash"] = prev;
    std::string line = e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    prev = LineHash(line);
    out += line;
    out += '\n';
  }
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = write(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Err(CKR_FUNCTION_FAILED, "writing audit file {} failed: {}", path, std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

Result<Verdict> VerifyFile(const std::string& path, const std::string& first_prev) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Err(CKR_ARGUMENTS_BAD, "cannot read {}", path);
  Verdict v;
  std::string line, prev_line;
  uint64_t expect_seq = 0;
  std::string prev_hash;
  auto fail = [&](std::string problem, size_t back = 0) {
    v.intact = false;
    v.line = v.records - back;
    v.problem = std::move(problem);
    return v;
  };
  while (std::getline(in, line)) {
    ++v.records;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("seq") || !j["seq"].is_number_unsigned() ||
        !j.contains("prevHash") || !j["prevHash"].is_string())
      return fail("not an audit record (modified)");
    const uint64_t seq = j["seq"].get<uint64_t>();
    const std::string claimed_prev = j["prevHash"].get<std::string>();
    if (expect_seq == 0) {
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
  }
  v.intact = true;
  v.last_hash = prev_hash;
  return v;
}

}  // namespace vaultp11::audit
