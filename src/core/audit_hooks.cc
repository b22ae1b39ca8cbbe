#include "core/audit_hooks.h"

#include <pthread.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "audit/file_sink.h"
#include "auth/access.h"
#include "core/token.h"
#include "model/object.h"
#include "store/store.h"

namespace vaultp11::core {

namespace {
std::atomic<audit::Recorder*> g_recorder{nullptr};
thread_local AuditCall* t_current = nullptr;
}  // namespace

void SetAuditRecorder(audit::Recorder* r) {
  // A forked child has no writer thread: its calls record nothing until its own C_Initialize
  // makes a recorder.
  static std::once_flag atfork;
  std::call_once(atfork, [] { pthread_atfork(nullptr, nullptr, [] { g_recorder.store(nullptr); }); });
  g_recorder.store(r, std::memory_order_release);
}
audit::Recorder* AuditRecorder() { return g_recorder.load(std::memory_order_acquire); }

namespace {
store::Store::AuditAnchor ToAnchor(const audit::ChainEnd& e) {
  return {e.gen_time, e.gen_n, static_cast<int64_t>(e.seq), e.hash};
}
}  // namespace

audit::AnchorFn StoreAnchor(store::Store* store) {
  return [store](const std::string& sink, const audit::ChainEnd& end) -> Status {
    if (end.seq > static_cast<uint64_t>(INT64_MAX)) return Err(CKR_GENERAL_ERROR, "audit anchor: seq out of range");
    return store->AdvanceAuditAnchor(sink, ToAnchor(end));
  };
}

audit::AnchorFn StoreAnchor(store::Options options) {
  // Shared by the sinks' copies of the function; the writer calls them one at a time.
  auto opened = std::make_shared<std::unique_ptr<store::Store>>();
  return [=](const std::string& sink, const audit::ChainEnd& end) -> Status {
    if (end.seq > static_cast<uint64_t>(INT64_MAX)) return Err(CKR_GENERAL_ERROR, "audit anchor: seq out of range");
    if (!*opened) {
      struct stat st {};
      if (options.backend == store::Options::Backend::kSqlite && stat(options.path.c_str(), &st) != 0 &&
          errno == ENOENT)
        return OkStatus();  // no store yet: nothing to anchor in
      VAULTP11_ASSIGN_OR_RETURN(*opened, store::Store::Open(options, /*create_if_missing=*/false));
    }
    return (*opened)->AdvanceAuditAnchor(sink, ToAnchor(end));
  };
}

AuditScope::AuditScope(AuditCall* call) : prev_(t_current) { t_current = call; }
AuditScope::~AuditScope() { t_current = prev_; }

AuditCall* CurrentAudit() { return t_current; }

void SubmitAudit(AuditCall& call, const Status& st) {
  if (call.event.operation == nullptr) return;
  audit::Recorder* r = AuditRecorder();
  if (r == nullptr) return;
  call.event.Finish(st.rv(), st.ok() ? std::string() : st.error().message);
  // Denials (and failed logins, critical from the start) are never dropped.
  const char* sig = audit::ResultSignature(call.event.rv, call.event.denied, call.event.unauthenticated);
  call.event.critical |= std::strcmp(sig, "Forbidden") == 0 || std::strcmp(sig, "Unauthorized") == 0;
  r->Submit(std::move(call.event));
  call.event.operation = nullptr;
}

void SubmitAuditEvent(audit::Event&& e) {
  audit::Recorder* r = AuditRecorder();
  if (r == nullptr || e.operation == nullptr) return;
  r->Submit(std::move(e));
}

void AuditOperation(const char* op, bool critical) {
  AuditCall* c = t_current;
  if (c == nullptr) return;
  c->event.operation = op;
  c->event.time = std::chrono::system_clock::now();
  c->event.start = std::chrono::steady_clock::now();
  c->event.critical = critical;
}

void AuditRename(const char* op) {
  if (AuditCall* c = t_current; c != nullptr && c->event.operation != nullptr) c->event.operation = op;
}

void AuditToken(const Token& t) {
  if (t_current != nullptr) AuditToken(t, t.grants().get());
}

void AuditToken(const Token& t, const auth::Grants* grants) {
  AuditCall* c = t_current;
  if (c == nullptr) return;
  c->event.resource = t.name();
  c->event.pool = t.is_pool();
  if (grants != nullptr) {
    c->event.principal = grants->principal;
    c->event.auth_method = grants->method;
  }
}

void AuditPrincipal(std::string principal, std::string method) {
  AuditCall* c = t_current;
  if (c == nullptr) return;
  c->event.principal = std::move(principal);
  c->event.auth_method = std::move(method);
}

void AuditObject(const model::Object& o, const char* const op_by_kind[3]) {
  AuditCall* c = t_current;
  if (c == nullptr) return;
  static const char* const kKinds[] = {"key", "secret", "certificate"};
  const auth::Kind k = auth::KindOfClass(o.cls());
  const int i = k == auth::Kind::kSecret ? 1 : k == auth::Kind::kCertificate ? 2 : 0;
  if (op_by_kind != nullptr && c->event.operation != nullptr) c->event.operation = op_by_kind[i];
  if (c->event.kind != nullptr) return;  // the first object named is the one the call is about
  c->event.kind = kKinds[i];
  c->event.name = o.label();
  const Bytes* id = o.attrs.Get(CKA_ID);
  if (id != nullptr) c->event.id.assign(id->begin(), id->end());
  else c->event.id.clear();
  AuditVersionOf(o);
}

void AuditVersionOf(const model::Object& o) {
  AuditCall* c = t_current;
  if (c == nullptr) return;
  const Bytes* v = o.attrs.Get(CKA_VAULTP11_VERSION);
  c->event.has_version = v != nullptr && v->size() == c->event.version.size();
  if (c->event.has_version) std::copy(v->begin(), v->end(), c->event.version.begin());
}

void AuditName(std::string name) {
  if (AuditCall* c = t_current) c->event.name = std::move(name);
}

void AuditMechanism(CK_MECHANISM_TYPE m) {
  if (AuditCall* c = t_current) c->event.mechanism = m;
}

void AuditMember(const std::string& member) {
  if (AuditCall* c = t_current) c->event.member = member;
}

void AuditCount(int64_t n) {
  if (AuditCall* c = t_current) c->event.count = n;
}

void AuditDenied(bool unauthenticated) {
  if (AuditCall* c = t_current) {
    c->event.denied = true;
    c->event.unauthenticated = unauthenticated;
    c->event.critical = true;
  }
}

void AuditContinuing() {
  if (AuditCall* c = t_current) c->continuing = true;
}

OpAudit TakeAudit() {
  AuditCall* c = t_current;
  if (c == nullptr || c->event.operation == nullptr) return {};
  OpAudit a(std::move(c->event));
  c->event = audit::Event{};
  return a;
}

OpAudit& OpAudit::operator=(OpAudit&& o) noexcept {
  if (this != &o) {
    Release();
    event_ = std::move(o.event_);
  }
  return *this;
}

OpAudit::~OpAudit() { Release(); }

void OpAudit::Release() {
  if (!event_) return;
  std::unique_ptr<audit::Event> e = std::move(event_);
  AuditCall* cur = t_current;
  if (cur != nullptr && cur->continuing && cur->event.operation == nullptr) {
    // The call ending the operation submits it with its own result. A pool operation moved
    // to another member on the way names the one that finished it.
    std::string member = std::move(cur->event.member);
    cur->event = std::move(*e);
    if (!member.empty()) cur->event.member = std::move(member);
    return;
  }
  e->Finish(CKR_FUNCTION_CANCELED, "the operation was not finished (its session closed, or it was replaced)");
  SubmitAuditEvent(std::move(*e));
}

}  // namespace vaultp11::core
