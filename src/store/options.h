// Where a deployment's store is: the `store` section of the config (config.h), as Store::Open
// takes it.
#pragma once

#include <string>

namespace vaultp11::store {

struct Options {
  enum class Backend { kSqlite, kPostgres };
  Backend backend = Backend::kSqlite;  // store.backend: sqlite (default) | postgresql
  std::string path;                    // sqlite: the database file
  std::string dsn;                     // postgresql: a libpq connection string or URI
  std::string password_file;           // postgresql: optional; else libpq's own (PGPASSFILE, ~/.pgpass)
  std::string master_key_file;         // sqlite default: <path>.masterkey; postgresql: required
  bool operator==(const Options&) const = default;
};

// What messages name the store by: the SQLite file, or "PostgreSQL store (host=... dbname=...)"
// without secrets (store.cc).
std::string Describe(const Options& options);

}  // namespace vaultp11::store
