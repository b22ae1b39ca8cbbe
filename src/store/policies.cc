// Item policies (rotation; opaque text the CLI owns) and the notices given about versions.
#include "store/impl.h"

namespace vaultp11::store {

// Inside a transaction: sets (empty: removes) the item's policy.
Status Store::Impl::WritePolicy(const std::string& vault, const std::string& name, const std::string& policy) {
  if (policy.empty())
    return db->Run("DELETE FROM item_policies WHERE vault = ?1 AND name = ?2", {vault, name}, {}, "setting a policy")
        .status();
  return db->Run("INSERT INTO item_policies(vault, name, policy) VALUES(?1, ?2, ?3) "
                 "ON CONFLICT(vault, name) DO UPDATE SET policy = excluded.policy",
                 {vault, name, policy}, {}, "setting a policy")
      .status();
}

// Inside a transaction: an item gone for good takes its policy and notices along (a new item of
// that name starts without them).
Status Store::Impl::ForgetItem(const std::string& vault, const std::string& name) {
  if (*live_filter == '\0') return OkStatus();
  VAULTP11_RETURN_IF_ERROR(db->Run("DELETE FROM item_policies WHERE vault = ?1 AND name = ?2", {vault, name}, {},
                                   "forgetting an item's policy")
                               .status());
  return db->Run("DELETE FROM notices WHERE vault = ?1 AND name = ?2", {vault, name}, {}, "forgetting an item's policy")
      .status();
}

Status Store::SetPolicy(const std::string& vault, const std::string& name, const std::string& policy) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!impl_->db->Writable()) return impl_->ReadOnly("set a policy");
  return impl_->db->Transaction("setting a policy", [&]() -> Status { return impl_->WritePolicy(vault, name, policy); });
}

Result<std::string> Store::Policy(const std::string& vault, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  VAULTP11_RETURN_IF_ERROR(RunOne(*impl_->db, "SELECT policy FROM item_policies WHERE vault = ? AND name = ?",
                                  {vault, name}, [&](const Row& r) { out = r.Text(0); }, "reading a policy")
                               .status());
  return out;
}

Result<std::vector<std::pair<std::string, std::string>>> Store::Policies(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, std::string>> out;
  VAULTP11_RETURN_IF_ERROR(impl_->db->Run("SELECT name, policy FROM item_policies WHERE vault = ? ORDER BY name",
                                          {vault}, [&](const Row& r) { out.emplace_back(r.Text(0), r.Text(1)); },
                                          "reading policies")
                               .status());
  return out;
}

Result<bool> Store::ClaimNotice(const std::string& vault, const std::string& name, const std::string& version,
                                const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly("record a notice");
  bool first = false;
  VAULTP11_RETURN_IF_ERROR(db.Transaction("recording a notice", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(int64_t added, db.Run("INSERT INTO notices(vault, name, version, what) VALUES(?, ?, ?, ?) "
                                                    "ON CONFLICT(vault, name, version, what) DO NOTHING",
                                                    {vault, name, version, what}, {}, "recording a notice"));
    first = added == 1;
    return OkStatus();
  }));
  return first;
}

}  // namespace vaultp11::store
