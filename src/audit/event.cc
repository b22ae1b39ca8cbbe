#include "audit/event.h"

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <climits>
#include <vector>

#include <fmt/chrono.h>
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
  return c;
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

std::string Rfc3339Micros(std::chrono::system_clock::time_point t) {
  auto us = std::chrono::time_point_cast<std::chrono::microseconds>(t);
  auto secs = std::chrono::floor<std::chrono::seconds>(us);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06d}Z", secs, (us - secs).count());
}

std::string Hex(std::string_view bytes) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

}  // namespace

nlohmann::json ToJson(const Event& e, const Caller& caller, std::string correlation_id) {
  nlohmann::json props = nlohmann::json::object();
  if (!e.resource.empty()) props[e.pool ? "pool" : "vault"] = e.resource;
  if (e.kind != nullptr) props["kind"] = e.kind;
  if (!e.name.empty()) props["name"] = e.name;
  if (!e.id.empty()) props["id"] = Hex(e.id);
  if (e.mechanism != CK_UNAVAILABLE_INFORMATION) props["mechanism"] = MechanismName(e.mechanism);
  props["rv"] = p11::RvName(e.rv);
  if (!e.member.empty()) props["member"] = e.member;
  if (e.count >= 0) props["count"] = e.count;
  if (e.extra.is_object())
    for (auto it = e.extra.begin(); it != e.extra.end(); ++it) props[it.key()] = it.value();
  nlohmann::json j;
  j["time"] = Rfc3339Micros(e.time);
  j["correlationId"] = std::move(correlation_id);
  j["operationName"] = e.operation ? e.operation : "Unknown";
  j["operationVersion"] = kOperationVersion;
  j["category"] = "AuditEvent";
  const char* sig = ResultSignature(e.rv, e.denied, e.unauthenticated);
  j["resultType"] = e.rv == CKR_OK && !e.denied ? "Success" : "Failure";
  j["resultSignature"] = sig;
  j["resultDescription"] = e.description;
  j["durationMs"] = static_cast<double>(e.duration_us) / 1000.0;
  j["identity"] = {{"principal", e.principal}, {"authMethod", e.auth_method}};
  j["caller"] = {{"pid", caller.pid}, {"uid", caller.uid}, {"executable", caller.executable}};
  j["properties"] = std::move(props);
  return j;
}

}  // namespace vaultp11::audit
