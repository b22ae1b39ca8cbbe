// An audit sink: where the writer thread sends events. Sinks are created from `audit.sinks`
// (config.h AuditSinkConfig); the recorder (recorder.h) owns them and calls them from its one
// writer thread only, so a sink needs no locking of its own.
#pragma once

#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "util/result.h"

namespace vaultp11::audit {

// One event as the sinks get it: the JSON text, formatted once by the writer thread.
struct Record {
  std::string json;              // one compact JSON object, no newline
  std::string result_signature;  // its "resultSignature" ("OK", "Forbidden", ...)
  // From a JSON object (tests, events made outside the writer thread).
  static Record From(const nlohmann::json& event);
};

class Sink {
 public:
  virtual ~Sink() = default;
  // Names the sink in messages: "file /var/log/vaultp11/audit.log", "syslog /dev/log",
  // "socket /run/collector.sock".
  virtual std::string Describe() const = 0;
  // Checks the destination once, before the first Write (at C_Initialize, on the caller's
  // thread). An error means the sink is misconfigured: C_Initialize fails with its message when
  // audit.required is true, else it is logged once and the other sinks carry on.
  virtual Status Open() = 0;
  // Writes one batch, oldest first (the file sink adds "seq" and "prevHash" to each record). An
  // error is reported by the recorder; the sink stays usable and is given the next batch (it
  // decides whether to retry what failed, e.g. the socket's bounded buffer).
  virtual Status Write(std::span<const Record> records) = 0;
  // The same for JSON objects (each must be an object).
  Status Write(std::span<const nlohmann::json> events);
  // Called when the recorder stops (C_Finalize, process exit): push out anything buffered,
  // waiting at most `timeout_ms`.
  virtual void Close(int /*timeout_ms*/) {}
};

}  // namespace vaultp11::audit
