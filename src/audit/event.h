// One audit event: what the caller's thread records about an operation (cheap: no JSON, no
// I/O), and its JSON form, made by the writer thread.
#pragma once

#include <p11-kit/pkcs11.h>
#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace vaultp11::audit {

inline constexpr char kOperationVersion[] = "1.0";

struct Event {
  const char* operation = nullptr;  // the service's name: "KeySign", "Authentication", ...
  std::chrono::system_clock::time_point time;    // when the operation started
  std::chrono::steady_clock::time_point start;   // for durationMs
  int64_t duration_us = 0;
  CK_RV rv = CKR_OK;
  bool denied = false;     // refused by access control (Forbidden, whatever the CK_RV says) ...
  bool unauthenticated = false;  // ... because nobody is logged in (Unauthorized)
  bool critical = false;   // never dropped from a full queue (logins, denials)
  std::string description;  // resultDescription of a failure (error messages hold no secrets)
  std::string principal, auth_method;  // identity; empty principal: no login
  std::string resource;    // vault or pool name
  bool pool = false;
  const char* kind = nullptr;  // "key", "secret", "certificate"
  std::string name;        // CKA_LABEL
  std::string id;          // CKA_ID bytes (written as hex)
  std::array<char, 32> version{};  // the item version (32 hex digits) ...
  bool has_version = false;        // ... when the object has one
  CK_MECHANISM_TYPE mechanism = CK_UNAVAILABLE_INFORMATION;
  std::string member;      // the HSM that served it (pools)
  int64_t count = -1;      // objects found (C_FindObjectsInit)
  nlohmann::json extra;    // further properties (management events); null on the hot path

  // Sets the result and the duration (now minus start).
  void Finish(CK_RV result, std::string why = {});
};

// A new event for `operation` starting now.
Event Start(const char* operation);

// The process writing events (caller.pid/uid/executable) and the machine it runs on (host).
struct Caller {
  pid_t pid = 0;
  uid_t uid = 0;
  std::string executable;
  std::string host;  // HostName() for Self()
  static Caller Self();
};

// This machine's name as every event carries it ("host"): gethostname(), read once per process
// (a rename shows in processes started after it) and made safe by SanitizeHostName.
const std::string& HostName();
// `raw` kept to what a host name may hold: letters, digits, '-', '.' and '_' (anything else
// becomes '_'), at most 253 bytes; "unknown" when nothing is left.
std::string SanitizeHostName(std::string_view raw);

// The login name of `uid`, or its number when it has none.
std::string UserName(uid_t uid);

// "OK", "Unauthorized", "Forbidden", "NotFound", "BadRequest", "Conflict", "DeviceError",
// "InternalError", "Cancelled" for an event's result.
const char* ResultSignature(CK_RV rv, bool denied, bool unauthenticated = false);
// "CKM_ECDSA", ... or "0x..." for mechanisms without a name here.
std::string MechanismName(CK_MECHANISM_TYPE m);

// The event as one compact JSON object (without seq/prevHash, which the file sink adds),
// formatted directly (no JSON tree: this runs once per event on the writer thread). Strings are
// escaped; invalid UTF-8 becomes U+FFFD. `host` is the caller's host (written after "time"),
// `caller_json` is CallerJson(caller), made once.
std::string FormatEvent(const Event& e, std::string_view host, std::string_view caller_json,
                        std::string_view correlation_id);
std::string CallerJson(const Caller& caller);
// The same as a JSON tree (tests).
nlohmann::json ToJson(const Event& e, const Caller& caller, std::string correlation_id);
// Appends `s` as a JSON string literal.
void AppendJsonString(std::string& out, std::string_view s);
// A time as the audit log writes it: RFC 3339, UTC, microseconds ("2026-11-29T21:30:00.123456Z").
void AppendTime(std::string& out, std::chrono::system_clock::time_point t);
std::string FormatTime(std::chrono::system_clock::time_point t);
// Appends `bytes` as lowercase hex.
void AppendHex(std::string& out, std::string_view bytes);

}  // namespace vaultp11::audit
