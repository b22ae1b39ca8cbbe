// Result<T> carries either a value or an Error whose CK_RV was chosen where the error was born.
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace vaultp11 {

// Error is a failed call: a specific CK_RV (never CKR_OK) and a message for the log.
// The message never contains PINs, secrets or key bytes.
struct Error {
  CK_RV rv = CKR_GENERAL_ERROR;
  std::string message;
  CK_ULONG required_size = 0;  // set only with CKR_BUFFER_TOO_SMALL
};

template <typename... Args>
inline Error Err(CK_RV rv, fmt::format_string<Args...> f, Args&&... args) {
  return Error{rv, fmt::format(f, std::forward<Args>(args)...), 0};
}

// Status is success or an Error.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error e) : err_(std::move(e)), ok_(false) {}  // NOLINT: implicit by design
  bool ok() const { return ok_; }
  const Error& error() const { return err_; }
  Error& error() { return err_; }
  CK_RV rv() const { return ok_ ? CKR_OK : err_.rv; }

 private:
  Error err_;
  bool ok_ = true;
};

inline Status OkStatus() { return Status(); }

// Result holds a T or an Error.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::move(v)) {}          // NOLINT
  Result(Error e) : v_(std::move(e)) {}      // NOLINT
  Result(Status s) : v_(std::move(s.error())) {}  // only for a failed Status
  bool ok() const { return v_.index() == 0; }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }
  Error& error() { return std::get<1>(v_); }
  CK_RV rv() const { return ok() ? CKR_OK : error().rv; }
  Status status() const { return ok() ? Status() : Status(error()); }

 private:
  std::variant<T, Error> v_;
};

namespace internal {
inline Error TakeError(Status&& s) { return std::move(s.error()); }
template <typename T>
inline Error TakeError(Result<T>&& r) { return std::move(r.error()); }
}  // namespace internal

}  // namespace vaultp11

#define VAULTP11_CONCAT_INNER_(a, b) a##b
#define VAULTP11_CONCAT_(a, b) VAULTP11_CONCAT_INNER_(a, b)

#define VAULTP11_RETURN_IF_ERROR(expr)                                \
  do {                                                                \
    auto _vp11_st = (expr);                                           \
    if (!_vp11_st.ok())                                               \
      return ::vaultp11::internal::TakeError(std::move(_vp11_st));    \
  } while (0)

#define VAULTP11_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)               \
  auto tmp = (expr);                                                  \
  if (!tmp.ok()) return ::vaultp11::internal::TakeError(std::move(tmp)); \
  lhs = std::move(tmp).value()

#define VAULTP11_ASSIGN_OR_RETURN(lhs, expr) \
  VAULTP11_ASSIGN_OR_RETURN_IMPL_(VAULTP11_CONCAT_(_vp11_r_, __LINE__), lhs, expr)
