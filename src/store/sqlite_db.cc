// SqliteDb: the embedded backend (db.h). One file in WAL mode, one connection per Store, shared
// by every process on the host through SQLite's own locking.
#include "store/sqlite_db.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

namespace vaultp11::store {

namespace {

constexpr int kBusyTimeoutMs = 10000;

// Error for a failed SQLite call; `what` says what was being done. Never includes bound values.
Error SqlError(sqlite3* db, int rc, const std::string& path, std::string_view what) {
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Err(CKR_DEVICE_ERROR, "database {} busy (locked by another process for over {} ms) while {}", path,
                 kBusyTimeoutMs, what);
    case SQLITE_READONLY:
      return Err(CKR_TOKEN_WRITE_PROTECTED, "database {} is read-only ({}) while {}", path, msg, what);
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return Err(CKR_DEVICE_ERROR, "database file {} is corrupt or not a vaultp11 database ({}) while {}", path, msg,
                 what);
    case SQLITE_FULL:
      return Err(CKR_DEVICE_MEMORY, "database {} is full ({}) while {}", path, msg, what);
    case SQLITE_NOMEM:
      return Err(CKR_HOST_MEMORY, "out of memory in SQLite while {} on {}", what, path);
    default:
      return Err(CKR_DEVICE_ERROR, "database {}: {} while {}", path, msg, what);
  }
}

class SqliteRow final : public Row {
 public:
  explicit SqliteRow(sqlite3_stmt* s) : s_(s) {}
  bool IsNull(int col) const override { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
  int64_t Int(int col) const override { return sqlite3_column_int64(s_, col); }
  std::string Text(int col) const override {
    const unsigned char* p = sqlite3_column_text(s_, col);
    const int n = sqlite3_column_bytes(s_, col);
    return p == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  Bytes Blob(int col) const override {
    const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(s_, col));
    const int n = sqlite3_column_bytes(s_, col);
    return p == nullptr ? Bytes() : Bytes(p, p + n);
  }

 private:
  sqlite3_stmt* s_;
};

class SqliteDb final : public Db {
 public:
  SqliteDb(std::string path, bool read_only) : path_(std::move(path)), read_only_(read_only) {}
  ~SqliteDb() override {
    for (auto& [sql, s] : statements_) sqlite3_finalize(s);
    if (db_ != nullptr) sqlite3_close_v2(db_);
  }

  Status Open() {
    const int flags = SQLITE_OPEN_FULLMUTEX | (read_only_ ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE);
    const int rc = sqlite3_open_v2(path_.c_str(), &db_, flags, nullptr);
    if (rc != SQLITE_OK) {
      Error e = SqlError(db_, rc, path_, "opening");
      sqlite3_close_v2(db_);
      db_ = nullptr;
      return e;
    }
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
    VAULTP11_RETURN_IF_ERROR(Script("PRAGMA foreign_keys = ON", "enabling foreign keys"));
    if (!read_only_) VAULTP11_RETURN_IF_ERROR(EnableWal());
    return OkStatus();
  }

  Kind kind() const override { return Kind::kSqlite; }
  const std::string& name() const override { return path_; }
  bool read_only() const override { return read_only_; }
  bool Writable() override { return !read_only_; }

  Result<int64_t> Run(std::string_view sql, Params params, const OnRow& on_row, std::string_view what) override {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare(sql));
    // Reset and unbound however this returns, so the cached statement is ready for the next use.
    struct Reset {
      sqlite3_stmt* s;
      ~Reset() {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
      }
    } reset{s};
    if (static_cast<int>(params.size()) != sqlite3_bind_parameter_count(s))
      return Err(CKR_GENERAL_ERROR, "{}: {} parameters given for {} while {}", path_, params.size(),
                 sqlite3_bind_parameter_count(s), what);
    int i = 1;
    for (const Param& p : params) {
      int rc = SQLITE_OK;
      if (const auto* v = std::get_if<int64_t>(&p)) {
        rc = sqlite3_bind_int64(s, i, *v);
      } else if (const auto* t = std::get_if<std::string_view>(&p)) {
        rc = sqlite3_bind_text(s, i, t->data(), static_cast<int>(t->size()), SQLITE_TRANSIENT);
      } else if (const auto* b = std::get_if<store::Blob>(&p)) {
        static const uint8_t kEmpty = 0;  // a zero-length blob, not NULL, even without storage
        rc = sqlite3_bind_blob(s, i, b->bytes.empty() ? &kEmpty : b->bytes.data(),
                               static_cast<int>(b->bytes.size()), SQLITE_TRANSIENT);
      } else {
        rc = sqlite3_bind_null(s, i);
      }
      if (rc != SQLITE_OK) return SqlError(db_, rc, path_, what);
      ++i;
    }
    SqliteRow row(s);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
      if (on_row) on_row(row);
    if (rc != SQLITE_DONE) return SqlError(db_, rc, path_, what);
    return static_cast<int64_t>(sqlite3_changes(db_));
  }

  Status Script(std::string_view sql, std::string_view what) override {
    const std::string text(sql);
    const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return SqlError(db_, rc, path_, what);
    return OkStatus();
  }

  Status Transaction(std::string_view what, const std::function<Status()>& body) override {
    VAULTP11_RETURN_IF_ERROR(Script("BEGIN IMMEDIATE", what));
    Status s = body();
    if (s.ok()) {
      const int rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) return OkStatus();
      s = SqlError(db_, rc, path_, what);
    }
    if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }

  Result<bool> ExternalChange() override {
    VAULTP11_ASSIGN_OR_RETURN(int64_t v, QueryInt(*this, "PRAGMA data_version", {}, "reading the data version"));
    const bool changed = v != last_data_version_;
    last_data_version_ = v;
    return changed;
  }

  Result<int64_t> BumpRevision() override {
    int64_t rev = 0;
    VAULTP11_ASSIGN_OR_RETURN(bool found,
                              RunOne(*this, "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
                                     {}, [&](const Row& r) { rev = r.Int(0); }, "bumping the revision"));
    if (!found) return Err(CKR_DEVICE_ERROR, "database file {} is corrupt: no revision row", path_);
    return rev;
  }
  Result<int64_t> Revision() override {
    return QueryInt(*this, "SELECT value FROM meta WHERE key = 'revision'", {}, "reading the revision");
  }
  Result<bool> HasTable(std::string_view table) override {
    VAULTP11_ASSIGN_OR_RETURN(int64_t n, QueryInt(*this, "SELECT count(*) FROM sqlite_master WHERE name = ?", {table},
                                                  "looking for a table"));
    return n != 0;
  }

 private:
  // The cached prepared statement for sql (prepared on first use).
  Result<sqlite3_stmt*> Prepare(std::string_view sql) {
    auto it = statements_.find(sql);
    if (it != statements_.end()) return it->second;
    sqlite3_stmt* s = nullptr;
    const int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &s,
                                      nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(s);
      return SqlError(db_, rc, path_, "preparing a statement");
    }
    statements_.emplace(std::string(sql), s);
    return s;
  }

  // Switching to WAL also reads the header, so a non-database file fails here. Changing the
  // journal mode while other processes open the same fresh file can fail with SQLITE_BUSY
  // without SQLite calling the busy handler: retried up to the busy timeout.
  Status EnableWal() {
    VAULTP11_ASSIGN_OR_RETURN(sqlite3_stmt * s, Prepare("PRAGMA journal_mode = WAL"));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
    int rc;
    while ((rc = sqlite3_step(s)) != SQLITE_ROW && ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) &&
           std::chrono::steady_clock::now() < deadline) {
      sqlite3_reset(s);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (rc != SQLITE_ROW) {
      Error e = SqlError(db_, rc, path_, "enabling WAL");
      sqlite3_reset(s);
      return e;
    }
    const std::string mode = SqliteRow(s).Text(0);
    sqlite3_reset(s);
    if (mode != "wal")
      return Err(CKR_DEVICE_ERROR, "database file {} cannot use WAL journal mode (got {})", path_, mode);
    return OkStatus();
  }

  std::string path_;
  bool read_only_;
  sqlite3* db_ = nullptr;
  std::map<std::string, sqlite3_stmt*, std::less<>> statements_;
  int64_t last_data_version_ = -1;
};

}  // namespace

Result<std::unique_ptr<Db>> OpenSqlite(const std::string& path, bool create_if_missing) {
  struct stat st {};
  bool read_only = false;
  if (stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return Err(CKR_DEVICE_ERROR, "cannot access database file {}: {}", path, strerror(errno));
    if (!create_if_missing) return Err(CKR_TOKEN_NOT_PRESENT, "database file {} does not exist", path);
    // Created here with mode 0600; SQLite gives its -wal and -shm files the mode of the
    // database file, so they are private too (no process-wide umask change needed).
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0)
      close(fd);
    else if (errno != EEXIST)  // EEXIST: a racing process created it first
      return Err(CKR_DEVICE_ERROR, "cannot create database file {}: {}", path, strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    return Err(CKR_DEVICE_ERROR, "database file {} is not a regular file", path);
  } else if (faccessat(AT_FDCWD, path.c_str(), W_OK, AT_EACCESS) != 0) {
    read_only = true;
  }
  auto db = std::make_unique<SqliteDb>(path, read_only);
  VAULTP11_RETURN_IF_ERROR(db->Open());
  return std::unique_ptr<Db>(std::move(db));
}

}  // namespace vaultp11::store
