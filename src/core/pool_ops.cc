#include "core/pool_ops.h"

#include <functional>
#include <vector>

#include "core/audit_hooks.h"
#include "util/log.h"

namespace vaultp11::core {
namespace {

Status Replay(ossl::SignOp& op, std::span<const uint8_t> data) { return op.Update(data); }
Status Replay(ossl::CipherOp& op, std::span<const uint8_t> data) { return op.Update(data).status(); }

bool StaleHandle(CK_RV rv) { return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID; }

// The member, the inner operation on it, and what moving it to another member needs.
template <typename Op>
class Failover {
 public:
  using Make = std::function<Result<std::unique_ptr<Op>>(std::shared_ptr<p11::InnerToken>, CK_OBJECT_HANDLE)>;

  Failover(model::ObjectPtr key, Make make)
      : key_(std::move(key)), pool_(*key_->material->hsm()->pool), make_(std::move(make)), tried_(pool_.size()),
        refreshed_(pool_.size()) {}

  // Leases a member and starts the operation there (replaying recorded input), moving on past
  // members that fail or lack the key. Errors of the request itself end the search.
  Status Start() {
    for (;;) {
      op_.reset();
      VAULTP11_ASSIGN_OR_RETURN(lease_, pool_.Acquire(tried_));
      const size_t i = lease_.index;
      Status st = StartOn();
      if (st.ok()) {
        AuditMember(pool_.member_name(i));
        return st;
      }
      if (StaleHandle(st.rv()) && !refreshed_[i]) {
        // Found before the member's objects changed: look it up again once.
        key_->material->ForgetPoolHandle(i);
        refreshed_[i] = true;
        continue;
      }
      if (StaleHandle(st.rv())) {
        pool_.ReportMissingKey(i);  // the health check copies it there
      } else if (!pool_.ReportFailure(i, lease_.generation, st.error())) {
        return st;
      }
      tried_[i] = true;
    }
  }

  // Runs fn(op) -> Result/Status; on a member failure moves the operation and runs it again.
  template <typename Fn>
  auto Run(Fn fn) -> decltype(fn(std::declval<Op&>())) {
    for (;;) {
      auto r = fn(*op_);
      if (r.ok()) return r;
      if (!pool_.ReportFailure(lease_.index, lease_.generation, r.error()) || !replayable_) return r;
      log::Info("pool {}: moving an operation off hsm {}", pool_.name(), pool_.member_name(lease_.index));
      tried_[lease_.index] = true;
      Status st = Start();
      if (!st.ok()) return st.error();
    }
  }

  // Keeps multi-part input for a replay (within kMaxReplayBytes).
  void Record(std::span<const uint8_t> data) {
    if (!replayable_) return;
    if (recorded_bytes_ + data.size() > kMaxReplayBytes) {
      replayable_ = false;
      recorded_.clear();
      return;
    }
    recorded_bytes_ += data.size();
    recorded_.emplace_back(data.begin(), data.end());
  }

  Op& op() { return *op_; }
  const Op& op() const { return *op_; }

 private:
  Status StartOn() {
    VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE h, key_->material->PoolHandle(lease_));
    VAULTP11_ASSIGN_OR_RETURN(op_, make_(lease_.token, h));
    for (const SecureBytes& chunk : recorded_) VAULTP11_RETURN_IF_ERROR(Replay(*op_, chunk));
    return OkStatus();
  }

  model::ObjectPtr key_;
  const pool::HsmPool& pool_;
  Make make_;
  pool::MemberLease lease_;
  std::unique_ptr<Op> op_;
  std::vector<bool> tried_, refreshed_;
  std::vector<SecureBytes> recorded_;
  size_t recorded_bytes_ = 0;
  bool replayable_ = true;
};

class PoolSignOp final : public ossl::SignOp {
 public:
  explicit PoolSignOp(Failover<ossl::SignOp> f) : f_(std::move(f)) {}
  size_t SignatureLength() const override { return f_.op().SignatureLength(); }
  bool SupportsMultiPart() const override { return f_.op().SupportsMultiPart(); }
  Status Update(std::span<const uint8_t> data) override {
    Status st = f_.Run([&](ossl::SignOp& op) { return op.Update(data); });
    if (st.ok()) f_.Record(data);
    return st;
  }
  Result<Bytes> Final() override { return f_.Run([](ossl::SignOp& op) { return op.Final(); }); }
  Result<Bytes> Sign(std::span<const uint8_t> data) override {
    return f_.Run([&](ossl::SignOp& op) { return op.Sign(data); });
  }

 private:
  Failover<ossl::SignOp> f_;
};

class PoolCipherOp final : public ossl::CipherOp {
 public:
  explicit PoolCipherOp(Failover<ossl::CipherOp> f) : f_(std::move(f)) {}
  bool SupportsMultiPart() const override { return f_.op().SupportsMultiPart(); }
  size_t MaxOutput(size_t in_len, bool final) const override {
    return f_.op().MaxOutput(in_len, final);
  }
  Result<SecureBytes> Update(std::span<const uint8_t> in) override {
    auto r = f_.Run([&](ossl::CipherOp& op) { return op.Update(in); });
    if (r.ok()) f_.Record(in);
    return r;
  }
  Result<SecureBytes> Final() override { return f_.Run([](ossl::CipherOp& op) { return op.Final(); }); }
  Result<SecureBytes> OneShot(std::span<const uint8_t> in) override {
    return f_.Run([&](ossl::CipherOp& op) { return op.OneShot(in); });
  }

 private:
  Failover<ossl::CipherOp> f_;
};

}  // namespace

Result<std::unique_ptr<ossl::SignOp>> NewPoolSignOp(model::ObjectPtr key, const CK_MECHANISM& mech,
                                                    size_t signature_length) {
  auto m = std::make_shared<p11::OwnedMechanism>(p11::OwnedMechanism::Copy(mech));
  Failover<ossl::SignOp> f(std::move(key), [m, signature_length](std::shared_ptr<p11::InnerToken> t, CK_OBJECT_HANDLE h) {
    return p11::NewInnerSignOp(std::move(t), h, m->mech(), signature_length);
  });
  VAULTP11_RETURN_IF_ERROR(f.Start());
  return std::unique_ptr<ossl::SignOp>(new PoolSignOp(std::move(f)));
}

Result<std::unique_ptr<ossl::CipherOp>> NewPoolCipherOp(model::ObjectPtr key, const CK_MECHANISM& mech, bool encrypt) {
  auto m = std::make_shared<p11::OwnedMechanism>(p11::OwnedMechanism::Copy(mech));
  Failover<ossl::CipherOp> f(std::move(key), [m, encrypt](std::shared_ptr<p11::InnerToken> t, CK_OBJECT_HANDLE h) {
    return encrypt ? p11::NewInnerEncryptOp(std::move(t), h, m->mech()) : p11::NewInnerDecryptOp(std::move(t), h, m->mech());
  });
  VAULTP11_RETURN_IF_ERROR(f.Start());
  return std::unique_ptr<ossl::CipherOp>(new PoolCipherOp(std::move(f)));
}

}  // namespace vaultp11::core
