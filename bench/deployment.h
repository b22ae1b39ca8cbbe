// Shared by the benchmark programs: loading a PKCS#11 module, and the config of a benchmark
// deployment.
#pragma once

#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <fstream>
#include <span>
#include <string>

#include "auth/secret_hash.h"

namespace vaultp11::bench {

// The function list of the PKCS#11 library at `path` (loaded for good, its symbols kept local);
// null when it cannot be loaded.
inline CK_FUNCTION_LIST* LoadModule(const char* path) {
  void* h = path != nullptr ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : nullptr;
  auto gfl = h != nullptr ? reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList")) : nullptr;
  CK_FUNCTION_LIST* f = nullptr;
  if (gfl == nullptr || gfl(&f) != CKR_OK) return nullptr;
  return f;
}

// The PIN of the benchmarks' principal b (client secret "bench-secret").
inline const std::string kPin = "b:bench-secret";

// Writes `dir`/c.yaml and returns its path: the store in `dir`, the audit sinks `audit_sinks`
// (a YAML flow list), `top` (more top-level YAML: hsms, pools), the vault `vault` (a YAML flow
// map named bench), and principal b, Key Vault Administrator on vault bench plus `roles` (more
// role_assignments list items).
inline std::string WriteConfig(const std::string& dir, const std::string& audit_sinks = "[]",
                               const std::string& vault = "{ name: bench }", const std::string& top = "",
                               const std::string& roles = "") {
  const std::string secret = "bench-secret";
  auto hash = auth::HashSecret(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()), {10, 8, 1});
  const std::string path = dir + "/c.yaml";
  std::ofstream(path) << "log: { level: error }\nstore: { path: " << dir << "/store.db }\naudit: { sinks: "
                      << audit_sinks << " }\n" << top << "vaults: [ " << vault << " ]\n"
                      << "principals:\n  - name: b\n    auth: client_secret\n    secrets: [ { hash: \""
                      << (hash.ok() ? hash.value() : std::string()) << "\" } ]\n"
                      << "role_assignments:\n  - { principal: b, role: Key Vault Administrator, scope: /vaults/bench }\n"
                      << roles;
  return path;
}

}  // namespace vaultp11::bench
