// Recorder::Create: the sinks of `audit.sinks`, opened.
#include "audit/file_sink.h"
#include "audit/net_sinks.h"
#include "audit/recorder.h"
#include "util/log.h"

namespace vaultp11::audit {

Result<std::unique_ptr<Recorder>> Recorder::Create(const config::AuditConfig& cfg, std::optional<SecureBytes> head_key,
                                                   bool threaded, AnchorFn anchor) {
  std::vector<std::unique_ptr<Sink>> sinks;
  std::vector<bool> failing;
  std::vector<Event> reports;  // sinks that could not be opened, for the other sinks
  for (const config::AuditSinkConfig& sc : cfg.sinks) {
    std::unique_ptr<Sink> sink;
    if (sc.type == "file") {
      FileSinkOptions o;
      o.path = sc.path;
      o.max_bytes = sc.max_bytes;
      o.daily = sc.daily;
      o.retention_days = sc.retention_days;
      o.max_total_bytes = sc.max_total_bytes;
      o.head_key = head_key;
      if (anchor) o.anchor = [anchor, path = sc.path](const ChainEnd& end) { return anchor(path, end); };
      sink = std::make_unique<FileSink>(std::move(o));
    } else if (sc.type == "syslog") {
      SyslogSinkOptions o;
      o.socket = sc.socket;
      o.facility = sc.facility;
      o.ident = sc.ident;
      sink = std::make_unique<SyslogSink>(std::move(o));
    } else {
      SocketSinkOptions o;
      o.socket = sc.socket;
      o.buffer_bytes = sc.buffer_bytes;
      sink = std::make_unique<SocketSink>(std::move(o));
    }
    Status st = sink->Open();
    if (!st.ok()) {
      if (cfg.required)
        return Err(CKR_FUNCTION_FAILED, "audit sink {} (line {}): {} (audit.required is true)", sink->Describe(), sc.line,
                   st.error().message);
      // Kept: it is tried again with every batch, and reported once per failure streak.
      log::Error("audit sink {} (line {}): {}; auditing goes on with the other sinks", sink->Describe(), sc.line,
                 st.error().message);
      Event f = Start("AuditSinkFailed");
      f.Finish(CKR_DEVICE_ERROR, st.error().message);
      f.extra = {{"sink", sink->Describe()}};
      f.critical = true;
      reports.push_back(std::move(f));
    }
    failing.push_back(!st.ok());
    sinks.push_back(std::move(sink));
  }
  RecorderOptions opts;
  opts.queue_size = cfg.queue_size;
  opts.overflow = cfg.overflow == "drop" ? Overflow::kDrop : Overflow::kBlock;
  opts.threaded = threaded;
  opts.coalesce = std::chrono::seconds(cfg.coalesce_seconds);
  // Sinks that failed to open are already reported: what comes next for them is a recovery.
  auto r = std::make_unique<Recorder>(opts, std::move(sinks), Caller::Self(), std::move(failing));
  for (Event& e : reports) r->Submit(std::move(e));
  return r;
}

}  // namespace vaultp11::audit
