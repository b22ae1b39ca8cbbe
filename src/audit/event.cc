#include "audit/event.h"

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <ctime>
#include <iterator>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend/p11/inner_module.h"

namespace vaultp11::audit {

void Event::Finish(CK_RV result, std::string why) {
  rv = result;
  description = std::move(why);
  duration_us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
}

Event Start(const char* operation) {
  Event e;
  e.operation = operation;
  e.time = std::chrono::system_clock::now();
  e.start = std::chrono::steady_clock::now();
  return e;
}

Caller Caller::Self() {
  Caller c;
  c.pid = getpid();
  c.uid = getuid();
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) c.executable.assign(buf, static_cast<size_t>(n));
  c.host = HostName();
  return c;
}

std::string SanitizeHostName(std::string_view raw) {
  constexpr size_t kMax = 253;  // the longest DNS name
  std::string out;
  out.reserve(std::min(raw.size(), kMax));
  for (char ch : raw.substr(0, kMax)) {
    const unsigned char c = static_cast<unsigned char>(ch);
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '.' || c == '_';
    out += ok ? ch : '_';
  }
  return out.empty() ? "unknown" : out;
}

const std::string& HostName() {
  static const std::string name = [] {
    char buf[256] = {};
    if (gethostname(buf, sizeof(buf) - 1) != 0) return SanitizeHostName({});
    return SanitizeHostName(std::string_view(buf, strnlen(buf, sizeof(buf))));
  }();
  return name;
}

std::string UserName(uid_t uid) {
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr) return found->pw_name;
  return std::to_string(uid);
}

const char* ResultSignature(CK_RV rv, bool denied, bool unauthenticated) {
  if (denied) return unauthenticated ? "Unauthorized" : "Forbidden";
  switch (rv) {
    case CKR_OK:
      return "OK";
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
    case CKR_PIN_LEN_RANGE:
    case CKR_USER_TYPE_INVALID:
      return "Unauthorized";
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_ACTION_PROHIBITED:
    case CKR_TOKEN_WRITE_PROTECTED:
    case CKR_SESSION_READ_ONLY:
    case CKR_KEY_UNEXTRACTABLE:
    case CKR_KEY_NOT_WRAPPABLE:
    case CKR_ATTRIBUTE_SENSITIVE:
      return "Forbidden";
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_WRAPPING_KEY_HANDLE_INVALID:
    case CKR_UNWRAPPING_KEY_HANDLE_INVALID:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SLOT_ID_INVALID:
      return "NotFound";
    case CKR_OPERATION_ACTIVE:
    case CKR_USER_ALREADY_LOGGED_IN:
    case CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
      return "Conflict";
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
      return "DeviceError";
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
    case CKR_HOST_MEMORY:
      return "InternalError";
    case CKR_FUNCTION_CANCELED:
      return "Cancelled";
    default:
      return "BadRequest";
  }
}

std::string MechanismName(CK_MECHANISM_TYPE m) {
  switch (m) {
#define VAULTP11_MECH(x) \
  case x:                \
    return #x;
    VAULTP11_MECH(CKM_AES_CBC)
    VAULTP11_MECH(CKM_AES_CBC_PAD)
    VAULTP11_MECH(CKM_AES_CTR)
    VAULTP11_MECH(CKM_AES_ECB)
    VAULTP11_MECH(CKM_AES_GCM)
    VAULTP11_MECH(CKM_AES_KEY_GEN)
    VAULTP11_MECH(CKM_AES_KEY_WRAP)
    VAULTP11_MECH(CKM_AES_KEY_WRAP_PAD)
    VAULTP11_MECH(CKM_ECDSA)
    VAULTP11_MECH(CKM_ECDSA_SHA256)
    VAULTP11_MECH(CKM_ECDSA_SHA384)
    VAULTP11_MECH(CKM_ECDSA_SHA512)
    VAULTP11_MECH(CKM_EC_KEY_PAIR_GEN)
    VAULTP11_MECH(CKM_RSA_PKCS)
    VAULTP11_MECH(CKM_RSA_PKCS_KEY_PAIR_GEN)
    VAULTP11_MECH(CKM_RSA_PKCS_OAEP)
    VAULTP11_MECH(CKM_RSA_PKCS_PSS)
    VAULTP11_MECH(CKM_SHA1_RSA_PKCS)
    VAULTP11_MECH(CKM_SHA224)
    VAULTP11_MECH(CKM_SHA224_RSA_PKCS)
    VAULTP11_MECH(CKM_SHA256)
    VAULTP11_MECH(CKM_SHA256_RSA_PKCS)
    VAULTP11_MECH(CKM_SHA256_RSA_PKCS_PSS)
    VAULTP11_MECH(CKM_SHA384)
    VAULTP11_MECH(CKM_SHA384_RSA_PKCS)
    VAULTP11_MECH(CKM_SHA384_RSA_PKCS_PSS)
    VAULTP11_MECH(CKM_SHA512)
    VAULTP11_MECH(CKM_SHA512_RSA_PKCS)
    VAULTP11_MECH(CKM_SHA512_RSA_PKCS_PSS)
    VAULTP11_MECH(CKM_SHA_1)
#undef VAULTP11_MECH
    default:
      return fmt::format("0x{:08x}", m);
  }
}

namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 when it is not one.
size_t Utf8Length(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u; };
  auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return at(k) >= lo && at(k) <= hi; };
  const unsigned c = at(i);
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c == 0xE0) return cont(i + 1, 0xA0) && cont(i + 2) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(i + 1) && cont(i + 2) ? 3 : 0;
  if (c == 0xED) return cont(i + 1, 0x80, 0x9F) && cont(i + 2) ? 3 : 0;  // no surrogates
  if (c == 0xF0) return cont(i + 1, 0x90) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  if (c == 0xF4) return cont(i + 1, 0x80, 0x8F) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  return 0;
}

// `"key":` after a comma unless it is the first member.
void Key(std::string& out, const char* key, bool& first) {
  if (!first) out += ',';
  first = false;
  out += '"';
  out += key;
  out += "\":";
}

}  // namespace

void AppendTime(std::string& out, std::chrono::system_clock::time_point t) {
  // YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC), written digit by digit: once per audit event.
  auto us = std::chrono::time_point_cast<std::chrono::microseconds>(t);
  auto secs = std::chrono::floor<std::chrono::seconds>(us);
  const std::time_t tt = std::chrono::system_clock::to_time_t(secs);
  struct tm tm {};
  if (gmtime_r(&tt, &tm) == nullptr) {  // out of range: the epoch rather than garbage
    const std::time_t epoch = 0;
    gmtime_r(&epoch, &tm);
  }
  char buf[28];
  auto put = [&buf](size_t at, long v, int width) {
    for (int k = width - 1; k >= 0; --k, v /= 10) buf[at + k] = static_cast<char>('0' + v % 10);
  };
  put(0, std::clamp(tm.tm_year + 1900, 0, 9999), 4);
  buf[4] = '-';
  put(5, tm.tm_mon + 1, 2);
  buf[7] = '-';
  put(8, tm.tm_mday, 2);
  buf[10] = 'T';
  put(11, tm.tm_hour, 2);
  buf[13] = ':';
  put(14, tm.tm_min, 2);
  buf[16] = ':';
  put(17, tm.tm_sec, 2);
  buf[19] = '.';
  put(20, static_cast<long>((us - secs).count()), 6);
  buf[26] = 'Z';
  out.append(buf, 27);
}

std::string FormatTime(std::chrono::system_clock::time_point t) {
  std::string out;
  AppendTime(out, t);
  return out;
}

void AppendHex(std::string& out, std::string_view bytes) {
  static const char* kHex = "0123456789abcdef";
  const size_t at = out.size();
  out.resize(at + 2 * bytes.size());
  char* p = out.data() + at;
  for (unsigned char c : bytes) {
    *p++ = kHex[c >> 4];
    *p++ = kHex[c & 15];
  }
}

void AppendJsonString(std::string& out, std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  out += '"';
  for (size_t i = 0; i < s.size();) {
    // A run of characters that need no escape goes in at once.
    size_t j = i;
    while (j < s.size()) {
      const unsigned char r = static_cast<unsigned char>(s[j]);
      if (r < 0x20 || r >= 0x7f || r == '"' || r == '\\') break;
      ++j;
    }
    if (j > i) {
      out.append(s.data() + i, j - i);
      i = j;
      continue;
    }
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20 || c == 0x7f) {
            out += "\\u00";
            out += kHex[c >> 4];
            out += kHex[c & 15];
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    const size_t n = Utf8Length(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD for a byte that is no UTF-8
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  out += '"';
}

std::string CallerJson(const Caller& caller) {
  std::string out = fmt::format("{{\"pid\":{},\"uid\":{},\"executable\":", caller.pid, caller.uid);
  AppendJsonString(out, caller.executable);
  out += '}';
  return out;
}

std::string FormatEvent(const Event& e, std::string_view host, std::string_view caller_json,
                        std::string_view correlation_id) {
  std::string out;
  out.reserve(512);
  out += "{\"time\":\"";
  AppendTime(out, e.time);
  out += "\",\"host\":";
  AppendJsonString(out, host);
  out += ",\"correlationId\":";
  AppendJsonString(out, correlation_id);
  out += ",\"operationName\":";
  AppendJsonString(out, e.operation ? e.operation : "Unknown");
  out += ",\"operationVersion\":\"";
  out += kOperationVersion;
  out += "\",\"category\":\"AuditEvent\",\"resultType\":\"";
  out += e.rv == CKR_OK && !e.denied ? "Success" : "Failure";
  out += "\",\"resultSignature\":\"";
  out += ResultSignature(e.rv, e.denied, e.unauthenticated);
  out += "\",\"resultDescription\":";
  AppendJsonString(out, e.description);
  // durationMs with 3 decimals (microseconds), without a floating-point format.
  const int64_t dur = std::max<int64_t>(e.duration_us, 0);
  out += ",\"durationMs\":";
  out += std::to_string(dur / 1000);
  out += '.';
  const int64_t frac = dur % 1000;
  out += static_cast<char>('0' + frac / 100);
  out += static_cast<char>('0' + frac / 10 % 10);
  out += static_cast<char>('0' + frac % 10);
  out += ",\"identity\":{\"principal\":";
  AppendJsonString(out, e.principal);
  out += ",\"authMethod\":";
  AppendJsonString(out, e.auth_method);
  out += "},\"caller\":";
  out += caller_json;
  out += ",\"properties\":{";
  bool first = true;
  if (!e.resource.empty()) {
    Key(out, e.pool ? "pool" : "vault", first);
    AppendJsonString(out, e.resource);
  }
  if (e.kind != nullptr) {
    Key(out, "kind", first);
    AppendJsonString(out, e.kind);
  }
  if (!e.name.empty()) {
    Key(out, "name", first);
    AppendJsonString(out, e.name);
  }
  if (!e.id.empty()) {
    Key(out, "id", first);
    out += '"';
    AppendHex(out, e.id);
    out += '"';
  }
  if (e.has_version) {
    Key(out, "version", first);
    AppendJsonString(out, std::string_view(e.version.data(), e.version.size()));
  }
  if (e.mechanism != CK_UNAVAILABLE_INFORMATION) {
    Key(out, "mechanism", first);
    AppendJsonString(out, MechanismName(e.mechanism));
  }
  Key(out, "rv", first);
  AppendJsonString(out, p11::RvName(e.rv));
  if (!e.member.empty()) {
    Key(out, "member", first);
    AppendJsonString(out, e.member);
  }
  if (e.count >= 0) {
    Key(out, "count", first);
    fmt::format_to(std::back_inserter(out), "{}", e.count);
  }
  if (e.extra.is_object()) {
    for (auto it = e.extra.begin(); it != e.extra.end(); ++it) {
      if (!first) out += ',';
      first = false;
      AppendJsonString(out, it.key());
      out += ':';
      out += it.value().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  }
  out += "}}";
  return out;
}

nlohmann::json ToJson(const Event& e, const Caller& caller, std::string correlation_id) {
  return nlohmann::json::parse(FormatEvent(e, caller.host, CallerJson(caller), correlation_id));
}

}  // namespace vaultp11::audit
