// The embedded SQLite backend of the store (db.h).
#pragma once

#include <memory>
#include <string>

#include "store/db.h"

namespace vaultp11::store {

// Opens the database file at `path`, creating it (mode 0600) when missing and
// create_if_missing; a missing file otherwise is CKR_TOKEN_NOT_PRESENT. A file this process
// cannot write opens read-only. A corrupt or non-database file is CKR_DEVICE_ERROR naming it.
Result<std::unique_ptr<Db>> OpenSqlite(const std::string& path, bool create_if_missing);

}  // namespace vaultp11::store
