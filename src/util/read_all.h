// Reading a small file (a key, a secret) whole into cleansed memory.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>

#include "util/secure_bytes.h"

namespace vaultp11 {

// Reads from `fd` until `buf` is full or the file ends, retrying interrupted reads; `buf` is
// cut to what was read. Returns 0, or the errno of the read that failed.
inline int ReadUpTo(int fd, SecureBytes& buf) {
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = read(fd, buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  buf.resize(got);
  return 0;
}

}  // namespace vaultp11
