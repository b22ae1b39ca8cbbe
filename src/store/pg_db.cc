// PgDb: the PostgreSQL backend (db.h, pg_db.h). One libpq connection per Store; every host of
// a fleet opens its own against the same database.
//
// Failover: the connection goes to a primary when one answers (target_session_attrs=read-write),
// else to any host of the dsn, a standby, which makes the store read-only. A lost connection is
// re-made on the next statement outside a write transaction (a read is then retried once: it
// has no effect to repeat); a write finds out from Writable(), which looks for a primary again
// (at most once a second, backing off to every 16 s while none answers), so writes resume in the same process when a primary is back or a
// standby has been promoted.
//
// Changes: a write transaction that bumps the revision also sends NOTIFY vaultp11_changes;
// every primary connection LISTENs, so ExternalChange() is a non-blocking read of the socket,
// no round trip, when nothing changed. Standbys cannot LISTEN (and notifications are not
// replicated): there ExternalChange() says "maybe" every poll interval and the caller compares
// the revision counter, one small query.
#include "store/pg_db.h"

#include <libpq-fe.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <map>
#include <vector>

#include "util/log.h"

namespace vaultp11::store {

namespace {

using Clock = std::chrono::steady_clock;

// The lock every write transaction takes (pg_advisory_xact_lock): all writers of the store, on
// every host, queue on it as SQLite writers queue on the file's write lock.
constexpr int64_t kWriteLockKey = 0x7661756c74703131;  // "vaultp11"
// How long Writable() waits before looking for a primary again after a failed look: 1 s, then
// doubling to at most 16 s (each look may cost a connect timeout when a host is unreachable).
constexpr std::chrono::milliseconds kPrimaryRetryMin{1000}, kPrimaryRetryMax{16000};

// Type OIDs (pg_type.h) of the parameters and columns the store uses.
constexpr Oid kBoolOid = 16, kByteaOid = 17, kNameOid = 19, kInt8Oid = 20, kInt2Oid = 21, kInt4Oid = 23,
              kTextOid = 25, kUnknownOid = 705, kVarcharOid = 1043;

int64_t BigEndian(const char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  // Sign-extend the narrower integer types.
  if (n < 8 && n > 0 && (static_cast<uint8_t>(p[0]) & 0x80) != 0) v |= ~uint64_t{0} << (8 * n);
  return static_cast<int64_t>(v);
}

class PgRow final : public Row {
 public:
  PgRow(const PGresult* r, int row) : r_(r), row_(row) {}
  bool IsNull(int col) const override { return PQgetisnull(r_, row_, col) != 0; }
  int64_t Int(int col) const override {
    if (IsNull(col)) return 0;
    const char* p = PQgetvalue(r_, row_, col);
    const int n = PQgetlength(r_, row_, col);
    switch (PQftype(r_, col)) {
      case kInt8Oid:
      case kInt4Oid:
      case kInt2Oid:
        return BigEndian(p, n);
      case kBoolOid:
        return n > 0 && p[0] != 0 ? 1 : 0;
      default: {  // an integer kept as text (meta.value)
        int64_t v = 0;
        std::from_chars(p, p + n, v);
        return v;
      }
    }
  }
  std::string Text(int col) const override {
    return std::string(PQgetvalue(r_, row_, col), static_cast<size_t>(PQgetlength(r_, row_, col)));
  }
  Bytes Blob(int col) const override {
    const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(r_, row_, col));
    return Bytes(p, p + PQgetlength(r_, row_, col));
  }

 private:
  const PGresult* r_;
  int row_;
};

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

// `?` and `?N` placeholders (outside quoted text) as PostgreSQL's `$N`.
std::string Translate(std::string_view sql) {
  std::string out;
  out.reserve(sql.size() + 8);
  int next = 0;
  bool quoted = false;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '\'') quoted = !quoted;
    if (quoted || c != '?') {
      out += c;
      continue;
    }
    size_t j = i + 1;
    while (j < sql.size() && sql[j] >= '0' && sql[j] <= '9') ++j;
    if (j > i + 1) {
      out += '$';
      out.append(sql.substr(i + 1, j - i - 1));
      i = j - 1;
    } else {
      out += '$' + std::to_string(++next);
    }
  }
  return out;
}

// Which of `keys` the connection string sets.
std::map<std::string, std::string> DsnValues(const std::string& dsn) {
  std::map<std::string, std::string> out;
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (err != nullptr) PQfreemem(err);
  if (opts == nullptr) return out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o)
    if (o->val != nullptr && *o->val != '\0') out[o->keyword] = o->val;
  PQconninfoFree(opts);
  return out;
}

class PgDb final : public Db {
 public:
  explicit PgDb(const PgOptions& o) : opt_(o), name_("PostgreSQL store (" + DescribeDsn(o.dsn) + ")") {}
  ~PgDb() override { Close(); }

  // The first connection: a primary, else any host.
  Status Open() {
    if (DsnValues(opt_.dsn).empty() && !opt_.dsn.empty())
      return Err(CKR_ARGUMENTS_BAD, "store.dsn is not a libpq connection string or URI");
    Status s = Connect(/*primary=*/true);
    if (s.ok()) return s;
    Status any = Connect(/*primary=*/false);
    if (any.ok()) {
      log::Warning("{}: no primary reachable ({}); read-only on a standby", name_, s.error().message);
      return any;
    }
    return Err(any.rv(), "{}: {}", name_, any.error().message);
  }

  Kind kind() const override { return Kind::kPostgres; }
  const std::string& name() const override { return name_; }
  bool read_only() const override { return read_only_; }

  bool Writable() override {
    if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK && !read_only_) return true;
    if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) {
      // The standby this connection is on may have been promoted meanwhile.
      auto recovering = InRecovery();
      if (recovering.ok() && !*recovering) {
        read_only_ = false;
        (void)Listen();
        changed_ = true;
        log::Info("{}: the server is a primary now; writable again", name_);
        return true;
      }
    }
    const auto now = Clock::now();
    if (now - last_primary_try_ < primary_retry_) return false;
    last_primary_try_ = now;
    PGconn* old = conn_;
    conn_ = nullptr;
    Status s = Connect(/*primary=*/true);
    if (s.ok()) {
      if (old != nullptr) PQfinish(old);
      primary_retry_ = kPrimaryRetryMin;
      log::Info("{}: connected to a primary; writable again", name_);
      return true;
    }
    primary_retry_ = std::min(primary_retry_ * 2, kPrimaryRetryMax);
    conn_ = old;  // stay on the standby (or on nothing: the next statement reconnects)
    return false;
  }

  Result<int64_t> Run(std::string_view sql, Params params, const OnRow& on_row, std::string_view what) override {
    for (int attempt = 0;; ++attempt) {
      if (!in_txn_) VAULTP11_RETURN_IF_ERROR(EnsureConnected(what));
      auto r = RunOnce(sql, params, on_row, what);
      // A read that lost its connection is repeated once on a new one (a standby, maybe).
      if (r.ok() || in_txn_ || attempt > 0 || PQstatus(conn_) == CONNECTION_OK) return r;
      log::Warning("{}: connection lost while {}; reconnecting", name_, what);
    }
  }

  Status Script(std::string_view sql, std::string_view what) override {
    if (!in_txn_) VAULTP11_RETURN_IF_ERROR(EnsureConnected(what));
    const std::string text(sql);
    ResultPtr r(PQexec(conn_, text.c_str()));
    return Check(r.get(), what);
  }

  Status Transaction(std::string_view what, const std::function<Status()>& body) override {
    if (in_txn_) return Err(CKR_GENERAL_ERROR, "{}: nested transaction while {}", name_, what);
    for (int attempt = 0;; ++attempt) {
      VAULTP11_RETURN_IF_ERROR(EnsureConnected(what));
      if (!Writable()) return ReadOnlyError(what);
      Status begun = Script("BEGIN", what);
      if (begun.ok()) break;
      // The connection was found dead before anything was done: once more on a new one.
      if (attempt > 0 || PQstatus(conn_) == CONNECTION_OK) return begun;
    }
    in_txn_ = true;
    Status s = Run("SELECT pg_advisory_xact_lock(?)", {kWriteLockKey}, {}, what).status();
    if (s.ok()) s = body();
    if (s.ok()) s = Script("COMMIT", what);
    in_txn_ = false;
    if (!s.ok()) {
      if (PQstatus(conn_) == CONNECTION_OK && PQtransactionStatus(conn_) != PQTRANS_IDLE) {
        ResultPtr r(PQexec(conn_, "ROLLBACK"));
      }
      if (PQstatus(conn_) != CONNECTION_OK) {
        // Lost mid-write: when only a standby answers now, say so (the write cannot be made).
        if (EnsureConnected(what).ok() && read_only_) return ReadOnlyError(what);
      }
    }
    return s;
  }

  Result<bool> ExternalChange() override {
    if (conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK) {
      VAULTP11_RETURN_IF_ERROR(EnsureConnected("looking for changes"));
      return true;
    }
    if (changed_) {
      changed_ = false;
      // This true covers every change made before it: the notifications already received are
      // dropped, so that the next call reports only later changes (as SQLite's data_version).
      if (listening_ && PQconsumeInput(conn_) != 0)
        while (PGnotify* n = PQnotifies(conn_)) PQfreemem(n);
      return true;
    }
    if (listening_) {
      if (PQconsumeInput(conn_) == 0) {  // the connection broke: whatever happened is unknown
        VAULTP11_RETURN_IF_ERROR(EnsureConnected("looking for changes"));
        return true;
      }
      bool changed = false;
      const int self = PQbackendPID(conn_);
      while (PGnotify* n = PQnotifies(conn_)) {
        changed |= n->be_pid != self;
        PQfreemem(n);
      }
      return changed;
    }
    const auto now = Clock::now();
    if (now - last_poll_ < std::chrono::milliseconds(opt_.poll_ms)) return false;
    last_poll_ = now;
    // A standby promoted meanwhile is a primary now: listen from here on (and writable).
    if (auto recovering = InRecovery(); recovering.ok() && !*recovering && Listen().ok()) {
      read_only_ = false;
      log::Info("{}: the server is a primary now; writable again", name_);
    }
    return true;
  }

  Result<int64_t> BumpRevision() override {
    int64_t rev = 0;
    VAULTP11_ASSIGN_OR_RETURN(
        bool found, RunOne(*this,
                           "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE key = 'revision' "
                           "RETURNING CAST(value AS BIGINT)",
                           {}, [&](const Row& r) { rev = r.Int(0); }, "bumping the revision"));
    if (!found) return Err(CKR_DEVICE_ERROR, "{} has no revision row (not initialised?)", name_);
    VAULTP11_RETURN_IF_ERROR(Run("SELECT pg_notify('vaultp11_changes', '')", {}, {}, "announcing a change").status());
    return rev;
  }
  Result<int64_t> Revision() override {
    return QueryInt(*this, "SELECT CAST(value AS BIGINT) FROM meta WHERE key = 'revision'", {}, "reading the revision");
  }
  Result<bool> HasTable(std::string_view table) override {
    VAULTP11_ASSIGN_OR_RETURN(int64_t n, QueryInt(*this,
                                                  "SELECT count(*) FROM pg_catalog.pg_tables "
                                                  "WHERE schemaname = current_schema() AND tablename = ?",
                                                  {table}, "looking for a table"));
    return n != 0;
  }

 private:
  Error ReadOnlyError(std::string_view what) const {
    return Err(CKR_TOKEN_WRITE_PROTECTED, "{} is read-only (no primary reachable) while {}", name_, what);
  }

  void Close() {
    if (conn_ != nullptr) PQfinish(conn_);
    conn_ = nullptr;
    statements_.clear();
    listening_ = false;
  }

  Status EnsureConnected(std::string_view what) {
    if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) return OkStatus();
    Close();
    Status s = Connect(/*primary=*/true);
    if (s.ok()) return s;
    Status any = Connect(/*primary=*/false);
    if (!any.ok()) return Err(CKR_DEVICE_ERROR, "{}: no server reachable while {}: {}", name_, what, any.error().message);
    log::Warning("{}: no primary reachable; read-only on a standby", name_);
    return OkStatus();
  }

  Status Connect(bool primary) {
    const auto given = DsnValues(opt_.dsn);
    std::vector<const char*> keys = {"dbname", "target_session_attrs"};
    std::vector<const char*> values = {opt_.dsn.c_str(), primary ? "read-write" : "any"};
    if (given.count("connect_timeout") == 0) keys.push_back("connect_timeout"), values.push_back("5");
    if (given.count("tcp_user_timeout") == 0) keys.push_back("tcp_user_timeout"), values.push_back("10000");
    if (given.count("application_name") == 0) keys.push_back("application_name"), values.push_back("vaultp11");
    if (!opt_.password.empty()) keys.push_back("password"), values.push_back(opt_.password.c_str());
    keys.push_back(nullptr);
    values.push_back(nullptr);
    PGconn* c = PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1);
    if (c == nullptr) return Err(CKR_HOST_MEMORY, "cannot allocate a connection");
    if (PQstatus(c) != CONNECTION_OK) {
      std::string msg = PQerrorMessage(c);
      while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
      PQfinish(c);
      return Err(CKR_DEVICE_ERROR, "cannot connect{}: {}", primary ? " to a primary" : "", msg);
    }
    Close();
    conn_ = c;
    changed_ = true;  // whatever happened while disconnected is unknown
    auto recovering = InRecovery();
    if (!recovering.ok()) {
      Close();
      return recovering.error();
    }
    read_only_ = *recovering;
    if (!read_only_) VAULTP11_RETURN_IF_ERROR(Listen());
    return OkStatus();
  }

  Result<bool> InRecovery() {
    bool standby = false;
    VAULTP11_RETURN_IF_ERROR(RunOnce("SELECT pg_is_in_recovery()", {}, [&](const Row& r) { standby = r.Int(0) != 0; },
                                     "asking whether the server is a standby")
                                 .status());
    return standby;
  }

  Status Listen() {
    VAULTP11_RETURN_IF_ERROR(Script("LISTEN vaultp11_changes", "listening for changes"));
    listening_ = true;
    return OkStatus();
  }

  Status Check(const PGresult* r, std::string_view what) {
    const ExecStatusType st = r == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return OkStatus();
    const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    const std::string code = state != nullptr ? state : "";
    const char* primary = r != nullptr ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
    std::string msg = primary != nullptr ? primary : PQerrorMessage(conn_);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    if (code == "25006") {  // read_only_sql_transaction: the server became a standby
      read_only_ = true;
      return ReadOnlyError(what);
    }
    if (code == "53100") return Err(CKR_DEVICE_MEMORY, "{} is full ({}) while {}", name_, msg, what);
    if (code == "53200") return Err(CKR_HOST_MEMORY, "{} is out of memory ({}) while {}", name_, msg, what);
    if (PQstatus(conn_) != CONNECTION_OK)
      return Err(CKR_DEVICE_ERROR, "{}: connection lost while {}: {}", name_, what, msg);
    return Err(CKR_DEVICE_ERROR, "{}: {} (SQLSTATE {}) while {}", name_, msg, code, what);
  }

  Result<int64_t> RunOnce(std::string_view sql, Params params, const OnRow& on_row, std::string_view what) {
    if (conn_ == nullptr) return Err(CKR_DEVICE_ERROR, "{}: not connected while {}", name_, what);
    const size_t n = params.size();
    std::vector<Oid> types(n);
    std::vector<const char*> values(n);
    std::vector<int> lengths(n), formats(n, 1);
    std::vector<std::array<char, 8>> ints(n);
    std::string key(sql);
    key += '\0';
    size_t i = 0;
    for (const Param& p : params) {
      if (const auto* v = std::get_if<int64_t>(&p)) {
        const auto u = static_cast<uint64_t>(*v);
        for (int b = 0; b < 8; ++b) ints[i][b] = static_cast<char>(u >> (8 * (7 - b)));
        types[i] = kInt8Oid, values[i] = ints[i].data(), lengths[i] = 8;
        key += 'i';
      } else if (const auto* t = std::get_if<std::string_view>(&p)) {
        types[i] = kTextOid, values[i] = t->empty() ? "" : t->data(), lengths[i] = static_cast<int>(t->size());
        key += 't';
      } else if (const auto* bl = std::get_if<store::Blob>(&p)) {
        types[i] = kByteaOid, values[i] = bl->bytes.empty() ? "" : reinterpret_cast<const char*>(bl->bytes.data());
        lengths[i] = static_cast<int>(bl->bytes.size());
        key += 'b';
      } else {
        types[i] = kUnknownOid, values[i] = nullptr, lengths[i] = 0;
        key += 'n';
      }
      ++i;
    }
    auto it = statements_.find(key);
    if (it == statements_.end()) {
      std::string stmt_name = "vp" + std::to_string(statements_.size() + 1);
      const std::string text = Translate(sql);
      ResultPtr r(PQprepare(conn_, stmt_name.c_str(), text.c_str(), static_cast<int>(n), types.data()));
      VAULTP11_RETURN_IF_ERROR(Check(r.get(), what));
      it = statements_.emplace(std::move(key), std::move(stmt_name)).first;
    }
    ResultPtr r(PQexecPrepared(conn_, it->second.c_str(), static_cast<int>(n), values.data(), lengths.data(),
                               formats.data(), /*resultFormat=*/1));
    VAULTP11_RETURN_IF_ERROR(Check(r.get(), what));
    if (on_row) {
      const int rows = PQntuples(r.get());
      for (int row = 0; row < rows; ++row) on_row(PgRow(r.get(), row));
    }
    const char* tuples = PQcmdTuples(r.get());
    int64_t changed = 0;
    if (tuples != nullptr) std::from_chars(tuples, tuples + std::strlen(tuples), changed);
    return changed;
  }

  PgOptions opt_;
  std::string name_;
  PGconn* conn_ = nullptr;
  std::atomic<bool> read_only_{false};  // read without the Store lock (Db::read_only)
  bool listening_ = false;
  bool in_txn_ = false;
  bool changed_ = true;
  Clock::time_point last_primary_try_{}, last_poll_{};
  std::chrono::milliseconds primary_retry_ = kPrimaryRetryMin;
  std::map<std::string, std::string> statements_;  // SQL + parameter types -> prepared name
};

}  // namespace

std::string DescribeDsn(const std::string& dsn) {
  const auto v = DsnValues(dsn);
  std::string out;
  for (const char* k : {"host", "hostaddr", "port", "dbname", "user"}) {
    auto it = v.find(k);
    if (it == v.end()) continue;
    if (!out.empty()) out += ' ';
    out += std::string(k) + "=" + it->second;
  }
  return out.empty() ? "libpq defaults" : out;
}

Result<std::unique_ptr<Db>> OpenPostgres(const PgOptions& options) {
  auto db = std::make_unique<PgDb>(options);
  VAULTP11_RETURN_IF_ERROR(db->Open());
  return std::unique_ptr<Db>(std::move(db));
}

}  // namespace vaultp11::store
