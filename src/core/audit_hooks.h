// How PKCS#11 calls become audit events. The ABI shim gives each call an AuditCall on its
// stack and makes it this thread's current one; the dispatcher fills it in (operation name,
// vault, object, mechanism, denial) and the shim submits it with the call's result. A call
// that names no operation (C_GetSlotList, ...) records nothing.
//
// Multi-call operations (sign, verify, encrypt, decrypt) give one event per operation: the
// Init moves its event into the session's operation state (OpAudit); the call that ends the
// operation takes it back and the shim submits it with that call's result. An operation that
// never ends (its session closed) is recorded as Cancelled.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "audit/event.h"
#include "audit/recorder.h"
#include "util/result.h"
#include "store/options.h"

namespace vaultp11::model {
struct Object;
}
namespace vaultp11::store {
class Store;
}
namespace vaultp11::auth {
struct Grants;
}

namespace vaultp11::core {

class Token;
struct CallContext;

struct AuditCall {
  audit::Event event;      // event.operation == nullptr: nothing to record
  bool continuing = false;  // this call may end an operation begun by an Init
};

// The anchors of file sinks (audit::AnchorFn) kept in `store` (Store::AdvanceAuditAnchor),
// which must outlive the recorder.
audit::AnchorFn StoreAnchor(store::Store* store);
// The same for a process that does not hold the store open (the CLI): the store is opened at
// the first anchor and kept; when its database does not exist yet there is nothing to anchor in.
audit::AnchorFn StoreAnchor(store::Options options);

// The recorder of the initialised module (null when auditing is off or before C_Initialize).
void SetAuditRecorder(audit::Recorder* r);
audit::Recorder* AuditRecorder();

// Makes `call` this thread's current call for the scope's lifetime.
class AuditScope {
 public:
  explicit AuditScope(AuditCall* call);
  ~AuditScope();
  AuditScope(const AuditScope&) = delete;
  AuditScope& operator=(const AuditScope&) = delete;

 private:
  AuditCall* prev_;
};

AuditCall* CurrentAudit();

// Submits the current call's event (if it names an operation) with the call's result.
void SubmitAudit(AuditCall& call, const Status& st);
// Submits an event made outside a call (a cancelled operation).
void SubmitAuditEvent(audit::Event&& e);

// ---- what the dispatcher records (no-ops when no call is current) -------------------------
// This call is operation `op` (a string literal), starting now. Logins and denials are never
// dropped from a full queue.
void AuditOperation(const char* op, bool critical = false);
// Renames the operation (e.g. KeyGet -> SecretGet once the object's kind is known).
void AuditRename(const char* op);
// The vault or pool, and who is logged in there.
void AuditToken(const Token& t);
void AuditToken(const Token& t, const auth::Grants* grants);  // who is logged in: `grants`
void AuditPrincipal(std::string principal, std::string method);
// The object the call is about: kind (by class), name, CKA_ID (the first object named in a
// call is the one it is about); `op_by_kind` (if set) picks the operation name for the
// object's kind: {key, secret, certificate}.
void AuditObject(const model::Object& o, const char* const op_by_kind[3] = nullptr);
// The version of `o` (a stored, labelled object) in the call's event; for a new object, once
// it is stored.
void AuditVersionOf(const model::Object& o);
void AuditName(std::string name);
void AuditMechanism(CK_MECHANISM_TYPE m);
void AuditMember(const std::string& member);
void AuditCount(int64_t n);
// The call was refused by access control (the caller may see another CK_RV, e.g. a handle
// that does not exist for it).
void AuditDenied(bool unauthenticated = false);
// This call may end an operation (C_Sign, C_SignFinal, C_Verify, ...).
void AuditContinuing();

// The event of an operation in progress, kept in its session state (none when auditing is
// off: then it costs a null pointer). Move-only.
class OpAudit {
 public:
  OpAudit() = default;
  // Allocates before it moves: if the allocation fails, `e` is untouched.
  explicit OpAudit(audit::Event&& e) : event_(std::make_unique<audit::Event>(std::move(e))) {}
  OpAudit(OpAudit&& o) noexcept = default;
  OpAudit& operator=(OpAudit&& o) noexcept;
  ~OpAudit();

 private:
  void Release();
  std::unique_ptr<audit::Event> event_;  // set while the operation's event is pending
};

// Takes the current call's event (an Init that succeeded: the operation goes on).
OpAudit TakeAudit();

}  // namespace vaultp11::core
