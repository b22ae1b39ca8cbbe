// Db is the store's backend: one connection to the database engine that keeps a deployment's
// rows. Store (store.h) holds every rule (names and versions, sealing, record MACs, soft-delete,
// login state) once, above this interface; the two implementations differ only in what the
// engines differ in:
//
//   SqliteDb (sqlite_db.cc)   one file, one host; the embedded default.
//   PgDb     (pg_db.cc)       PostgreSQL through libpq: several hosts share one database, with
//                            standbys for read-only failover and LISTEN/NOTIFY for changes.
//
// Statements are written once, in the SQL both engines speak: `?` or `?N` placeholders (PgDb
// rewrites them to `$N`), ON CONFLICT upserts, RETURNING. What differs (schema types, the
// revision counter, table lookups) goes through the few dialect hooks below. A Db is not
// thread-safe: Store serialises every call under its mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::store {

// A BLOB/BYTEA parameter (a std::string_view parameter is TEXT).
struct Blob {
  std::span<const uint8_t> bytes;
  Blob(std::span<const uint8_t> b) : bytes(b) {}  // NOLINT(google-explicit-constructor)
  Blob(const Bytes& b) : bytes(b) {}              // NOLINT(google-explicit-constructor)
};
struct Null {};
// One bound parameter: the first binds ?1 (or the first ?), and so on.
using Param = std::variant<int64_t, std::string_view, Blob, Null>;
using Params = std::initializer_list<Param>;

// One result row, valid during the row callback only. Columns count from 0.
class Row {
 public:
  virtual ~Row() = default;
  virtual bool IsNull(int col) const = 0;
  virtual int64_t Int(int col) const = 0;  // integers, booleans (0/1), and integers kept as text
  virtual std::string Text(int col) const = 0;
  virtual Bytes Blob(int col) const = 0;
};
using OnRow = std::function<void(const Row&)>;

class Db {
 public:
  enum class Kind { kSqlite, kPostgres };
  virtual ~Db() = default;
  virtual Kind kind() const = 0;
  // What messages name the store by: the SQLite file's path, or "PostgreSQL store (host=...
  // dbname=...)" without any password.
  virtual const std::string& name() const = 0;

  // Runs one statement with `params`, calling `on_row` (may be empty) for each result row;
  // returns the number of rows it inserted, updated or deleted. `what` says what was being done,
  // for the error message (which never includes a bound value).
  virtual Result<int64_t> Run(std::string_view sql, Params params, const OnRow& on_row, std::string_view what) = 0;
  // Runs statements without parameters (schema changes).
  virtual Status Script(std::string_view sql, std::string_view what) = 0;

  // Runs `body` in a write transaction that excludes every other writer of the store, in every
  // process on every host (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory
  // lock), so the name rules hold across processes. Any failure rolls everything back.
  virtual Status Transaction(std::string_view what, const std::function<Status()>& body) = 0;

  // Whether writes can succeed now. A SQLite file opened read-only stays so; a PostgreSQL store
  // connected to a standby (no primary reachable) is read-only until a primary is reachable
  // again, which Writable() checks (when it has to connect: at most once a second, backing off
  // to every 16 s). read_only() is safe to call without the Store's lock.
  virtual bool read_only() const = 0;
  virtual bool Writable() = 0;

  // Whether another connection committed a change since the last call (the first call: true).
  // SQLite: PRAGMA data_version. PostgreSQL: the notifications other hosts' writes sent (no
  // round trip when there are none), or, on a standby, where notifications do not arrive, true
  // at most every poll interval so the caller compares the revision counter.
  virtual Result<bool> ExternalChange() = 0;

  // ---- Dialect ----------------------------------------------------------------------------
  // Inside a write transaction: increments the store-wide revision counter and returns it; on
  // PostgreSQL also queues the change notification other hosts listen for (sent on commit).
  virtual Result<int64_t> BumpRevision() = 0;
  // The revision counter.
  virtual Result<int64_t> Revision() = 0;
  // Whether the table exists.
  virtual Result<bool> HasTable(std::string_view table) = 0;
};

// Runs a statement that returns at most one row: `on_row` sees it; returns whether there was one.
inline Result<bool> RunOne(Db& db, std::string_view sql, Params params, const OnRow& on_row, std::string_view what) {
  bool found = false;
  VAULTP11_RETURN_IF_ERROR(db.Run(sql, params, [&](const Row& r) {
    if (!found && on_row) on_row(r);
    found = true;
  }, what).status());
  return found;
}

// A single integer (e.g. a count); CKR_DEVICE_ERROR when there is no row.
inline Result<int64_t> QueryInt(Db& db, std::string_view sql, Params params, std::string_view what) {
  int64_t v = 0;
  VAULTP11_ASSIGN_OR_RETURN(bool found, RunOne(db, sql, params, [&](const Row& r) { v = r.Int(0); }, what));
  if (!found) return Err(CKR_DEVICE_ERROR, "{}: no row while {}", db.name(), what);
  return v;
}

}  // namespace vaultp11::store
