// `vaultp11 store migrate` and `vaultp11 store check`: moving a SQLite store into the configured
// PostgreSQL store, and verifying a store of either backend (store/store.h MigrateFrom, Check).
#pragma once

#include <string>

#include "cli/commands.h"
#include "config/config.h"
#include "util/result.h"

namespace vaultp11::cli {

struct StoreMigrateOptions {
  std::string from;             // the SQLite store file
  std::string from_master_key;  // its master key file; empty: <from>.masterkey
};
// `store migrate --from PATH.db [--from-master-key FILE]`: copies the SQLite store PATH.db into
// the configured store, which must be PostgreSQL and empty (its schema and master key file are
// created when missing, as `init` does); prints what it copied, then checks the target.
// Audited as "StoreMigrate" (the source, the target and the counts), refused ones too.
Status StoreMigrateCommand(const config::Config& cfg, const StoreMigrateOptions& opts, Io& io);

// `store check`: verifies the configured store (Store::Check) and prints a summary on io.out;
// each problem is a line "vaultp11: store check: ..." on io.err and the command fails.
Status StoreCheckCommand(const config::Config& cfg, Io& io);

}  // namespace vaultp11::cli
