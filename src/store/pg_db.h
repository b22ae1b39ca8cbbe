// The PostgreSQL backend of the store (db.h), through libpq.
#pragma once

#include <memory>
#include <string>

#include "store/db.h"
#include "util/secure_bytes.h"

namespace vaultp11::store {

struct PgOptions {
  std::string dsn;       // any libpq connection string or URI; may list a primary and standbys
  SecureString password; // from store.password_file; empty: libpq's own (PGPASSFILE, ~/.pgpass)
  int poll_ms = 500;     // on a standby: how often ExternalChange lets the revision be compared
};

// Connects to a primary of `dsn` (target_session_attrs=read-write), or, when none answers, to
// any host (read-only until a primary is back). connect_timeout defaults to 5 s and
// tcp_user_timeout to 10 s unless the dsn sets them, so an unreachable host is an error in
// bounded time, never a hang. Nothing reachable: CKR_DEVICE_ERROR naming the hosts.
Result<std::unique_ptr<Db>> OpenPostgres(const PgOptions& options);

// The dsn without secrets, as messages show it ("host=db1,db2 port=5432 dbname=vaultp11 user=u").
std::string DescribeDsn(const std::string& dsn);

}  // namespace vaultp11::store
