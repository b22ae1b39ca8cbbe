// `vaultp11 store reseal --to seal|file`: moves the store's root key between the master key
// file and the HSM seal (store::Store::Reseal), keeping the audit file sinks verifiable.
#include <nlohmann/json.hpp>

#include "audit/file_sink.h"
#include "cli/audit_trail.h"
#include "cli/commands.h"
#include "store/store.h"

namespace vaultp11::cli {

Status StoreResealCommand(const config::Config& cfg, const std::string& to, Io& io) {
  const bool to_seal = to == "seal";
  if (!to_seal && to != "file") return Err(CKR_ARGUMENTS_BAD, "--to must be seal or file");
  if (!cfg.store.sealed() || cfg.store.master_key_file.empty())
    return Err(CKR_ARGUMENTS_BAD,
               "store reseal moves the root key between store.master_key_file and store.seal: {} must name both "
               "while it runs; nothing changed",
               cfg.source);
  VAULTP11_ASSIGN_OR_RETURN(auto st, store::Store::Open(cfg.store, /*create_if_missing=*/false));
  const store::Store::RootInfo before = st->Root();
  if (before.sealed == to_seal)
    return Err(CKR_ARGUMENTS_BAD, "{} is on {} already; nothing changed", st->name(), before.source);
  VAULTP11_RETURN_IF_ERROR(st->CheckRootKey());
  VAULTP11_RETURN_IF_ERROR(OperatorAudit::CheckSinks(cfg, {}));

  // The audit file sinks' heads are signed with a key derived from the root key: each must
  // verify under the current one now (a broken or forged log is not re-signed), and is
  // re-signed under the new one after the move.
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes old_head_key, st->DeriveKey("audit-head"));
  std::vector<std::string> sinks;
  for (const config::AuditSinkConfig& s : cfg.audit.sinks) {
    if (s.type != "file") continue;
    auto v = audit::VerifySink(s.path, &old_head_key);
    if (!v.ok()) return Err(v.rv(), "audit file sink {}: {}; nothing changed", s.path, v.error().message);
    if (!v->intact)
      return Err(CKR_SIGNATURE_INVALID,
                 "audit file sink {} does not verify ({}: {}); nothing changed (see `vaultp11 audit verify`)", s.path,
                 v->where, v->problem);
    sinks.push_back(s.path);
  }

  auto moved = st->Reseal(to_seal ? store::Store::SealTarget::kSeal : store::Store::SealTarget::kFile);
  nlohmann::json props = {{"from", before.source}, {"to", to}, {"store", st->name()}};
  if (moved.ok()) {
    props["generation"] = moved->generation;
    props["vaults"] = moved->vaults;
    props["auditAnchors"] = moved->anchors;
  }
  Status result = moved.status();
  std::vector<std::string> resign_problems;
  if (moved.ok()) {
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes new_head_key, st->DeriveKey("audit-head"));
    for (const std::string& path : sinks) {
      auto r = audit::ResignHead(path, old_head_key, new_head_key);
      if (!r.ok()) resign_problems.push_back(r.error().message);
    }
  }
  // Recorded with the head key of the store as it is now.
  auto audit = OperatorAudit::Open(cfg, moved.ok() ? "the store was resealed" : "nothing changed");
  if (audit.ok()) audit->Record("StoreReseal", result, props);
  if (!moved.ok()) return moved.status();

  io.out << fmt::format("{}: root key moved from {} to {} (generation {}): {} vault data key{} re-wrapped, {} audit "
                        "anchor{} re-MACed\n",
                        st->name(), before.source, moved->source, moved->generation, moved->vaults,
                        moved->vaults == 1 ? "" : "s", moved->anchors, moved->anchors == 1 ? "" : "s");
  for (const std::string& path : sinks) io.out << fmt::format("audit file sink {}: head re-signed\n", path);
  if (to_seal) {
    io.out << fmt::format(
        "the master key file {} no longer opens the store: delete it on every host, remove store.master_key_file "
        "from every host's config, and restart every process using the store\n",
        cfg.store.master_key_file);
  } else {
    io.out << fmt::format(
        "the new root key is in {}: copy it (mode 0600) to the same path on every host, remove store.seal from "
        "every host's config, and restart every process using the store\n",
        cfg.store.master_key_file);
  }
  if (!audit.ok()) return Err(audit.rv(), "the store was resealed, but: {}", audit.error().message);
  if (!resign_problems.empty())
    return Err(CKR_FUNCTION_FAILED, "the store was resealed, but re-signing audit heads failed: {}",
               fmt::join(resign_problems, "; "));
  return OkStatus();
}

}  // namespace vaultp11::cli
