// The `vaultp11` subcommands and their command-line parsing (CLI11).
#include "cli/commands.h"
#include "cli/items.h"
#include "cli/store_cmds.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <exception>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>
#include <vector>

#include "auth/secret_hash.h"
#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_module.h"
#include "backend/p11/inner_token.h"
#include "audit/file_sink.h"
#include "cli/audit_trail.h"
#include "backend/pool/pool.h"
#include "util/pin_file.h"
#include "util/strings.h"
#include "store/store.h"

#ifndef VAULTP11_VERSION
#error "VAULTP11_VERSION must be defined by the build"
#endif

namespace vaultp11::cli {
namespace {

constexpr size_t kMaxSecretBytes = 64 * 1024;

// Turns terminal echo off while the secret is typed; restores it on destruction.
class EchoOff {
 public:
  EchoOff() {
    if (tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios t = saved_;
    t.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    active_ = tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0;
  }
  ~EchoOff() {
    if (active_) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
  }
  EchoOff(const EchoOff&) = delete;
  EchoOff& operator=(const EchoOff&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};


// A label as shown on a terminal: quoted, control characters escaped (labels come from
// whoever created the object and must not drive the terminal).
std::string Printable(std::string_view s) { return QuotePrintable(s); }

bool Exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

// Creates the directory that will hold `file` (mode 0700) when it does not exist yet.
Status EnsureParentDir(const std::string& file, std::ostream& out) {
  std::filesystem::path dir = std::filesystem::path(file).parent_path();
  if (dir.empty()) return OkStatus();
  std::error_code ec;
  if (std::filesystem::exists(dir, ec)) return OkStatus();
  if (!std::filesystem::create_directories(dir, ec) || ec)
    return Err(CKR_FUNCTION_FAILED, "cannot create directory {}: {}", dir.string(), ec.message());
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  out << fmt::format("created directory {}\n", dir.string());
  return OkStatus();
}

Result<std::unique_ptr<store::Store>> OpenExisting(const config::Config& cfg) {
  auto s =
      store::Store::Open(cfg.store, /*create_if_missing=*/false);
  if (!s.ok() && s.rv() == CKR_TOKEN_NOT_PRESENT)
    return Err(CKR_TOKEN_NOT_PRESENT, "store {} does not exist (run `vaultp11 init` first)",
               store::Describe(cfg.store));
  return s;
}

// The options `cert create` and `cert csr` declare alike, first on both: the vault, the
// certificate's name, its subject and its alternative names.
void AddCertSubjectOptions(CLI::App* cmd, CertCreateOptions& o) {
  cmd->add_option("vault", o.vault, "Vault")->required();
  cmd->add_option("name", o.name, "Certificate name (1-127 of 0-9 a-z A-Z -)")->required();
  cmd->add_option("--subject", o.subject, "Subject, e.g. CN=web.example,O=Example")->required();
  cmd->add_option("--san", o.sans, "Subject alternative name DNS:x, email:x or URI:x (repeatable)");
}

}  // namespace

std::string ClassName(CK_OBJECT_CLASS object_class) {
  switch (object_class) {
    case CKO_DATA:
      return "data";
    case CKO_CERTIFICATE:
      return "certificate";
    case CKO_PUBLIC_KEY:
      return "public-key";
    case CKO_PRIVATE_KEY:
      return "private-key";
    case CKO_SECRET_KEY:
      return "secret-key";
    default:
      return fmt::format("class-0x{:x}", object_class);
  }
}

Result<SecureString> ReadSecret(std::istream& in, bool one_line) {
  SecureString secret;
  char buf[4096];
  bool too_long = false;
  while (in && !too_long) {
    size_t n = 0;
    if (one_line) {
      int c = in.get();
      if (c == std::char_traits<char>::eof()) break;
      buf[0] = static_cast<char>(c);
      n = 1;
    } else {
      in.read(buf, sizeof(buf));
      n = static_cast<size_t>(in.gcount());
    }
    secret.append(buf, n);
    if (secret.size() > kMaxSecretBytes + 2) too_long = true;  // room for "\r\n"
    if (one_line && n == 1 && buf[0] == '\n') break;
  }
  OPENSSL_cleanse(buf, sizeof(buf));
  if (in.bad()) return Err(CKR_FUNCTION_FAILED, "cannot read the secret from stdin");
  if (!secret.empty() && secret.back() == '\n') {
    secret.pop_back();
    if (!secret.empty() && secret.back() == '\r') secret.pop_back();
  }
  if (too_long || secret.size() > kMaxSecretBytes)
    return Err(CKR_ARGUMENTS_BAD, "the secret is longer than {} bytes", kMaxSecretBytes);
  if (secret.empty()) return Err(CKR_ARGUMENTS_BAD, "empty secret: nothing was read from stdin");
  return secret;
}

Result<SecureString> PromptSecret(Io& io, std::string_view prompt) {
  io.err << prompt << " (input hidden): " << std::flush;
  Result<SecureString> secret = Err(CKR_GENERAL_ERROR, "unset");
  {
    EchoOff guard;
    secret = ReadSecret(io.in, /*one_line=*/true);
  }
  io.err << "\n";
  return secret;
}

Status HashSecretCommand(Io& io, int cost_log2n) {
  Result<SecureString> secret = Err(CKR_GENERAL_ERROR, "unset");
  if (io.interactive) {
    secret = PromptSecret(io, "Secret");
  } else {
    secret = ReadSecret(io.in, /*one_line=*/false);
  }
  if (!secret.ok()) return secret.status();
  auth::ScryptCost cost;
  cost.log2_n = cost_log2n;
  const SecureString& s = secret.value();
  VAULTP11_ASSIGN_OR_RETURN(
      std::string hash,
      auth::HashSecret(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size()), cost));
  io.out << hash << "\n";
  return OkStatus();
}

namespace {

struct PoolMember {
  const config::HsmConfig* hsm;
  std::shared_ptr<p11::InnerModule> module;
  CK_SLOT_ID slot = 0;
  pool::DomainState domain;
  SecureString so_pin;
};

// What `pool init` did: whether it installed a domain (false: every member held it already),
// and the domain's check value.
struct PoolInitDone {
  bool changed = false;
  std::string check_value;
};

Status PoolInit(const config::Config& cfg, const std::vector<std::string>& pools, Io& io, PoolInitDone& done_out) {
  // Members of every named pool, each once.
  std::vector<std::string> hsms;
  std::string name;  // for messages: "a" or "a, b"
  std::set<std::string> seen;
  for (const std::string& pn : pools) {
    // A premium vault's HSM may hold the domain too (its keys can then be backed up).
    const config::ManagedHsmPoolConfig* pc = cfg.FindPool(pn);
    const config::VaultConfig* vc = pc == nullptr ? cfg.FindVault(pn) : nullptr;
    if (pc == nullptr && (vc == nullptr || vc->hsms.empty()))
      return Err(CKR_ARGUMENTS_BAD, "no pool or premium vault named {} in {}", Printable(pn), cfg.source);
    const std::string& canonical = pc ? pc->name : vc->name;
    if (!seen.insert(canonical).second) return Err(CKR_ARGUMENTS_BAD, "{} is named twice", canonical);
    name += (name.empty() ? "" : ", ") + canonical;
    for (const std::string& hn : pc ? pc->hsms : vc->hsms)
      if (std::find(hsms.begin(), hsms.end(), hn) == hsms.end()) hsms.push_back(hn);
  }
  // 1. Look at every member first: nothing changes unless all can be read.
  std::vector<PoolMember> members;
  for (const std::string& hn : hsms) {
    PoolMember m;
    m.hsm = cfg.FindHsm(hn);
    VAULTP11_ASSIGN_OR_RETURN(p11::Quirks q, p11::Quirks::Parse(m.hsm->quirks));
    VAULTP11_ASSIGN_OR_RETURN(m.module, p11::InnerModule::Load(m.hsm->module, q));
    auto slot = p11::FindTokenSlot(m.module, m.hsm->token);
    if (!slot.ok()) return Err(slot.rv(), "hsm {}: {}", hn, slot.error().message);
    m.slot = slot.value();
    auto d = pool::ReadDomain(m.module, m.slot);
    if (!d.ok()) return Err(d.rv(), "hsm {}: {}", hn, d.error().message);
    m.domain = std::move(d).value();
    members.push_back(std::move(m));
  }
  std::vector<const PoolMember*> with, without;
  for (const PoolMember& m : members) (m.domain.present ? with : without).push_back(&m);
  for (const PoolMember* m : with) {
    if (m->domain.kcv != with.front()->domain.kcv)
      return Err(CKR_FUNCTION_FAILED,
                 "pool {}: hsm {} holds a different security domain (check value {}) than hsm {} ({}); nothing "
                 "changed",
                 name, m->hsm->name, HexOf(m->domain.kcv), with.front()->hsm->name, HexOf(with.front()->domain.kcv));
  }
  if (without.empty()) {
    io.out << fmt::format("pool {}: security domain already on all {} members (check value {})\n", name,
                          members.size(), HexOf(with.front()->domain.kcv));
    done_out.check_value = HexOf(with.front()->domain.kcv);
    return OkStatus();
  }
  if (!with.empty()) {
    std::string have, lack;
    for (const PoolMember* m : with) have += (have.empty() ? "" : ", ") + m->hsm->name;
    for (const PoolMember* m : without) lack += (lack.empty() ? "" : ", ") + m->hsm->name;
    return Err(CKR_FUNCTION_FAILED,
               "pool {}: hsm {} already hold{} a security domain (check value {}) but {} do{} not; a new domain "
               "would not match it (restore the domain onto the missing members from a backup); nothing changed",
               name, have, with.size() == 1 ? "s" : "", HexOf(with.front()->domain.kcv), lack,
               without.size() == 1 ? "es" : "");
  }
  // 2. Every SO PIN before anything is written.
  for (PoolMember& m : members) {
    if (!m.hsm->so_pin_file.empty()) {
      VAULTP11_ASSIGN_OR_RETURN(m.so_pin, ReadPinFile(m.hsm->so_pin_file, "hsm " + m.hsm->name + ": so_pin_file"));
    } else if (io.interactive) {
      io.err << fmt::format("SO PIN of hsm {} (token {}, input hidden): ", m.hsm->name, m.hsm->token) << std::flush;
      Result<SecureString> pin = Err(CKR_GENERAL_ERROR, "unset");
      {
        EchoOff guard;
        pin = ReadSecret(io.in, /*one_line=*/true);
      }
      io.err << "\n";
      if (!pin.ok()) return pin.status();
      m.so_pin = std::move(pin).value();
    } else {
      return Err(CKR_PIN_INCORRECT,
                 "hsm {}: no so_pin_file in the config and no terminal to ask for the SO PIN; nothing changed",
                 m.hsm->name);
    }
  }
  // 3. The domain: 32 random bytes, in memory only while they are installed.
  SecureBytes value(pool::kDomainKeyBytes);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(value));
  VAULTP11_ASSIGN_OR_RETURN(Bytes expect, pool::AesCheckValue(value));
  std::vector<PoolMember*> done;
  Status failed;
  for (PoolMember& m : members) {
    auto kcv = pool::InstallDomain(m.module, m.slot, m.so_pin, value);
    if (!kcv.ok()) {
      failed = Err(kcv.rv(), "hsm {}: {}", m.hsm->name, kcv.error().message);
      break;
    }
    done.push_back(&m);
    if (kcv.value() != expect) {
      failed = Err(CKR_DEVICE_ERROR, "hsm {}: the installed key's check value {} is not the domain's {}", m.hsm->name,
                   HexOf(kcv.value()), HexOf(expect));
      break;
    }
  }
  OPENSSL_cleanse(value.data(), value.size());
  if (!failed.ok()) {
    for (PoolMember* m : done) {
      Status st = pool::RemoveDomain(m->module, m->slot, m->so_pin);
      if (!st.ok()) io.err << fmt::format("vaultp11: hsm {}: undoing failed: {}\n", m->hsm->name, st.error().message);
    }
    return Err(failed.rv(), "pool {}: {}; members done so far were undone", name, failed.error().message);
  }
  for (const PoolMember& m : members)
    io.out << fmt::format("pool {}: security domain installed on hsm {} (token {})\n", name, m.hsm->name,
                          m.hsm->token);
  io.out << fmt::format("pool {}: security domain ready on {} members (check value {})\n", name, members.size(),
                        HexOf(expect));
  done_out.changed = true;
  done_out.check_value = HexOf(expect);
  return OkStatus();
}

}  // namespace

Status PoolInitCommand(const config::Config& cfg, const std::vector<std::string>& pools, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(OperatorAudit audit, OperatorAudit::Open(cfg));
  PoolInitDone done;
  Status st = PoolInit(cfg, pools, io, done);
  if (st.ok() && !done.changed) return st;  // every member held the domain already: nothing changed
  // One "SecurityDomainInit" per pool or vault named, with its members.
  std::vector<std::string> names;
  for (const std::string& pn : pools) {
    const config::ManagedHsmPoolConfig* pc = cfg.FindPool(pn);
    const config::VaultConfig* vc = pc == nullptr ? cfg.FindVault(pn) : nullptr;
    std::string canonical = pc ? pc->name : vc ? vc->name : pn;
    if (std::find(names.begin(), names.end(), canonical) == names.end()) names.push_back(std::move(canonical));
  }
  for (const std::string& n : names) {
    nlohmann::json props = nlohmann::json::object();
    if (const config::ManagedHsmPoolConfig* pc = cfg.FindPool(n)) {
      props["hsms"] = pc->hsms;
    } else if (const config::VaultConfig* vc = cfg.FindVault(n)) {
      props["hsms"] = vc->hsms;
    }
    if (names.size() > 1) {
      std::vector<std::string> others;
      for (const std::string& o : names)
        if (o != n) others.push_back(o);
      props["sharedWith"] = others;
    }
    if (st.ok()) props["checkValue"] = done.check_value;
    audit.Record("SecurityDomainInit", st, std::move(props), "", n);
  }
  return st;
}

Status InitCommand(const config::Config& cfg, std::ostream& out) {
  const bool pg = cfg.store.backend == store::Options::Backend::kPostgres;
  // A PostgreSQL store "exists" once it has the schema (Open with create_if_missing false).
  const bool db_existed =
      pg ? store::Store::Open(cfg.store, /*create_if_missing=*/false).rv() != CKR_TOKEN_NOT_PRESENT
         : Exists(cfg.store.path);
  const std::string store_name = pg ? store::Describe(cfg.store) : cfg.store.path;
  // With store.seal the root key lives in the database (sealed by the HSM): it exists once
  // the store does, and no master key file is made.
  const bool sealed_cfg = cfg.store.sealed();
  const bool key_existed = sealed_cfg ? db_existed : Exists(cfg.store.master_key_file);
  const bool creates_store = !db_existed || !key_existed;
  // The audit sinks first: with audit.required, one that cannot be opened stops init before it
  // changes anything. Their heads are signed with a key from the master key file, so without
  // that file the sinks are only checked now and opened once the store has made it.
  std::optional<OperatorAudit> audit;
  if (key_existed) {
    VAULTP11_ASSIGN_OR_RETURN(audit, OperatorAudit::Open(cfg));
  } else {
    std::vector<std::string> dirs;
    if (!pg) dirs.push_back(std::filesystem::path(cfg.store.path).parent_path().string());
    if (!cfg.store.master_key_file.empty())
      dirs.push_back(std::filesystem::path(cfg.store.master_key_file).parent_path().string());
    VAULTP11_RETURN_IF_ERROR(OperatorAudit::CheckSinks(cfg, dirs));
  }
  nlohmann::json store_props = {{"store", pg ? store_name : AbsolutePath(cfg.store.path)},
                                {"storeCreated", !db_existed}};
  if (sealed_cfg) {
    store_props["seal"] = {{"hsm", cfg.store.seal.hsm}, {"keyLabel", cfg.store.seal.key_label}};
  } else {
    store_props["masterKeyFile"] = AbsolutePath(cfg.store.master_key_file);
    store_props["masterKeyCreated"] = !key_existed;
  }
  // A failure before the vaults: recorded as the store's ("StoreInit"), with the audit opened
  // now if it was not yet (as far as it can be: its error then adds nothing to init's own).
  auto store_failed = [&](Status st) -> Status {
    if (!audit) {
      auto a = OperatorAudit::Open(cfg);
      if (a.ok()) audit.emplace(std::move(a).value());
    }
    if (audit) audit->Record("StoreInit", st, store_props);
    return st;
  };
  if (!pg)
    if (Status s = EnsureParentDir(cfg.store.path, out); !s.ok()) return store_failed(s);
  if (!cfg.store.master_key_file.empty())
    if (Status s = EnsureParentDir(cfg.store.master_key_file, out); !s.ok()) return store_failed(s);
  store::Options options = cfg.store;
  options.create_seal_key = true;  // only init creates the seal's HSM key
  auto opened = store::Store::Open(options, /*create_if_missing=*/true);
  if (!opened.ok()) return store_failed(opened.status());
  std::unique_ptr<store::Store> st = std::move(opened).value();
  // Never a second root key beside the one the store's data keys are wrapped with: a present
  // but wrong master key file stops init here, naming the file, before any vault is made.
  if (Status s = st->CheckRootKey(); !s.ok()) return store_failed(s);
  if (!audit) {
    VAULTP11_ASSIGN_OR_RETURN(
        audit, OperatorAudit::Open(cfg, fmt::format("the store {} was created, no vault yet (run `vaultp11 init` again "
                                                    "once the audit sink works)",
                                                    store_name)));
  }
  if (creates_store) audit->Record("StoreInit", OkStatus(), store_props);
  out << fmt::format("{} store {}\n", db_existed ? "using existing" : "created", store_name);
  const store::Store::RootInfo root = st->Root();
  if (root.sealed)
    out << fmt::format("root key sealed by {}\n", root.source);
  else
    out << fmt::format("{} master key file {}\n", key_existed ? "using existing" : "created",
                       cfg.store.master_key_file);
  auto listed = st->Vaults();
  if (!listed.ok()) {
    audit->Record("VaultCreate", listed.status());
    return listed.status();
  }
  const std::vector<std::string> before = std::move(listed).value();
  std::set<std::string> existing(before.begin(), before.end());
  // One "VaultCreate" per vault or pool created (none for those already there).
  auto create = [&](const std::string& name, nlohmann::json props) -> Status {
    const bool is_new = existing.count(name) == 0;
    Status s = st->EnsureVault(name);
    if (is_new || !s.ok()) audit->Record("VaultCreate", s, std::move(props), "", name);
    return s;
  };
  for (const config::VaultConfig& v : cfg.vaults) {
    VAULTP11_RETURN_IF_ERROR(create(v.name, {{"sku", v.sku}}));
    out << fmt::format("{} vault {}\n", existing.count(v.name) ? "existing" : "created", v.name);
  }
  for (const config::ManagedHsmPoolConfig& p : cfg.managed_hsm_pools) {
    VAULTP11_RETURN_IF_ERROR(create(p.name, {{"hsms", p.hsms}}));
    out << fmt::format("{} managed HSM pool {}\n", existing.count(p.name) ? "existing" : "created", p.name);
  }
  for (const std::string& name : before) {
    if (cfg.FindVault(name) == nullptr && cfg.FindPool(name) == nullptr)
      out << fmt::format("note: vault {} is in the store but not in {}\n", name, cfg.source);
  }
  return OkStatus();
}

Status ListCommand(const config::Config& cfg, const ListOptions& opts, std::ostream& out) {
  if (!opts.vault.empty() && cfg.FindVault(opts.vault) == nullptr)
    return Err(CKR_ARGUMENTS_BAD, "no vault named {} in {}", Printable(opts.vault), cfg.source);
  VAULTP11_ASSIGN_OR_RETURN(auto st, OpenExisting(cfg));
  VAULTP11_ASSIGN_OR_RETURN(std::vector<std::string> in_store, st->Vaults());
  std::set<std::string> initialized(in_store.begin(), in_store.end());

  nlohmann::ordered_json doc = {{"config", cfg.source},
                                {"store", store::Describe(cfg.store)},
                                {"vaults", nlohmann::ordered_json::array()}};
  std::string text;
  for (const config::VaultConfig& v : cfg.vaults) {
    if (!opts.vault.empty() && v.name != opts.vault) continue;
    bool present = initialized.count(v.name) != 0;
    std::vector<store::ObjectRecord> objects;
    if (present) {
      VAULTP11_ASSIGN_OR_RETURN(objects, st->LoadVault(v.name));
    }
    nlohmann::ordered_json jobjects = nlohmann::ordered_json::array();
    if (present) {
      text += fmt::format("vault {} ({}): {} object{}\n", v.name, v.sku, objects.size(),
                          objects.size() == 1 ? "" : "s");
    } else {
      text += fmt::format("vault {} ({}): not in the store (run `vaultp11 init`)\n", v.name, v.sku);
    }
    for (const store::ObjectRecord& o : objects) {
      std::string id = HexOf(o.ck_id);
      text += fmt::format("  {:<11}  id {}  label {}{}\n", ClassName(o.object_class), id.empty() ? "-" : id,
                          Printable(o.label), o.version.empty() ? "" : "  version " + o.version);
      jobjects.push_back({{"class", ClassName(o.object_class)}, {"label", o.label}, {"id", id}, {"version", o.version}});
    }
    doc["vaults"].push_back({{"name", v.name},
                             {"sku", v.sku},
                             {"initialized", present},
                             {"objects", std::move(jobjects)}});
  }
  if (opts.json) {
    // Labels are bytes from the store; invalid UTF-8 is replaced rather than thrown on.
    out << doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  } else {
    out << text;
  }
  return OkStatus();
}

int Run(int argc, const char* const* argv, Io& io) {
  try {
    CLI::App app{"Administers the vaultp11 PKCS#11 module: its store, vaults and identities.",
                 "vaultp11"};
    app.set_version_flag("--version", std::string("vaultp11 ") + VAULTP11_VERSION,
                         "Print the version and exit");
    std::string config_path;
    app.add_option("--config", config_path,
                   "Config file (default: $VAULTP11_CONF, else " VAULTP11_DEFAULT_CONFIG ")");
    app.require_subcommand(1);
    app.fallthrough();  // --config is accepted after the subcommand too

    int cost = auth::ScryptCost{}.log2_n;
    CLI::App* hash = app.add_subcommand(
        "hash-secret",
        "Read a client secret from stdin and print its hash for principals[].secrets[].hash");
    hash->add_option("--cost-log2n", cost, "scrypt cost: N = 2^value")
        ->check(CLI::Range(kMinCostLog2N, kMaxCostLog2N))
        ->capture_default_str();

    CLI::App* init = app.add_subcommand(
        "init", "Create the store, its master key file and every configured vault");

    ListOptions list_opts;
    CLI::App* list = app.add_subcommand("list", "List the configured vaults and their objects");
    list->add_option("--vault", list_opts.vault, "Only this vault");
    list->add_flag("--json", list_opts.json, "Print one JSON document");

    std::vector<std::string> pool_names;
    CLI::App* pool_cmd = app.add_subcommand("pool", "Administer managed HSM pools");
    pool_cmd->require_subcommand(1);
    CLI::App* pool_init = pool_cmd->add_subcommand(
        "init",
        "Install one security domain on every member HSM of the named pools (SO PINs from hsms[].so_pin_file or a "
        "prompt); pools initialised together share it");
    pool_init->add_option("pool", pool_names, "Pool names from managed_hsm_pools")->required();

    std::string where, key_name, backup_file;
    CLI::App* backup = app.add_subcommand("backup", "Write an HSM key, wrapped under its security domain, to a new file");
    backup->add_option("pool|vault", where, "Managed HSM pool, or premium vault")->required();
    backup->add_option("key", key_name, "Key name (CKA_LABEL)")->required();
    backup->add_option("file", backup_file, "New file to write (mode 0600)")->required();
    AssertionOptions assertion_opts;
    CLI::App* assertion = app.add_subcommand(
        "assertion", "Print a client assertion (JWT) for a client_certificate principal's login");
    assertion->add_option("--principal", assertion_opts.principal, "The principal")->required();
    assertion->add_option("--key", assertion_opts.key_file, "PEM private key of its certificate")->required();
    assertion->add_option("--cert", assertion_opts.cert_file, "PEM certificate")->required();
    auto* a_vault = assertion->add_option("--vault", assertion_opts.vault, "Vault or pool the login is for");
    assertion->add_option("--slot", assertion_opts.slot, "Slot the login is for")->excludes(a_vault);
    assertion->add_option("--lifetime", assertion_opts.lifetime_seconds, "Seconds it stays valid")
        ->check(CLI::Range(30, 600))
        ->capture_default_str();
    WhoamiOptions whoami_opts;
    std::string whoami_pin;
    CLI::App* whoami = app.add_subcommand(
        "whoami", "Show a token's resource id and accepted authorities, and who a PIN (or this process) is");
    auto* w_vault = whoami->add_option("--vault", whoami_opts.vault, "Vault or pool");
    whoami->add_option("--slot", whoami_opts.slot, "Slot")->excludes(w_vault);
    auto* w_pin = whoami->add_option("--pin", whoami_pin, "PIN to check: - (stdin), @FILE, or the value");
    std::vector<std::string> audit_files;
    CLI::App* audit_cmd = app.add_subcommand("audit", "Work with audit files");
    audit_cmd->require_subcommand(1);
    CLI::App* audit_verify = audit_cmd->add_subcommand(
        "verify", "Check audit files' hash chains (in order) and heads; without FILE, every configured file sink's");
    audit_verify->add_option("file", audit_files, "Audit files, oldest first (default: the configured file sinks)");
    AuditPurgeOptions purge_opts;
    CLI::App* audit_purge = audit_cmd->add_subcommand(
        "purge", "Delete rotated audit files whose newest record is before a date (never a current file)");
    const CLI::Validator is_date(
        [](std::string& s) {
          return audit::ParseDate(s) ? std::string() : std::string("must be a date YYYY-MM-DD");
        },
        "YYYY-MM-DD");
    audit_purge->add_option("--before", purge_opts.before, "Delete files whose records are all before this UTC day")
        ->required()
        ->check(is_date);
    audit_purge->add_option("--sink", purge_opts.sink, "Only this file sink (its path; default: every file sink)");
    AuditTailOptions tail_opts;
    CLI::App* audit_tail = audit_cmd->add_subcommand("tail", "Print the last audit records readably; --follow for new ones");
    audit_tail->add_option("file", tail_opts.file, "Audit file (default: the first configured file sink)");
    audit_tail->add_option("-n,--lines", tail_opts.lines, "How many records")->capture_default_str();
    audit_tail->add_flag("-f,--follow", tail_opts.follow, "Keep printing records as they are written (Ctrl-C ends)");
    const CLI::Validator is_filter(
        [](std::string& s) {
          return IsAuditFilter(s) ? std::string()
                                  : std::string("must be KEY=VALUE with KEY principal, operation, result, vault or host");
        },
        "KEY=VALUE");
    audit_tail->add_option("--filter", tail_opts.filter, "Only records matching all of KEY=VALUE,...")
        ->delimiter(',')
        ->check(is_filter);
    CLI::App* restore = app.add_subcommand("restore", "Restore a key backup where the same security domain is held");
    restore->add_option("pool|vault", where, "Managed HSM pool, or premium vault")->required();
    restore->add_option("file", backup_file, "Backup file")->required();

    CLI::App* secret_cmd = app.add_subcommand("secret", "Work with a vault's secrets");
    secret_cmd->require_subcommand(1);
    SecretSetOptions set_opts;
    CLI::App* secret_set = secret_cmd->add_subcommand(
        "set", "Store a secret's value (stdin, or --file; never the command line) as its new current version");
    secret_set->add_option("vault", set_opts.vault, "Vault")->required();
    secret_set->add_option("name", set_opts.name, "Secret name (1-127 of 0-9 a-z A-Z -)")->required();
    secret_set->add_option("--file", set_opts.file, "Read the value from this file (byte for byte)");
    secret_set->add_option("--content-type", set_opts.content_type, "Content type, e.g. text/plain");
    secret_set->add_option("--not-before", set_opts.not_before, "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (informational)");
    secret_set->add_option("--expires", set_opts.expires, "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (informational)");
    secret_set->add_flag("--disabled", set_opts.disabled, "Store the version disabled");
    secret_set->add_option("--tag", set_opts.tags, "Tag NAME=VALUE (repeatable, at most 15)");
    SecretGetOptions get_opts;
    CLI::App* secret_get = secret_cmd->add_subcommand("get", "Write a secret's value to stdout (or a new file)");
    secret_get->add_option("vault", get_opts.vault, "Vault")->required();
    secret_get->add_option("name", get_opts.name, "Secret name")->required();
    secret_get->add_option("--version", get_opts.version, "This version (default: the current one)");
    secret_get->add_option("--out", get_opts.out, "Write the value to this new file (mode 0600)");
    SecretListOptions slist_opts;
    CLI::App* secret_list = secret_cmd->add_subcommand("list", "List a vault's secrets, or one secret's versions (no values)");
    secret_list->add_option("vault", slist_opts.vault, "Vault")->required();
    secret_list->add_option("name", slist_opts.name, "List this secret's versions");
    secret_list->add_flag("--json", slist_opts.json, "Print JSON");
    CLI::App* store_cmd = app.add_subcommand("store", "Administer the store: move, check, reseal");
    store_cmd->require_subcommand(1);
    StoreMigrateOptions migrate_opts;
    CLI::App* store_migrate = store_cmd->add_subcommand(
        "migrate", "Copy a SQLite store into the configured (empty) PostgreSQL store, every row, keys re-wrapped");
    store_migrate->add_option("--from", migrate_opts.from, "The SQLite store file")->required();
    store_migrate->add_option("--from-master-key", migrate_opts.from_master_key,
                              "Its master key file (default: PATH.db.masterkey)");
    CLI::App* store_check = store_cmd->add_subcommand(
        "check", "Verify the configured store: every row decrypts and passes its MAC, versions and revisions agree");
    std::string rot_where, rot_name;
    CLI::App* key_cmd = app.add_subcommand("key", "Work with a vault's or pool's keys");
    key_cmd->require_subcommand(1);
    CLI::App* key_rotate = key_cmd->add_subcommand("rotate", "Make a new current version of a key (older ones stay usable)");
    key_rotate->add_option("vault|pool", rot_where, "Vault or managed HSM pool")->required();
    key_rotate->add_option("name", rot_name, "Key name")->required();
    KeyPolicyOptions policy_opts;
    std::string rotate_after, rotate_before, notify_before, expiry_after;
    CLI::App* key_policy = key_cmd->add_subcommand("policy", "Set or show a key's rotation policy");
    key_policy->add_option("vault|pool", policy_opts.where, "Vault or managed HSM pool")->required();
    key_policy->add_option("name", policy_opts.name, "Key name")->required();
    auto* o_after = key_policy->add_option("--rotate-after", rotate_after, "Rotate this long after creation (e.g. 90d)");
    auto* o_before = key_policy->add_option("--rotate-before-expiry", rotate_before, "Rotate this long before expiry");
    auto* o_notify = key_policy->add_option("--notify-before-expiry", notify_before, "Notify this long before expiry");
    auto* o_expiry = key_policy->add_option("--expiry", expiry_after, "New versions expire this long after creation");
    bool policy_clear = false;
    auto* o_clear = key_policy->add_flag("--clear", policy_clear, "Remove the policy");
    o_clear->excludes(o_after)->excludes(o_before)->excludes(o_notify)->excludes(o_expiry);
    LifecycleOptions life_opts;
    std::string life_at;
    CLI::App* lifecycle_cmd = app.add_subcommand("lifecycle", "Apply due rotations, notices and purges");
    lifecycle_cmd->require_subcommand(1);
    CLI::App* lifecycle_run = lifecycle_cmd->add_subcommand(
        "run", "Apply every due rotation, near-expiry notice and purge once (cron / systemd timer; safe on several hosts)");
    lifecycle_run->add_option("--at", life_at, "Judge what is due at this UTC time (YYYY-MM-DD[THH:MM:SSZ]) instead of now");
    CertImportOptions import_opts;
    CLI::App* cert_cmd = app.add_subcommand("cert", "Work with a vault's certificates");
    cert_cmd->require_subcommand(1);
    CLI::App* cert_import = cert_cmd->add_subcommand(
        "import", "Import a certificate with its private key (PEM or PKCS#12) and its issuers");
    cert_import->add_option("vault", import_opts.vault, "Vault")->required();
    cert_import->add_option("name", import_opts.name, "Certificate name (1-127 of 0-9 a-z A-Z -)")->required();
    cert_import->add_option("--file", import_opts.file, "PEM or PKCS#12 file")->required();
    cert_import->add_option("--password-file", import_opts.password_file, "File whose first line is the password");
    cert_import->add_flag("--hsm", import_opts.hsm, "Put the key into the vault's HSM");
    cert_import->add_option("--tag", import_opts.tags, "Tag NAME=VALUE (repeatable)");
    cert_import->add_flag("--exportable", import_opts.exportable, "Keep a bundle (certificate, issuers, key) as the certificate's secret");
    cert_import->add_option("--export-format", import_opts.export_format, "pem or pkcs12 (the bundle's format)")->capture_default_str();
    CertCreateOptions create_opts;
    CLI::App* cert_create = cert_cmd->add_subcommand("create", "Issue a certificate with a new key (Self-signed or by a vault CA)");
    AddCertSubjectOptions(cert_create, create_opts);
    cert_create->add_option("--eku", create_opts.ekus, "Extended key usage: serverAuth, clientAuth, codeSigning, ... (repeatable)");
    cert_create->add_option("--key-usage", create_opts.key_usage, "Key usage: digitalSignature, keyEncipherment, ... (repeatable)");
    cert_create->add_option("--validity-months", create_opts.validity_months, "Validity in months")->capture_default_str();
    cert_create->add_option("--issuer", create_opts.issuer, "Self, or a CA certificate of the vault")->capture_default_str();
    cert_create->add_option("--key", create_opts.key, "rsa:2048|3072|4096 or ec:P-256|P-384|P-521|secp256k1")->capture_default_str();
    cert_create->add_flag("--hsm", create_opts.hsm, "Make the key in the vault's HSM");
    cert_create->add_flag("--exportable", create_opts.exportable, "Keep a bundle (certificate, issuers, key) as the certificate's secret");
    cert_create->add_option("--export-format", create_opts.export_format, "pem or pkcs12 (the bundle's format)")->capture_default_str();
    cert_create->add_flag("--ca", create_opts.ca, "A CA certificate, to issue others");
    cert_create->add_option("--tag", create_opts.tags, "Tag NAME=VALUE on the certificate and its key, every version (repeatable)");
    cert_create->add_flag("--reuse-key", create_opts.reuse_key, "Renewals keep the key");
    cert_create->add_option("--lifetime-action", create_opts.lifetime_action, "auto-renew or notify (by lifecycle run)")
        ->capture_default_str();
    cert_create->add_option("--lifetime-percentage", create_opts.lifetime_percentage, "Act at this percentage of the lifetime (default 80)");
    cert_create->add_option("--days-before-expiry", create_opts.days_before_expiry, "Act this many days before expiry");
    CertCsrOptions csr_opts;
    csr_opts.issuer = "Unknown";
    csr_opts.lifetime_action = "notify";  // an external CA's certificate is renewed by a new request
    CLI::App* cert_csr = cert_cmd->add_subcommand("csr", "Make a key and a certificate signing request for an external CA");
    AddCertSubjectOptions(cert_csr, csr_opts);
    cert_csr->add_option("--eku", csr_opts.ekus, "Extended key usage (repeatable)");
    cert_csr->add_option("--key-usage", csr_opts.key_usage, "Key usage (repeatable; default digitalSignature)");
    cert_csr->add_option("--validity-months", csr_opts.validity_months, "Validity asked for, in months (for lifetime notices)")
        ->capture_default_str();
    cert_csr->add_option("--key", csr_opts.key, "rsa:2048|3072|4096 or ec:P-256|P-384|P-521|secp256k1")->capture_default_str();
    cert_csr->add_flag("--hsm", csr_opts.hsm, "Make the key in the vault's HSM");
    cert_csr->add_option("--tag", csr_opts.tags, "Tag NAME=VALUE (repeatable)");
    cert_csr->add_flag("--reuse-key", csr_opts.reuse_key, "A new request for an existing certificate keeps its key");
    cert_csr->add_option("--lifetime-percentage", csr_opts.lifetime_percentage, "Notify at this percentage of the lifetime (default 80)");
    cert_csr->add_option("--days-before-expiry", csr_opts.days_before_expiry, "Notify this many days before expiry");
    cert_csr->add_option("--out", csr_opts.out, "Write the request to this new file (0600) instead of stdout");
    std::string merge_vault, merge_name, merge_file;
    CLI::App* cert_merge = cert_cmd->add_subcommand("merge", "Add the certificate an external CA issued for a pending request");
    cert_merge->add_option("vault", merge_vault, "Vault")->required();
    cert_merge->add_option("name", merge_name, "Certificate name")->required();
    cert_merge->add_option("--file", merge_file, "The certificate (PEM, with its issuers, or DER)")->required();
    std::string cancel_vault, cancel_name;
    CLI::App* cert_cancel = cert_cmd->add_subcommand("cancel", "Take back a pending request (its key pair and CSR)");
    cert_cancel->add_option("vault", cancel_vault, "Vault")->required();
    cert_cancel->add_option("name", cancel_name, "Certificate name")->required();
    std::string renew_vault, renew_name;
    CLI::App* cert_renew = cert_cmd->add_subcommand("renew", "Make a new version of a certificate under its policy");
    cert_renew->add_option("vault", renew_vault, "Vault")->required();
    cert_renew->add_option("name", renew_name, "Certificate name")->required();
    DeletedOptions deleted_opts;
    CLI::App* deleted_cmd = app.add_subcommand("deleted", "Work with a vault's or pool's soft-deleted items");
    deleted_cmd->require_subcommand(1);
    CLI::App* deleted_list = deleted_cmd->add_subcommand("list", "List the deleted items");
    deleted_list->add_option("vault|pool", deleted_opts.where, "Vault or managed HSM pool")->required();
    deleted_list->add_option("name", deleted_opts.name, "Only this item");
    deleted_list->add_flag("--json", deleted_opts.json, "Print JSON");
    CLI::App* deleted_recover = deleted_cmd->add_subcommand("recover", "Bring a deleted item back, every version");
    deleted_recover->add_option("vault|pool", deleted_opts.where, "Vault or managed HSM pool")->required();
    deleted_recover->add_option("name", deleted_opts.name, "Item name")->required();
    CLI::App* deleted_purge = deleted_cmd->add_subcommand(
        "purge", "Delete a deleted item for good, with its HSM keys (after retention under purge protection)");
    deleted_purge->add_option("vault|pool", deleted_opts.where, "Vault or managed HSM pool")->required();
    deleted_purge->add_option("name", deleted_opts.name, "Item name")->required();
    std::string del_vault, del_name;
    CLI::App* secret_delete = secret_cmd->add_subcommand("delete", "Delete a secret with every version");
    secret_delete->add_option("vault", del_vault, "Vault")->required();
    secret_delete->add_option("name", del_name, "Secret name")->required();

    std::string reseal_to;
    CLI::App* store_reseal = store_cmd->add_subcommand(
        "reseal", "Move the store's root key between the master key file and the HSM seal (rotating it)");
    store_reseal->add_option("--to", reseal_to, "seal: into store.seal; file: into store.master_key_file")
        ->required()
        ->check(CLI::IsMember({"seal", "file"}));

    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
        app.exit(e, io.out, io.err);  // --help, --version
        return kExitOk;
      }
      std::string what = e.what();
      std::vector<std::string> rest = app.remaining();
      bool named_subcommand = false;
      for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        for (const CLI::App* sub : {hash, init, list, pool_cmd, backup, restore, assertion, whoami, audit_cmd, secret_cmd, deleted_cmd, key_cmd, lifecycle_cmd, cert_cmd, store_cmd}) named_subcommand |= a == sub->get_name();
      }
      if (!named_subcommand && !rest.empty() && !rest.front().starts_with("-")) {
        what = fmt::format("unknown subcommand {}", Printable(rest.front()));
      } else if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
        // Never echo stray arguments: one may be a secret given where stdin was meant.
        what =
            "unexpected arguments (not shown; a secret goes on stdin, never on the command line)";
      }
      io.err << "vaultp11: " << what << "\nRun with --help for more information.\n";
      return kExitUsage;
    }

    Status st;
    if (hash->parsed()) {
      st = HashSecretCommand(io, cost);
    } else if (audit_verify->parsed() || audit_purge->parsed() || audit_tail->parsed()) {
      // The audit files can be checked without a config; the head, the purge and the default
      // files need one. A config given with --config must load.
      const bool config_needed = !config_path.empty() || audit_purge->parsed() ||
                                 (audit_verify->parsed() && audit_files.empty()) ||
                                 (audit_tail->parsed() && tail_opts.file.empty());
      std::optional<config::Config> cfg;
      if (!audit_tail->parsed() || tail_opts.file.empty()) {
        auto loaded = config::LoadFile(config::ResolvePath(config_path.empty() ? nullptr : config_path.c_str()));
        if (loaded.ok()) {
          cfg = std::move(loaded).value();
        } else if (config_needed) {
          st = loaded.status();
        }
      }
      if (st.ok() && audit_verify->parsed()) {
        st = AuditVerifyCommand(audit_files, cfg ? &*cfg : nullptr, io);
      } else if (st.ok() && audit_purge->parsed()) {
        st = AuditPurgeCommand(*cfg, purge_opts, io);
      } else if (st.ok()) {
        st = AuditTailCommand(cfg ? &*cfg : nullptr, tail_opts, io);
      }
    } else {
      std::string path = config::ResolvePath(config_path.empty() ? nullptr : config_path.c_str());
      auto cfg = config::LoadFile(path);
      if (!cfg.ok()) {
        st = cfg.status();
      } else if (init->parsed()) {
        st = InitCommand(cfg.value(), io.out);
      } else if (store_migrate->parsed()) {
        st = StoreMigrateCommand(cfg.value(), migrate_opts, io);
      } else if (store_check->parsed()) {
        st = StoreCheckCommand(cfg.value(), io);
      } else if (list->parsed()) {
        st = ListCommand(cfg.value(), list_opts, io.out);
      } else if (pool_init->parsed()) {
        st = PoolInitCommand(cfg.value(), pool_names, io);
      } else if (backup->parsed()) {
        st = BackupCommand(cfg.value(), where, key_name, backup_file, io);
      } else if (restore->parsed()) {
        st = RestoreCommand(cfg.value(), where, backup_file, io);
      } else if (assertion->parsed()) {
        st = AssertionCommand(cfg.value(), assertion_opts, io);
      } else if (whoami->parsed()) {
        if (w_pin->count() > 0) whoami_opts.pin = whoami_pin;
        st = WhoamiCommand(cfg.value(), whoami_opts, io);
      } else if (secret_set->parsed()) {
        st = SecretSetCommand(cfg.value(), set_opts, io);
      } else if (secret_get->parsed()) {
        st = SecretGetCommand(cfg.value(), get_opts, io);
      } else if (secret_list->parsed()) {
        st = SecretListCommand(cfg.value(), slist_opts, io);
      } else if (secret_delete->parsed()) {
        st = SecretDeleteCommand(cfg.value(), del_vault, del_name, io);
      } else if (cert_create->parsed()) {
        st = CertCreateCommand(cfg.value(), create_opts, io);
      } else if (cert_csr->parsed()) {
        st = CertCsrCommand(cfg.value(), csr_opts, io);
      } else if (cert_cancel->parsed()) {
        st = CertCancelCommand(cfg.value(), cancel_vault, cancel_name, io);
      } else if (cert_merge->parsed()) {
        st = CertMergeCommand(cfg.value(), merge_vault, merge_name, merge_file, io);
      } else if (cert_renew->parsed()) {
        st = CertRenewCommand(cfg.value(), renew_vault, renew_name, io);
      } else if (cert_import->parsed()) {
        st = CertImportCommand(cfg.value(), import_opts, io);
      } else if (key_rotate->parsed()) {
        st = KeyRotateCommand(cfg.value(), rot_where, rot_name, io);
      } else if (key_policy->parsed()) {
        policy_opts.set = o_clear->count() > 0 || o_after->count() > 0 || o_before->count() > 0 || o_notify->count() > 0 ||
                          o_expiry->count() > 0;
        auto days = [&](CLI::Option* o, const std::string& text, int& out) -> Status {
          if (o->count() == 0) return OkStatus();
          VAULTP11_ASSIGN_OR_RETURN(out, ParseDays(text));
          return OkStatus();
        };
        st = days(o_after, rotate_after, policy_opts.policy.rotate_after_days);
        if (st.ok()) st = days(o_before, rotate_before, policy_opts.policy.rotate_before_expiry_days);
        if (st.ok()) st = days(o_notify, notify_before, policy_opts.policy.notify_before_expiry_days);
        if (st.ok()) st = days(o_expiry, expiry_after, policy_opts.policy.expiry_days);
        if (st.ok()) st = KeyPolicyCommand(cfg.value(), policy_opts, io);
      } else if (lifecycle_run->parsed()) {
        if (!life_at.empty()) {
          auto at = ParseUtcTime(life_at, false);
          if (at.ok()) life_opts.at = *at; else st = at.status();
        }
        if (st.ok()) st = LifecycleRunCommand(cfg.value(), life_opts, io);
      } else if (deleted_list->parsed()) {
        st = DeletedListCommand(cfg.value(), deleted_opts, io);
      } else if (deleted_recover->parsed()) {
        st = DeletedRecoverCommand(cfg.value(), deleted_opts, io);
      } else if (deleted_purge->parsed()) {
        st = DeletedPurgeCommand(cfg.value(), deleted_opts, io);
      } else if (store_reseal->parsed()) {
        st = StoreResealCommand(cfg.value(), reseal_to, io);
      }
    }
    io.out << std::flush;
    if (!st.ok()) {
      io.err << "vaultp11: " << st.error().message << "\n";
      return kExitFailed;
    }
    return kExitOk;
  } catch (const std::exception& e) {
    io.err << "vaultp11: internal error: " << e.what() << "\n";
    return kExitFailed;
  } catch (...) {
    io.err << "vaultp11: internal error\n";
    return kExitFailed;
  }
}

}  // namespace vaultp11::cli
