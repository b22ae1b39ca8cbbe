// AbiTest loads the built module with dlopen and reaches it only through CK_FUNCTION_LIST, as a
// consumer does. Each test gets a fresh deployment: config, store and master key in a temp dir.
#pragma once

#include <p11-kit/pkcs11.h>

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "abi/pkcs11_3_0.h"
#include "temp_dir.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::testing {

CK_FUNCTION_LIST* Module();
// The module's default PKCS#11 3.0 function list (C_GetInterface with no name or version), or
// null.
CK_FUNCTION_LIST_3_0* Module30();
// A cheap (test-cost) `vaultp11 hash-secret` line for `secret`.
std::string TestSecretHash(const std::string& secret);

// The secrets of the test principals (login PINs are "<name>:<secret>").
inline constexpr char kAdminPin[] = "app:correct horse";
inline constexpr char kNoRolePin[] = "norole:battery staple";
inline constexpr char kExpiredPin[] = "old:expired secret";

class AbiTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Writes the standard config (vaults payments and archive; principals app (Administrator on
  // payments), norole, old (expired secret)) plus `extra` appended, and returns its path.
  // `top` goes before everything, `archive` is the flow map of the second vault, `principals`
  // (list items) follow the standard principals.
  std::string WriteConfig(const std::string& extra = "", const std::string& top = "",
                          const std::string& archive = "{ name: archive }", const std::string& principals = "");
  // Only loads the module (for fixtures that initialise it with their own deployment).
  void LoadModule();
  CK_RV InitWith(const std::string& config_path);

  CK_SESSION_HANDLE OpenRw(CK_SLOT_ID slot = 0);
  CK_SESSION_HANDLE OpenRo(CK_SLOT_ID slot = 0);
  CK_RV Login(CK_SESSION_HANDLE s, const std::string& pin = kAdminPin);
  CK_SESSION_HANDLE LoggedInRw(CK_SLOT_ID slot = 0);
  // Another application on the same deployment (RunChild): it calls C_Initialize with `config`
  // (empty: config_path), opens a session on slot 0 (read/write unless `read_only`), logs in
  // with kAdminPin, runs `steps` (child_main.cc: gen-ec, gen-ec-version, destroy-label, ...)
  // with that session and calls C_Finalize. Returns its exit status (0: every step succeeded).
  int InAnotherProcess(const std::vector<std::string>& steps, const std::string& config = "",
                       bool read_only = false);
  // Another application that runs `steps` (see child_main.cc) on the deployment `config` (empty:
  // config_path):
  // the abi_child program (VAULTP11_ABI_CHILD), started with posix_spawn, so nothing runs in a
  // forked copy of this threaded process (issue 16 item 13). Returns its exit status (0: every
  // step got what it expected), -1 when it could not start or did not exit normally.
  int RunChild(const std::vector<std::string>& steps, const std::string& config = "");

  // Key generation with the templates pkcs11-tool sends.
  void GenRsa(CK_SESSION_HANDLE s, CK_ULONG bits, const std::string& label, CK_OBJECT_HANDLE* pub,
              CK_OBJECT_HANDLE* priv, bool token = true);
  // new_version: CKA_VAULTP11_NEW_VERSION in the private template (a new version of `label`).
  void GenEc(CK_SESSION_HANDLE s, const std::vector<uint8_t>& params, const std::string& label,
             CK_OBJECT_HANDLE* pub, CK_OBJECT_HANDLE* priv, bool token = true, bool new_version = false);
  CK_OBJECT_HANDLE GenAes(CK_SESSION_HANDLE s, CK_ULONG bytes, const std::string& label, bool token = true,
                          bool extractable = false, bool sensitive = true);

  std::vector<CK_OBJECT_HANDLE> FindByLabel(CK_SESSION_HANDLE s, const std::string& label);
  std::vector<uint8_t> GetAttr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t);
  bool GetBool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t);

  std::vector<uint8_t> Sign(CK_SESSION_HANDLE s, CK_MECHANISM mech, CK_OBJECT_HANDLE key,
                            const std::vector<uint8_t>& data);
  CK_RV Verify(CK_SESSION_HANDLE s, CK_MECHANISM mech, CK_OBJECT_HANDLE key, const std::vector<uint8_t>& data,
               const std::vector<uint8_t>& sig);

  CK_FUNCTION_LIST* f = nullptr;
  TempDir dir;
  std::string config_path;
  bool initialized = false;
};

inline const std::vector<uint8_t> kP256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
inline const std::vector<uint8_t> kP384 = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
inline const std::vector<uint8_t> kP521 = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
inline const std::vector<uint8_t> kSecp256k1 = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a};

inline std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

}  // namespace vaultp11::testing
