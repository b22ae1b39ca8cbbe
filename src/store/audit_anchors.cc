// Audit anchors: where each audit file sink's chain was last sealed, kept outside the log so
// that an older log put back is recognised (see store.h).
#include <algorithm>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "backend/ossl/ossl_backend.h"
#include "store/impl.h"

namespace vaultp11::store {

namespace {

// Its own table, created by the first anchor (a read-only store, or one no writer anchored
// yet, simply has none).
constexpr const char* kAuditAnchorsSql = R"sql(
CREATE TABLE IF NOT EXISTS audit_anchors(
  sink TEXT PRIMARY KEY,
  gen_time INTEGER NOT NULL,
  gen_n INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  hash TEXT NOT NULL,
  mac TEXT NOT NULL);
)sql";
constexpr char kAuditAnchorMacContext[] = "vaultp11 audit anchor v1\n";

bool IsHexHash(std::string_view s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

// Hex HMAC-SHA256 over the position and the sink (last: the numbers and the hex hash hold no
// newline, so the message is unambiguous); "" when HMAC fails (never equal to a stored MAC).
// Also used by Store::Reseal (root.cc).
std::string AuditAnchorMac(const SecureBytes& key, const std::string& sink, const Store::AuditAnchor& a) {
  const std::string msg = fmt::format("{}{}\n{}\n{}\n{}\n{}", kAuditAnchorMacContext, a.gen_time, a.gen_n, a.seq,
                                      a.hash, sink);
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t n = 0;
  if (EVP_Q_mac(ossl::LibCtx(), "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, sizeof(mac), &n) == nullptr)
    return "";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (size_t i = 0; i < n; ++i) {
    hex += kHex[mac[i] >> 4];
    hex += kHex[mac[i] & 0xf];
  }
  OPENSSL_cleanse(mac, sizeof(mac));
  return hex;
}

Status Store::AdvanceAuditAnchor(const std::string& sink, const AuditAnchor& anchor) {
  if (!IsHexHash(anchor.hash) || anchor.gen_time < 0 || anchor.gen_n < 0 || anchor.seq < 0)
    return Err(CKR_ARGUMENTS_BAD, "audit anchor for {}: not a chain position", sink);
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly(fmt::format("record the audit anchor of {}", sink));
  return db.Transaction("recording an audit anchor", [&]() -> Status {
    // MACed inside the transaction under the current root key (a reseal holds the same lock).
    VAULTP11_RETURN_IF_ERROR(impl_->SyncRoot());
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, store::DeriveKey(impl_->master_key, "audit-anchor"));
    const std::string mac = AuditAnchorMac(key, sink, anchor);
    if (mac.empty()) return Err(CKR_FUNCTION_FAILED, "audit anchor for {}: cannot compute its MAC", sink);
    if (db.kind() == Db::Kind::kSqlite)
      VAULTP11_RETURN_IF_ERROR(db.Script(kAuditAnchorsSql, "creating the audit anchors"));
    // Only forwards: a writer that sealed an older position (another process got further
    // meanwhile) leaves the row alone.
    return db
        .Run("INSERT INTO audit_anchors(sink, gen_time, gen_n, seq, hash, mac) VALUES(?1, ?2, ?3, ?4, ?5, ?6) "
             "ON CONFLICT(sink) DO UPDATE SET gen_time = excluded.gen_time, gen_n = excluded.gen_n, "
             "seq = excluded.seq, hash = excluded.hash, mac = excluded.mac "
             "WHERE (excluded.gen_time, excluded.gen_n, excluded.seq) > "
             "(audit_anchors.gen_time, audit_anchors.gen_n, audit_anchors.seq)",
             {sink, anchor.gen_time, anchor.gen_n, anchor.seq, anchor.hash, mac}, {}, "recording an audit anchor")
        .status();
  });
}

Result<std::optional<Store::AuditAnchor>> Store::GetAuditAnchor(const std::string& sink) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  VAULTP11_ASSIGN_OR_RETURN(bool have, db.HasTable("audit_anchors"));
  if (!have) return std::optional<AuditAnchor>();
  VAULTP11_RETURN_IF_ERROR(impl_->SyncRoot());  // before the row: a reseal re-MACs it
  AuditAnchor a;
  std::string stored;
  VAULTP11_ASSIGN_OR_RETURN(bool found, RunOne(db, "SELECT gen_time, gen_n, seq, hash, mac FROM audit_anchors WHERE sink = ?",
                                               {sink},
                                               [&](const Row& r) {
                                                 a = AuditAnchor{r.Int(0), r.Int(1), r.Int(2), r.Text(3)};
                                                 stored = r.Text(4);
                                               },
                                               "reading an audit anchor"));
  if (!found) return std::optional<AuditAnchor>();
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, store::DeriveKey(impl_->master_key, "audit-anchor"));
  const std::string expect = AuditAnchorMac(key, sink, a);
  if (expect.empty() || !ConstantTimeEqual(AsBytes(expect), AsBytes(stored)))
    return Err(CKR_DEVICE_ERROR,
               "the audit anchor of {} in {} does not match its MAC (the row was edited, or written under another "
               "master key)",
               sink, impl_->name());
  return std::optional<AuditAnchor>(std::move(a));
}

}  // namespace vaultp11::store
