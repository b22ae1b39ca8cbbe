#include "util/log.h"

#include <openssl/err.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#include "util/ossl_ptr.h"

namespace vaultp11 {

std::string SslErrors() {
  std::string out;
  unsigned long e;
  const char* file = nullptr;
  int line = 0;
  const char* func = nullptr;
  const char* data = nullptr;
  int flags = 0;
  while ((e = ERR_get_error_all(&file, &line, &func, &data, &flags)) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error" : out;
}

namespace log {
namespace {
// -1 until Configure: the environment or the default decides. Configure reads the environment
// once, so a configured level costs one atomic load per check (no getenv on the call path).
std::atomic<int> g_level{-1};
std::mutex g_mu;  // guards g_sink / g_file
enum class Sink { kStderr, kSyslog, kFile };
Sink g_sink = Sink::kStderr;
FILE* g_file = nullptr;

int EnvLevel() {
  const char* d = std::getenv("VAULTP11_DEBUG");
  if (d && *d && std::string(d) != "0") return static_cast<int>(Level::kDebug);
  return -1;
}
const char* Name(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarning: return "warning";
    case Level::kError: return "error";
    default: return "";
  }
}
}  // namespace

void Configure(Level level, std::string_view sink) {
  std::lock_guard<std::mutex> l(g_mu);
  int env = EnvLevel();
  g_level = env >= 0 ? env : static_cast<int>(level);
  if (g_file) {
    fclose(g_file);
    g_file = nullptr;
  }
  if (sink == "syslog") {
    g_sink = Sink::kSyslog;
  } else if (sink.substr(0, 5) == "file:") {
    std::string path(sink.substr(5));
    int old = umask(077);
    g_file = fopen(path.c_str(), "ae");
    umask(old);
    g_sink = g_file ? Sink::kFile : Sink::kStderr;
  } else {
    g_sink = Sink::kStderr;
  }
}

Level CurrentLevel() {
  int l = g_level.load(std::memory_order_relaxed);
  if (l < 0) {
    int env = EnvLevel();
    l = env >= 0 ? env : static_cast<int>(Level::kWarning);
  }
  return static_cast<Level>(l);
}

bool Enabled(Level l) { return static_cast<int>(l) >= static_cast<int>(CurrentLevel()); }

void Write(Level level, std::string_view msg) {
  std::lock_guard<std::mutex> l(g_mu);
  switch (g_sink) {
    case Sink::kSyslog:
      syslog(level == Level::kError ? LOG_ERR : level == Level::kWarning ? LOG_WARNING
                                                 : level == Level::kInfo  ? LOG_INFO
                                                                          : LOG_DEBUG,
             "vaultp11: %.*s", static_cast<int>(msg.size()), msg.data());
      break;
    case Sink::kFile:
      fprintf(g_file, "vaultp11[%d] %s: %.*s\n", getpid(), Name(level), static_cast<int>(msg.size()),
              msg.data());
      fflush(g_file);
      break;
    default:
      fprintf(stderr, "vaultp11[%d] %s: %.*s\n", getpid(), Name(level), static_cast<int>(msg.size()),
              msg.data());
      break;
  }
}

}  // namespace log
}  // namespace vaultp11
