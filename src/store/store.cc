// Store: opening a store on its backend, the revision counter and change detection. The rules
// live in the files impl.h lists; the backends in sqlite_db.cc and pg_db.cc.
#include "store/store.h"

#include "store/impl.h"
#include "store/pg_db.h"
#include "store/sqlite_db.h"
#include "util/log.h"
#include "util/pin_file.h"

namespace vaultp11::store {

std::string Describe(const Options& options) {
  if (options.backend == Options::Backend::kPostgres) return "PostgreSQL store (" + DescribeDsn(options.dsn) + ")";
  return options.path;
}

Store::Store() : impl_(std::make_unique<Impl>()) {}
Store::~Store() = default;

Result<std::unique_ptr<Store>> Store::Open(const std::string& db_path, const std::string& master_key_path,
                                           bool create_if_missing) {
  Options o;
  o.path = db_path;
  o.master_key_file = master_key_path;
  return Open(o, create_if_missing);
}

Result<std::unique_ptr<Store>> Store::Open(const Options& options, bool create_if_missing) {
  std::unique_ptr<Store> store(new Store());
  Impl& impl = *store->impl_;
  if (options.master_key_file.empty() && !options.sealed())
    return Err(CKR_ARGUMENTS_BAD, "the store needs a master key file (store.master_key_file) or a seal (store.seal)");
  if (options.backend == Options::Backend::kPostgres) {
    PgOptions pg;
    pg.dsn = options.dsn;
    if (!options.password_file.empty()) {
      auto pw = ReadPinFile(options.password_file, "store.password_file");
      if (!pw.ok()) return Err(CKR_DEVICE_ERROR, "{}", pw.error().message);
      pg.password = std::move(pw).value();
    }
    VAULTP11_ASSIGN_OR_RETURN(impl.db, OpenPostgres(pg));
  } else {
    VAULTP11_ASSIGN_OR_RETURN(impl.db, OpenSqlite(options.path, create_if_missing));
  }
  impl.options = options;
  VAULTP11_RETURN_IF_ERROR(impl.SetUpSchema(create_if_missing));
  const bool read_only = impl.db->read_only();
  // Created up front so that the store still has it should it later be read-only.
  if (!read_only) VAULTP11_RETURN_IF_ERROR(impl.EnsureDeploymentId().status());

  // The root key: from the master key file (created on first use) or the HSM seal (root.cc).
  VAULTP11_ASSIGN_OR_RETURN(int64_t vaults, QueryInt(*impl.db, "SELECT count(*) FROM vaults", {}, "counting vaults"));
  VAULTP11_RETURN_IF_ERROR(impl.LoadRoot(create_if_missing, vaults));
  if (!read_only) {
    VAULTP11_RETURN_IF_ERROR(impl.AuthenticateVaults());
    VAULTP11_RETURN_IF_ERROR(impl.RecordRootCheck());
  }
  return store;
}

// Without the lock: the backends keep the flag atomic, and callers (C_GetTokenInfo) only show it.
bool Store::read_only() const { return impl_->db->read_only(); }

bool Store::Writable() {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->db->Writable();
}

const std::string& Store::name() const { return impl_->name(); }

Result<int64_t> Store::Revision() {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->db->Revision();
}

Result<bool> Store::ExternalChange() {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->db->ExternalChange();
}

Result<std::vector<std::string>> Store::Vaults() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  VAULTP11_RETURN_IF_ERROR(impl_->db->Run("SELECT name FROM vaults ORDER BY name", {},
                                          [&](const Row& r) { out.push_back(r.Text(0)); }, "listing vaults")
                               .status());
  return out;
}

}  // namespace vaultp11::store
