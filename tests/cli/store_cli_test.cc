// Tests of `vaultp11 store migrate` and `vaultp11 store check` (src/cli/store_cmds.cc), run as
// the built binary ($VAULTP11_CLI) in a temp dir: a SQLite deployment made with the CLI is moved
// into a PostgreSQL store (one real server for the binary, tests/fixtures/pg_server.h, a fresh
// database per test) and used there with the CLI.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/store_cmds.h"
#include "pg_primary.h"
#include "pg_server.h"
#include "run_cli.h"
#include "temp_dir.h"

namespace vaultp11::cli {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::vaultp11::testing::PgServer;
using ::vaultp11::testing::TempDir;
using Outcome = ::vaultp11::testing::CliOutcome;
using ::vaultp11::testing::RunCli;

using ::vaultp11::testing::PgPrimary;

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }


std::vector<nlohmann::json> RecordsOf(const std::string& path, const std::string& operation) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.value("operationName", "") == operation) out.push_back(std::move(j));
  }
  return out;
}

// Runs SQL on a SQLite file.
void SqliteExec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  const std::string msg = err != nullptr ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << msg;
}

constexpr char kVaults[] = "vaults:\n  - { name: dev, soft_delete: { retention_days: 7 } }\n";

// Two configs in one folder: sqlite.yaml (data/store.db, the default master key file beside it)
// and pg.yaml (a fresh database on the test server, its own master key file), each with its own
// audit file.
class StoreCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.file("sqlite.yaml"),
              std::string("store:\n  path: data/store.db\n"
                          "audit:\n  sinks:\n    - { type: file, path: audit-sqlite.log }\n") +
                  kVaults);
    std::string why;
    pg_ = PgPrimary::Get(&why);
    ASSERT_NE(pg_, nullptr) << why;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string db = std::string("cli_") + info->name();
    for (char& c : db) c = std::isalnum(static_cast<unsigned char>(c)) ? std::tolower(static_cast<unsigned char>(c)) : '_';
    db = db.substr(0, 60);
    ASSERT_TRUE(pg_->CreateDatabase(db, &why)) << why;
    WriteFile(dir_.file("pg.yaml"),
              "store:\n  backend: postgresql\n  dsn: \"" + pg_->Dsn(db) + "\"\n  password_file: " +
                  pg_->password_file() + "\n  master_key_file: pgdata/master.key\n"
                  "audit:\n  sinks:\n    - { type: file, path: audit-pg.log }\n" + kVaults);
  }
  Outcome Sqlite(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), {"--config", "sqlite.yaml"});
    return RunCli(dir_, args, input);
  }
  Outcome Pg(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), {"--config", "pg.yaml"});
    return RunCli(dir_, args, input);
  }
  // The version `secret set` printed.
  static std::string PrintedVersion(const Outcome& o) {
    auto at = o.out.rfind("version ");
    return at == std::string::npos ? "" : o.out.substr(at + 8, 32);
  }
  TempDir dir_;
  const PgServer* pg_ = nullptr;
};

TEST_F(StoreCliTest, MigrateMovesASqliteDeploymentAndTheCliUsesItOnPostgres) {
  ASSERT_EQ(Sqlite({"init"}).exit_code, kExitOk);
  Outcome one = Sqlite({"secret", "set", "dev", "db-password"}, "first-value");
  ASSERT_EQ(one.exit_code, kExitOk) << one.err;
  ASSERT_EQ(Sqlite({"secret", "set", "dev", "db-password"}, "second-value").exit_code, kExitOk);
  ASSERT_EQ(Sqlite({"cert", "create", "dev", "web", "--subject", "CN=web.example"}).exit_code, kExitOk);
  Outcome renewed = Sqlite({"cert", "renew", "dev", "web"});
  ASSERT_EQ(renewed.exit_code, kExitOk) << renewed.err;
  ASSERT_EQ(Sqlite({"secret", "set", "dev", "old"}, "old-value").exit_code, kExitOk);
  ASSERT_EQ(Sqlite({"secret", "delete", "dev", "old"}).exit_code, kExitOk);
  Outcome whoami_before = Sqlite({"whoami", "--vault", "dev"});
  ASSERT_EQ(whoami_before.exit_code, kExitOk) << whoami_before.err;

  Outcome m = Pg({"store", "migrate", "--from", "data/store.db"});
  ASSERT_EQ(m.exit_code, kExitOk) << m.err;
  EXPECT_THAT(m.out, AllOf(HasSubstr("migrated data/store.db into PostgreSQL store"), HasSubstr("  vaults: 1\n"),
                           HasSubstr("  items: 3\n"), HasSubstr("  versions: 5\n"), HasSubstr("  secrets: 5\n"),
                           HasSubstr("  deleted items: 1\n"), HasSubstr("  policies: 1\n"),
                           HasSubstr("check: no problems\n")));
  EXPECT_THAT(m.out + m.err, AllOf(Not(HasSubstr("first-value")), Not(HasSubstr("second-value")),
                                   Not(HasSubstr("old-value"))));

  // The secret's versions, both readable, the newer current.
  EXPECT_EQ(Pg({"secret", "get", "dev", "db-password"}).out, "second-value");
  EXPECT_EQ(Pg({"secret", "get", "dev", "db-password", "--version", PrintedVersion(one)}).out, "first-value");
  nlohmann::json versions = nlohmann::json::parse(Pg({"secret", "list", "dev", "db-password", "--json"}).out);
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_EQ(versions[0]["version"], PrintedVersion(one));
  EXPECT_EQ(versions[0]["current"], false);
  EXPECT_EQ(versions[1]["current"], true);
  // The deleted item is still deleted, and recovers there.
  EXPECT_THAT(Pg({"deleted", "list", "dev"}).out, HasSubstr("old"));
  ASSERT_EQ(Pg({"deleted", "recover", "dev", "old"}).exit_code, kExitOk);
  EXPECT_EQ(Pg({"secret", "get", "dev", "old"}).out, "old-value");
  // The certificate renews under its copied policy: new rows get fresh ids.
  Outcome renew = Pg({"cert", "renew", "dev", "web"});
  EXPECT_EQ(renew.exit_code, kExitOk) << renew.err;
  ASSERT_EQ(Pg({"secret", "set", "dev", "db-password"}, "third-value").exit_code, kExitOk);
  EXPECT_EQ(Pg({"secret", "get", "dev", "db-password"}).out, "third-value");
  // Same deployment: the same resource ids.
  Outcome whoami_after = Pg({"whoami", "--vault", "dev"});
  ASSERT_EQ(whoami_after.exit_code, kExitOk) << whoami_after.err;
  EXPECT_EQ(whoami_after.out.substr(0, whoami_after.out.find('\n')),
            whoami_before.out.substr(0, whoami_before.out.find('\n')));

  Outcome check = Pg({"store", "check"});
  EXPECT_EQ(check.exit_code, kExitOk) << check.err;
  EXPECT_THAT(check.out, AllOf(HasSubstr("  vaults: 1\n"), HasSubstr("no problems\n")));

  auto events = RecordsOf(dir_.file("audit-pg.log"), "StoreMigrate");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]["resultType"], "Success");
  EXPECT_EQ(events[0]["properties"]["copied"]["items"], 3);
}

TEST_F(StoreCliTest, MigrateRefusesANonEmptyTargetAndLeavesItUnchanged) {
  ASSERT_EQ(Sqlite({"init"}).exit_code, kExitOk);
  ASSERT_EQ(Sqlite({"secret", "set", "dev", "from-sqlite"}, "s").exit_code, kExitOk);
  ASSERT_EQ(Pg({"init"}).exit_code, kExitOk);
  ASSERT_EQ(Pg({"secret", "set", "dev", "on-postgres"}, "p").exit_code, kExitOk);
  const std::string before = Pg({"list", "--json"}).out;

  Outcome m = Pg({"store", "migrate", "--from", "data/store.db"});
  EXPECT_EQ(m.exit_code, kExitFailed);
  EXPECT_THAT(m.err, AllOf(HasSubstr("is not empty"), HasSubstr("nothing was changed")));
  EXPECT_EQ(Pg({"list", "--json"}).out, before);
  EXPECT_EQ(Pg({"secret", "get", "dev", "on-postgres"}).out, "p");
  EXPECT_EQ(Pg({"secret", "get", "dev", "from-sqlite"}).exit_code, kExitFailed);
  auto events = RecordsOf(dir_.file("audit-pg.log"), "StoreMigrate");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]["resultType"], "Failure");
}

TEST_F(StoreCliTest, MigrateNeedsAPostgresTargetAndASourceWithItsKey) {
  ASSERT_EQ(Sqlite({"init"}).exit_code, kExitOk);
  Outcome to_sqlite = Sqlite({"store", "migrate", "--from", "data/store.db"});
  EXPECT_EQ(to_sqlite.exit_code, kExitFailed);
  EXPECT_THAT(to_sqlite.err, AllOf(HasSubstr("into a PostgreSQL store"), HasSubstr("store.backend: postgresql")));

  Outcome missing = Pg({"store", "migrate", "--from", "nowhere.db"});
  EXPECT_EQ(missing.exit_code, kExitFailed);
  EXPECT_THAT(missing.err, HasSubstr("nowhere.db: no such SQLite store file"));

  Outcome no_key = Pg({"store", "migrate", "--from", "data/store.db", "--from-master-key", "none.key"});
  EXPECT_EQ(no_key.exit_code, kExitFailed);
  EXPECT_THAT(no_key.err, HasSubstr("master key file none.key"));

  Outcome usage = Pg({"store", "migrate"});
  EXPECT_EQ(usage.exit_code, kExitUsage);
  EXPECT_THAT(usage.err, HasSubstr("--from"));

  Outcome help = RunCli(dir_, {"store", "--help"});
  EXPECT_EQ(help.exit_code, kExitOk);
  EXPECT_THAT(help.out, AllOf(HasSubstr("migrate"), HasSubstr("check")));
}

TEST_F(StoreCliTest, CheckNamesATamperedRowAndAWrongMasterKey) {
  ASSERT_EQ(Sqlite({"init"}).exit_code, kExitOk);
  ASSERT_EQ(Sqlite({"secret", "set", "dev", "api-token"}, "token-value").exit_code, kExitOk);
  Outcome clean = Sqlite({"store", "check"});
  EXPECT_EQ(clean.exit_code, kExitOk) << clean.err;
  EXPECT_THAT(clean.out, AllOf(HasSubstr("  objects: 1\n"), HasSubstr("  secrets: 1\n"), HasSubstr("no problems")));

  SqliteExec(dir_.file("data/store.db"), "UPDATE objects SET attributes = X'00' WHERE label = 'api-token'");
  Outcome tampered = Sqlite({"store", "check"});
  EXPECT_EQ(tampered.exit_code, kExitFailed);
  EXPECT_THAT(tampered.err, AllOf(HasSubstr("vault \"dev\" item \"api-token\" object 1"),
                                  HasSubstr("record MAC does not match"), HasSubstr("store check: 1 problem in")));
  EXPECT_THAT(tampered.err + tampered.out, Not(HasSubstr("token-value")));

  // On PostgreSQL: a migrated store checked with another master key file.
  SqliteExec(dir_.file("data/store.db"), "DELETE FROM objects");
  ASSERT_EQ(Pg({"store", "migrate", "--from", "data/store.db"}).exit_code, kExitOk);
  {
    std::ofstream key(dir_.file("pgdata/master.key"), std::ios::binary | std::ios::trunc);
    key << std::string(32, 'k');
  }
  Outcome wrong = Pg({"store", "check"});
  EXPECT_EQ(wrong.exit_code, kExitFailed);
  EXPECT_THAT(wrong.err, AllOf(HasSubstr("vault \"dev\": its data key does not open with the root key from master key file"),
                               HasSubstr("pgdata/master.key")));
}

}  // namespace
}  // namespace vaultp11::cli
