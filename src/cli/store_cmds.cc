// `vaultp11 store migrate` and `vaultp11 store check` (store_cmds.h).
#include "cli/store_cmds.h"

#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "cli/audit_trail.h"
#include "store/store.h"
#include "util/strings.h"

namespace vaultp11::cli {

namespace {

// The lines that say what a migration copied or a check read.
void PrintCounts(std::ostream& out, const store::Store::StoreCounts& c, bool migrated) {
  out << fmt::format("  vaults: {}\n", c.vaults);
  out << fmt::format("  items: {}\n", c.items);
  out << fmt::format("  versions: {}\n", c.versions);
  out << fmt::format("  objects: {}\n", c.objects);
  out << fmt::format("  secrets: {}\n", c.secrets);
  out << fmt::format("  deleted items: {}\n", c.deleted_items);
  out << fmt::format("  policies: {}\n", c.policies);
  out << fmt::format("  notices: {}\n", c.notices);
  out << fmt::format("  tombstones: {}\n", c.tombstones);
  out << fmt::format("  purge-protected vaults: {}\n", c.purge_protected);
  out << fmt::format("  audit anchors: {}\n", c.audit_anchors);
  if (migrated) {
    out << fmt::format("  failed-login records: {}\n", c.login_failures);
    out << fmt::format("  used JWT ids: {}\n", c.used_jtis);
  }
  out << fmt::format("  revision: {}\n", c.revision);
}

nlohmann::json CountsJson(const store::Store::StoreCounts& c) {
  return {{"vaults", c.vaults},         {"items", c.items},
          {"versions", c.versions},     {"objects", c.objects},
          {"secrets", c.secrets},       {"deletedItems", c.deleted_items},
          {"policies", c.policies},     {"notices", c.notices},
          {"tombstones", c.tombstones}, {"auditAnchors", c.audit_anchors}};
}

bool IsFile(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

}  // namespace

Status StoreMigrateCommand(const config::Config& cfg, const StoreMigrateOptions& opts, Io& io) {
  if (cfg.store.backend != store::Options::Backend::kPostgres)
    return Err(CKR_ARGUMENTS_BAD,
               "store migrate copies a SQLite store into a PostgreSQL store, but the configured store ({}) is the "
               "SQLite file {}: set store.backend: postgresql and store.dsn in {} first",
               cfg.source, cfg.store.path, cfg.source);
  if (opts.from.empty()) return Err(CKR_ARGUMENTS_BAD, "store migrate needs --from PATH.db");
  if (!IsFile(opts.from)) return Err(CKR_ARGUMENTS_BAD, "--from {}: no such SQLite store file", opts.from);
  const std::string source_key = opts.from_master_key.empty() ? opts.from + ".masterkey" : opts.from_master_key;
  if (!IsFile(source_key))
    return Err(CKR_ARGUMENTS_BAD, "master key file {} of {} not found (give it with --from-master-key FILE)",
               source_key, opts.from);
  const std::string target_name = store::Describe(cfg.store);
  nlohmann::json props = {{"from", AbsolutePath(opts.from)},
                          {"fromMasterKeyFile", AbsolutePath(source_key)},
                          {"store", target_name},
                          {"masterKeyFile", AbsolutePath(cfg.store.master_key_file)}};

  // With audit.required, a sink that cannot be opened stops the command before anything changes
  // (the sinks are opened for good once the target's master key file surely exists).
  VAULTP11_RETURN_IF_ERROR(OperatorAudit::CheckSinks(cfg, {}));
  // The source: never created; a store of an earlier version is upgraded on this open, as by
  // any command (MigrateFrom itself only reads it).
  auto source = store::Store::Open(opts.from, source_key, /*create_if_missing=*/false);
  if (!source.ok() && source.rv() == CKR_TOKEN_NOT_PRESENT)
    return Err(CKR_ARGUMENTS_BAD, "--from {}: no such SQLite store file", opts.from);
  if (!source.ok()) return source.status();
  // The target: its schema and master key file are made when missing (as `init` makes them).
  {
    std::error_code ec;
    const auto dir = std::filesystem::path(cfg.store.master_key_file).parent_path();
    if (!dir.empty() && !std::filesystem::exists(dir, ec)) {
      std::filesystem::create_directories(dir, ec);
      std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
    }
  }
  auto target = store::Store::Open(cfg.store, /*create_if_missing=*/true);
  std::optional<OperatorAudit> audit;
  if (auto a = OperatorAudit::Open(cfg); a.ok()) {
    audit.emplace(std::move(a).value());
  } else if (target.ok()) {
    return a.status();  // audit.required and a sink that does not open: nothing was copied
  }
  if (!target.ok()) {
    if (audit) audit->Record("StoreMigrate", target.status(), props);
    return target.status();
  }
  auto counts = target.value()->MigrateFrom(*source.value());
  if (!counts.ok()) {
    if (audit) audit->Record("StoreMigrate", counts.status(), props);
    return counts.status();
  }
  props["copied"] = CountsJson(*counts);
  if (audit) audit->Record("StoreMigrate", OkStatus(), props);

  io.out << fmt::format("migrated {} into {}:\n", opts.from, target_name);
  PrintCounts(io.out, *counts, /*migrated=*/true);
  if (auto id = target.value()->DeploymentId(); id.ok()) io.out << fmt::format("deployment id: {}\n", *id);

  // The configured vaults and those copied, compared (nothing changes here: `init` creates).
  auto vaults = target.value()->Vaults();
  if (vaults.ok()) {
    std::set<std::string> have(vaults->begin(), vaults->end());
    for (const std::string& v : *vaults)
      if (cfg.FindVault(v) == nullptr && cfg.FindPool(v) == nullptr)
        io.out << fmt::format("note: vault {} is in the store but not in {}\n", v, cfg.source);
    for (const config::VaultConfig& v : cfg.vaults)
      if (have.count(v.name) == 0)
        io.out << fmt::format("note: vault {} is configured but was not in {} (run `vaultp11 init` to create it)\n",
                              v.name, opts.from);
  }

  // The copy was read back before its commit; this checks it again as `store check` would.
  VAULTP11_ASSIGN_OR_RETURN(store::Store::CheckReport report, target.value()->Check());
  for (const std::string& p : report.problems) io.err << "vaultp11: store check: " << p << "\n";
  if (!report.problems.empty())
    return Err(CKR_DEVICE_ERROR, "store check of {} after the migration: {} problems", target_name,
               report.problems.size());
  io.out << "check: no problems\n";
  return OkStatus();
}

Status StoreCheckCommand(const config::Config& cfg, Io& io) {
  auto opened = store::Store::Open(cfg.store, /*create_if_missing=*/false);
  if (!opened.ok() && opened.rv() == CKR_TOKEN_NOT_PRESENT)
    return Err(CKR_TOKEN_NOT_PRESENT, "store {} does not exist (run `vaultp11 init` first)",
               store::Describe(cfg.store));
  if (!opened.ok()) return opened.status();
  VAULTP11_ASSIGN_OR_RETURN(store::Store::CheckReport report, opened.value()->Check());
  io.out << fmt::format("store {}:\n", opened.value()->name());
  PrintCounts(io.out, report.counts, /*migrated=*/false);
  for (const std::string& p : report.problems) io.err << "vaultp11: store check: " << p << "\n";
  if (!report.problems.empty())
    return Err(CKR_DEVICE_ERROR, "store check: {} problem{} in {}", report.problems.size(),
               report.problems.size() == 1 ? "" : "s", opened.value()->name());
  io.out << "no problems\n";
  return OkStatus();
}

}  // namespace vaultp11::cli
