// Where a deployment's store is: the `store` section of the config (config.h), as Store::Open
// takes it.
#pragma once

#include <string>
#include <vector>

namespace vaultp11::store {

struct Options {
  enum class Backend { kSqlite, kPostgres };
  Backend backend = Backend::kSqlite;  // store.backend: sqlite (default) | postgresql
  std::string path;                    // sqlite: the database file
  std::string dsn;                     // postgresql: a libpq connection string or URI
  std::string password_file;           // postgresql: optional; else libpq's own (PGPASSFILE, ~/.pgpass)
  // sqlite default: <path>.masterkey; postgresql: required. With a seal: none by default (the
  // root key lives in the database, sealed by the HSM); given as well only while a store moves
  // between the file and the seal (`vaultp11 store reseal`; see Store::Reseal).
  std::string master_key_file;

  // The HSM seal (`store.seal`): the store's root key is kept in the database, encrypted
  // (AES-256-GCM, in the HSM) by a non-extractable AES key of an HSM every host reaches, so a
  // copy of the database and of a host's files opens nothing without that HSM. The token
  // fields are copied from the hsms[] entry `hsm` names when the config is loaded.
  struct Seal {
    std::string hsm;        // store.seal.hsm: a name from hsms[]; empty: no seal
    std::string key_label;  // store.seal.key_label: CKA_LABEL of the AES key in that HSM
    std::string module, token, pin_file, pin_env;  // from hsms[hsm]
    std::vector<std::string> quirks;
    bool operator==(const Seal&) const = default;
  };
  Seal seal;
  bool sealed() const { return !seal.hsm.empty(); }

  // Not from the config: `vaultp11 init` sets it so that Open creates the seal's HSM key when
  // the HSM lacks it. The module never creates one (a missing key is an error naming it).
  bool create_seal_key = false;
  bool operator==(const Options&) const = default;
};

// What messages name the store by: the SQLite file, or "PostgreSQL store (host=... dbname=...)"
// without secrets (store.cc).
std::string Describe(const Options& options);

}  // namespace vaultp11::store
