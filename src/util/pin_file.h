// Reading a PIN kept in a file (HSM user and SO PINs named by the config).
#pragma once

#include <openssl/crypto.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "util/file_check.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11 {

// The file's content without trailing newlines, in cleansed memory. `what` names the file in
// messages (e.g. "hsm hsm-a: pin_file"); the PIN itself never appears in one.
inline Result<SecureString> ReadPinFile(const std::string& path, std::string_view what) {
  std::string warning;
  if (Status st = CheckNotWritableByOthers(path, std::string(what), &warning); !st.ok())
    return Err(CKR_PIN_INCORRECT, "{}", st.error().message);
  FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) return Err(CKR_PIN_INCORRECT, "{}: cannot read {}", what, path);
  SecureString pin;
  char buf[256];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0 && pin.size() < 4096) pin.append(buf, n);
  OPENSSL_cleanse(buf, sizeof(buf));
  std::fclose(f);
  while (!pin.empty() && (pin.back() == '\n' || pin.back() == '\r')) pin.pop_back();
  if (pin.empty()) return Err(CKR_PIN_INCORRECT, "{}: {} is empty", what, path);
  return pin;
}

// An HSM PIN from the environment variable `pin_env` when given, else from `pin_file`. `what`
// names its owner in messages (e.g. "hsm hsm-a").
inline Result<SecureString> ReadPin(std::string_view what, const std::string& pin_env, const std::string& pin_file) {
  if (!pin_env.empty()) {
    const char* v = std::getenv(pin_env.c_str());
    if (v == nullptr) return Err(CKR_PIN_INCORRECT, "{}: environment variable {} is not set", what, pin_env);
    return SecureString(v);
  }
  return ReadPinFile(pin_file, std::string(what) + ": pin_file");
}

}  // namespace vaultp11
