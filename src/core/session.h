// Session models one PKCS#11 session: its token, R/O or R/W, and the operations in progress.
#pragma once

#include <p11-kit/pkcs11.h>

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "core/audit_hooks.h"
#include "core/token.h"

namespace vaultp11::core {

struct FindState {
  std::vector<CK_OBJECT_HANDLE> results;
  size_t next = 0;
};

// A sign or verify in progress. `multi_part` is set by the first Update: afterwards the
// single-part call is refused with CKR_OPERATION_ACTIVE; `single_part` by the first single-part
// call (a length query or a too-small buffer keeps the operation): afterwards Update and Final
// are. Either refusal ends the operation, as every error but CKR_BUFFER_TOO_SMALL does (spec
// 5.2, and 5.10-5.13: "always terminates the active operation unless ...").
// `audit` holds the operation's event until the call that ends it (core/audit_hooks.h).
struct SignState {
  std::unique_ptr<ossl::SignOp> op;
  model::ObjectPtr key;
  bool multi_part = false;
  OpAudit audit;
  bool single_part = false;
};
struct VerifyState {
  std::unique_ptr<ossl::VerifyOp> op;
  model::ObjectPtr key;
  bool multi_part = false;
  OpAudit audit;
  bool single_part = false;  // C_Verify ends the operation in every case: never seen set
};
// An encrypt/decrypt in progress. `pending` keeps an output computed for a length query or a
// too-small buffer, so the retry returns it without running the cipher twice.
struct CipherState {
  std::unique_ptr<ossl::CipherOp> op;
  model::ObjectPtr key;
  bool multi_part = false;
  std::optional<SecureBytes> pending;
  OpAudit audit;
  bool single_part = false;
};
struct DigestState {
  std::unique_ptr<ossl::DigestOp> op;
  bool multi_part = false;
  bool single_part = false;
};

class Session {
 public:
  Session(CK_SESSION_HANDLE h, Token* token, CK_FLAGS flags) : handle_(h), token_(token), flags_(flags) {}
  CK_SESSION_HANDLE handle() const { return handle_; }
  Token* token() const { return token_; }
  CK_FLAGS flags() const { return flags_; }
  bool read_write() const { return (flags_ & CKF_RW_SESSION) != 0; }

  std::mutex mu;  // guards the operation states below; held during crypto on this session only
  std::optional<FindState> find;
  std::optional<SignState> sign;
  std::optional<VerifyState> verify;
  std::optional<CipherState> encrypt;
  std::optional<CipherState> decrypt;
  std::optional<DigestState> digest;

 private:
  const CK_SESSION_HANDLE handle_;
  Token* const token_;
  const CK_FLAGS flags_;
};

using SessionPtr = std::shared_ptr<Session>;

}  // namespace vaultp11::core
