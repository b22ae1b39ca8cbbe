// `vaultp11 audit verify | purge | tail`: the audit files of the file sinks (audit/file_sink.h).
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fmt/format.h>

#include "audit/file_sink.h"
#include "cli/audit_trail.h"
#include "cli/commands.h"
#include "store/store.h"
#include "util/strings.h"

namespace vaultp11::cli {
namespace {

using Json = nlohmann::json;

std::vector<const config::AuditSinkConfig*> FileSinks(const config::Config& cfg) {
  std::vector<const config::AuditSinkConfig*> out;
  for (const config::AuditSinkConfig& s : cfg.audit.sinks)
    if (s.type == "file") out.push_back(&s);
  return out;
}

// The head key, derived once; `why` says why there is none.
struct HeadKey {
  std::optional<SecureBytes> key;
  std::string why;
};
HeadKey LoadHeadKey(const config::Config* cfg) {
  HeadKey k;
  if (cfg == nullptr) {
    k.why = "no usable config to find the master key file or seal (give --config)";
    return k;
  }
  auto key = store::DeriveKeyFromOptions(cfg->store, "audit-head");
  if (key.ok()) {
    k.key = std::move(key).value();
  } else {
    k.why = key.error().message;
  }
  return k;
}

// Prints what VerifyChain found; a problem is added to `problems`.
void Report(const audit::ChainVerdict& v, bool with_head, const std::string& head_path, const std::string& why_not,
            Io& io, std::vector<std::string>& problems) {
  for (const auto& f : v.files) io.out << fmt::format("{}: {} records, chain intact\n", f.path, f.records);
  for (const std::string& n : v.notes) io.out << fmt::format("note: {}\n", n);
  if (!v.intact) {
    problems.push_back(fmt::format("{}: {}", v.where, v.problem));
    return;
  }
  if (v.head_checked) {
    io.out << fmt::format("{}: head intact ({})\n", head_path, v.head);
  } else if (!with_head) {
    io.out << fmt::format("{}: head not checked ({})\n", head_path, why_not);
  }
}

// The rollback check: each sink's chain end against the anchor the store keeps for it
// (store::Store::GetAuditAnchor). A chain and its signed head put back from an older copy are
// intact in themselves; only this outside record shows they are old.
class Anchors {
 public:
  explicit Anchors(const config::Config& cfg) {
    std::error_code ec;
    if (cfg.store.backend == store::Options::Backend::kSqlite && !std::filesystem::exists(cfg.store.path, ec)) {
      why_ = fmt::format("there is no store {}", cfg.store.path);
      return;
    }
    auto st = store::Store::Open(cfg.store, /*create_if_missing=*/false);
    if (st.ok()) {
      store_ = std::move(st).value();
    } else {
      why_ = st.error().message;
    }
  }

  // The anchor of the sink at `path` (without a store an error, which Check does not look at:
  // it reports the missing store instead).
  Result<std::optional<store::Store::AuditAnchor>> Read(const std::string& path) {
    if (!store_) return Err(CKR_GENERAL_ERROR, "no store: {}", why_);
    return store_->GetAuditAnchor(path);
  }

  void Check(const std::string& path, const audit::ChainEnd& end,
             const Result<std::optional<store::Store::AuditAnchor>>& a, Io& io, std::vector<std::string>& problems) {
    if (!store_) {
      io.out << fmt::format("{}: anchor not checked ({})\n", path, why_);
      return;
    }
    if (!a.ok()) {
      problems.push_back(fmt::format("{}: {}", path, a.error().message));
      return;
    }
    if (!a->has_value()) {
      // Every writer anchors when it stops (and at each rotation, at most once a second): a log
      // with records and no anchor had its anchor deleted, or its writer died before its first
      // one, or could not write the store. None of these proves the log is whole.
      if (end.seq > 0)
        problems.push_back(fmt::format("{}: the store holds no audit anchor for this log (deleted, or its writer could "
                                       "not write the store): a rollback cannot be ruled out",
                                       path));
      return;
    }
    const store::Store::AuditAnchor& s = a->value();
    audit::ChainEnd anchor{s.gen_time, s.gen_n, static_cast<uint64_t>(s.seq), s.hash};
    std::string problem = audit::CheckAnchor(path, end, anchor);
    if (!problem.empty()) {
      problems.push_back(fmt::format("{}: {}", path, problem));
      return;
    }
    io.out << fmt::format("{}: anchor reached (the store's anchor is at record {}{})\n", path, s.seq,
                          anchor.Before(end) ? ", the log goes on from there" : "");
  }

 private:
  std::unique_ptr<store::Store> store_;
  std::string why_;
};

Status Problems(const std::vector<std::string>& problems, Io& io) {
  if (problems.empty()) return OkStatus();
  for (size_t i = 0; i + 1 < problems.size(); ++i) io.err << "vaultp11: " << problems[i] << "\n";
  return Err(CKR_FUNCTION_FAILED, "{}", problems.back());
}

std::string SameFile(const std::string& p) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(p, ec);
  return (ec ? std::filesystem::path(p) : abs).lexically_normal().string();
}

// A value for the terminal: bare when it is plainly a word, else quoted and escaped.
std::string Val(const Json& v) {
  std::string s = v.is_string() ? v.get<std::string>() : v.dump(-1, ' ', false, Json::error_handler_t::replace);
  bool plain = !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || std::strchr("._:/@+-=#", c) != nullptr;
  });
  return plain ? s : QuotePrintable(s, 300);
}

const Json* Field(const Json& j, std::initializer_list<const char*> path) {
  const Json* cur = &j;
  for (const char* k : path) {
    if (!cur->is_object()) return nullptr;
    auto it = cur->find(k);
    if (it == cur->end() || it->is_null()) return nullptr;
    cur = &*it;
  }
  return cur;
}

struct Filter {
  std::string key, value;
};

std::vector<Filter> ParseFilters(const std::vector<std::string>& specs) {
  std::vector<Filter> out;
  for (const std::string& s : specs) {
    size_t eq = s.find('=');
    out.push_back({s.substr(0, eq), s.substr(eq + 1)});
  }
  return out;
}

bool Matches(const Json& e, const std::vector<Filter>& filters) {
  auto is = [&](std::initializer_list<const char*> path, const std::string& want) {
    const Json* f = Field(e, path);
    return f != nullptr && f->is_string() && f->get<std::string>() == want;
  };
  for (const Filter& f : filters) {
    bool ok = f.key == "principal"   ? is({"identity", "principal"}, f.value)
              : f.key == "operation" ? is({"operationName"}, f.value)
              : f.key == "result"    ? is({"resultSignature"}, f.value)
              : f.key == "vault"     ? is({"properties", "vault"}, f.value) || is({"properties", "pool"}, f.value)
              : f.key == "host"      ? is({"host"}, f.value)
                                     : false;
    if (!ok) return false;
  }
  return true;
}

// Reads one file of the tail: complete lines are formatted (when they match) and handed to
// `emit`; a trailing partial line waits in `partial` for the rest.
class LineReader {
 public:
  LineReader(std::string path, const std::vector<Filter>& filters) : path_(std::move(path)), filters_(filters) {}
  ~LineReader() { Close(); }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  Status Open() {
    Close();
    fd_ = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return Err(CKR_FUNCTION_FAILED, "cannot read {}: {}", path_, std::strerror(errno));
    pos_ = 0;
    line_no_ = 0;
    partial_.clear();
    return OkStatus();
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }
  uint64_t pos() const { return pos_; }

  // Everything up to the current end of the file.
  Status ReadToEnd(const std::function<void(std::string)>& emit) {
    char buf[65536];
    for (;;) {
      ssize_t n = read(fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Err(CKR_FUNCTION_FAILED, "cannot read {}: {}", path_, std::strerror(errno));
      if (n == 0) return OkStatus();
      pos_ += static_cast<uint64_t>(n);
      partial_.append(buf, static_cast<size_t>(n));
      size_t start = 0;
      for (size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1) {
        ++line_no_;
        std::string_view line(partial_.data() + start, nl - start);
        auto j = Json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object()) {
          if (filters_.empty()) emit(fmt::format("({}:{} is not an audit record)", path_, line_no_));
        } else if (Matches(j, filters_)) {
          emit(FormatAuditEvent(j));
        }
      }
      partial_.erase(0, start);
    }
  }

 private:
  std::string path_;
  const std::vector<Filter>& filters_;
  int fd_ = -1;
  uint64_t pos_ = 0;
  uint64_t line_no_ = 0;
  std::string partial_;
};

// Follows `path` until keep_going() says stop: new records of the open file, then, when the
// path names another file (rotated: renamed away and replaced) or was truncated, the new one
// from its start.
Status Follow(const std::string& path, LineReader& reader, const std::vector<Filter>& filters, Io& io,
              const std::function<bool()>& keep_going) {
  auto emit = [&](std::string line) { io.out << line << "\n"; };
  // Wake-ups: inotify on the directory (a rotation renames files there); a bounded timeout
  // covers filesystems without inotify and lost events.
  int ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (ino >= 0) {
    std::string dir = std::filesystem::path(path).parent_path().string();
    if (inotify_add_watch(ino, dir.empty() ? "." : dir.c_str(),
                          IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CLOSE_WRITE) < 0) {
      close(ino);
      ino = -1;
    }
  }
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) close(fd);
    }
  } closer{ino};
  for (;;) {
    VAULTP11_RETURN_IF_ERROR(reader.ReadToEnd(emit));
    struct stat named {}, held {};
    if (stat(path.c_str(), &named) == 0 && fstat(reader.fd(), &held) == 0) {
      if (named.st_dev != held.st_dev || named.st_ino != held.st_ino) {
        // Rotated: what the old file got before the rename was read above.
        VAULTP11_RETURN_IF_ERROR(reader.Open());
        VAULTP11_RETURN_IF_ERROR(reader.ReadToEnd(emit));
      } else if (static_cast<uint64_t>(named.st_size) < reader.pos()) {
        VAULTP11_RETURN_IF_ERROR(reader.Open());  // truncated: start again
        VAULTP11_RETURN_IF_ERROR(reader.ReadToEnd(emit));
      }
    }
    io.out << std::flush;
    if (!io.out) return Err(CKR_FUNCTION_FAILED, "cannot write the output");
    if (keep_going && !keep_going()) return OkStatus();
    pollfd p{ino, POLLIN, 0};
    int r = poll(&p, ino >= 0 ? 1 : 0, 1000);
    if (r > 0 && ino >= 0) {
      alignas(inotify_event) char buf[4096];
      while (read(ino, buf, sizeof(buf)) > 0) {
      }
    }
  }
}

}  // namespace

bool IsAuditFilter(std::string_view kv) {
  size_t eq = kv.find('=');
  if (eq == std::string_view::npos || eq + 1 == kv.size()) return false;
  std::string_view k = kv.substr(0, eq);
  return k == "principal" || k == "operation" || k == "result" || k == "vault" || k == "host";
}

std::string FormatAuditEvent(const Json& e) {
  auto get = [&](std::initializer_list<const char*> path) -> std::string {
    const Json* f = Field(e, path);
    return f ? Val(*f) : "";
  };
  std::string time = get({"time"}), result = get({"resultSignature"}), op = get({"operationName"});
  std::string out = fmt::format("{} {} {}", time.empty() ? "-" : time, result.empty() ? "-" : result, op.empty() ? "-" : op);
  auto add = [&](const char* label, std::initializer_list<const char*> path) {
    std::string v = get(path);
    if (!v.empty()) out += fmt::format(" {}={}", label, v);
  };
  add("host", {"host"});  // absent from records written before events carried it
  add("principal", {"identity", "principal"});
  add("vault", {"properties", "vault"});
  add("pool", {"properties", "pool"});
  add("name", {"properties", "name"});
  add("mechanism", {"properties", "mechanism"});
  if (const Json* d = Field(e, {"durationMs"}); d != nullptr && d->is_number()) out += fmt::format(" {}ms", d->dump());
  if (result != "OK") {
    const Json* desc = Field(e, {"resultDescription"});
    if (desc != nullptr && desc->is_string() && !desc->get<std::string>().empty())
      out += " description=" + QuotePrintable(desc->get<std::string>(), 500);
  }
  return out;
}

Status AuditVerifyCommand(const std::vector<std::string>& files, const config::Config* cfg, Io& io) {
  std::vector<std::string> problems;
  if (!files.empty()) {
    const std::string head_path = audit::HeadPath(files.back());
    HeadKey key;
    std::error_code ec;
    if (!std::filesystem::exists(head_path, ec)) {
      key.why = fmt::format("there is no {}", head_path);
    } else {
      key = LoadHeadKey(cfg);
    }
    VAULTP11_ASSIGN_OR_RETURN(audit::ChainVerdict v, audit::VerifyChain(files, key.key ? &*key.key : nullptr));
    Report(v, key.key.has_value(), head_path, key.why, io, problems);
    return Problems(problems, io);
  }
  if (cfg == nullptr) return Err(CKR_ARGUMENTS_BAD, "name the audit files, or give a config with file sinks");
  std::vector<const config::AuditSinkConfig*> sinks = FileSinks(*cfg);
  if (sinks.empty()) return Err(CKR_ARGUMENTS_BAD, "{} has no file sink (audit.sinks); name the audit files", cfg->source);
  HeadKey key = LoadHeadKey(cfg);
  Anchors anchors(*cfg);
  for (const config::AuditSinkConfig* s : sinks) {
    // The anchor first: it never passes what is in the files when it is read, so a writer that
    // goes on meanwhile cannot make the files look older than it.
    auto anchor = anchors.Read(s->path);
    auto v = audit::VerifySink(s->path, key.key ? &*key.key : nullptr);
    if (!v.ok()) {
      problems.push_back(fmt::format("{}: {}", s->path, v.error().message));
      continue;
    }
    if (v->intact && v->files.empty() && !v->head_checked) {
      io.out << fmt::format("{}: no audit records yet\n", s->path);
      anchors.Check(s->path, audit::ChainEnd{}, anchor, io, problems);  // an anchor here: the files were deleted
      continue;
    }
    Report(v.value(), key.key.has_value(), audit::HeadPath(s->path), key.why, io, problems);
    if (v->intact && v->end) anchors.Check(s->path, *v->end, anchor, io, problems);
  }
  return Problems(problems, io);
}

namespace {

// `audit purge`; `deleted` gets every file deleted (also when a later sink fails).
Status Purge(const config::Config& cfg, const AuditPurgeOptions& opts, Io& io, std::vector<std::string>& deleted_out) {
  std::optional<std::chrono::sys_days> before = audit::ParseDate(opts.before);
  if (!before) return Err(CKR_ARGUMENTS_BAD, "--before: {} is not a date YYYY-MM-DD", QuotePrintable(opts.before, 40));
  std::vector<const config::AuditSinkConfig*> sinks = FileSinks(cfg);
  if (!opts.sink.empty()) {
    std::vector<const config::AuditSinkConfig*> named;
    std::string known;
    for (const config::AuditSinkConfig* s : sinks) {
      if (SameFile(s->path) == SameFile(opts.sink)) named.push_back(s);
      known += (known.empty() ? "" : ", ") + s->path;
    }
    if (named.empty())
      return Err(CKR_ARGUMENTS_BAD, "--sink: {} is not a file sink in {} (file sinks: {})", QuotePrintable(opts.sink),
                 cfg.source, known.empty() ? "none" : known);
    sinks = named;
  }
  if (sinks.empty()) return Err(CKR_ARGUMENTS_BAD, "{} has no file sink (audit.sinks)", cfg.source);
  for (const config::AuditSinkConfig* s : sinks) {
    VAULTP11_ASSIGN_OR_RETURN(std::vector<std::string> deleted, audit::PurgeBefore(s->path, *before));
    for (const std::string& d : deleted) io.out << fmt::format("deleted {}\n", d);
    if (deleted.empty()) io.out << fmt::format("{}: no rotated files before {}\n", s->path, opts.before);
    deleted_out.insert(deleted_out.end(), deleted.begin(), deleted.end());
  }
  return OkStatus();
}

}  // namespace

Status AuditPurgeCommand(const config::Config& cfg, const AuditPurgeOptions& opts, Io& io) {
  // A change to the audit trail itself, audited like the others: the event is written after the
  // purge, so it lands in the current file (never purged) and the chain goes on from there.
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  std::vector<std::string> deleted;
  Status st = Purge(cfg, opts, io, deleted);
  nlohmann::json props = {{"before", opts.before}, {"deleted", deleted}};
  if (!opts.sink.empty()) props["sink"] = AbsolutePath(opts.sink);
  audit.Record("AuditPurge", st, std::move(props));
  return st;
}

Status AuditTailCommand(const config::Config* cfg, const AuditTailOptions& opts, Io& io,
                        const std::function<bool()>& keep_going) {
  for (const std::string& f : opts.filter)
    if (!IsAuditFilter(f))
      return Err(CKR_ARGUMENTS_BAD, "--filter: {} is not KEY=VALUE with KEY principal, operation, result, vault or host",
                 QuotePrintable(f, 100));
  std::string path = opts.file;
  if (path.empty()) {
    if (cfg == nullptr) return Err(CKR_ARGUMENTS_BAD, "name the audit file, or give a config with a file sink");
    std::vector<const config::AuditSinkConfig*> sinks = FileSinks(*cfg);
    if (sinks.empty()) return Err(CKR_ARGUMENTS_BAD, "{} has no file sink (audit.sinks); name the audit file", cfg->source);
    path = sinks.front()->path;
  }
  const std::vector<Filter> filters = ParseFilters(opts.filter);
  LineReader reader(path, filters);
  VAULTP11_RETURN_IF_ERROR(reader.Open());
  std::deque<std::string> last;
  VAULTP11_RETURN_IF_ERROR(reader.ReadToEnd([&](std::string line) {
    if (opts.lines == 0) return;
    if (last.size() == opts.lines) last.pop_front();
    last.push_back(std::move(line));
  }));
  for (const std::string& l : last) io.out << l << "\n";
  io.out << std::flush;
  if (!opts.follow) return OkStatus();
  return Follow(path, reader, filters, io, keep_going);
}

}  // namespace vaultp11::cli
