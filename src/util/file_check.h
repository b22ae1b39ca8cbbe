// Refusing files the module trusts (config, PIN files, JWKS, certificates) when someone other
// than their owner and root could modify them.
#pragma once

#include <string>
#include <string_view>

#include "util/result.h"

namespace vaultp11 {

// Environment variable that, when set to exactly "1", turns permission refusals from
// CheckNotWritableByOthers into warnings. For test suites only (fixtures in shared or
// group-writable directories); never set it in production.
inline constexpr char kInsecurePermissionsEnv[] = "VAULTP11_INSECURE_CONFIG_PERMISSIONS";

// Checks that `path` names a regular file (after following symlinks) that nobody but its owner
// and root can modify, by changing its content or by replacing it or any directory on the way
// to it. `path` is resolved one component at a time, as the kernel does (relative paths from
// the current directory, symlinks followed, at most 40), and the rule is, with euid the
// process's effective uid and "trusted" meaning owned by uid 0 or by euid:
//   - the file must be trusted and must not be group- or world-writable (mode & 022 == 0);
//   - every directory traversed, from "/" down to the file's real directory, including
//     directories that only hold a symlink being followed, must be trusted, and must not be
//     group- or world-writable unless it has the sticky bit (S_ISVTX, like /tmp);
//   - every symlink followed must be trusted (in a sticky directory its owner could replace it).
// Directories reached with ".." are ancestors of one already checked and are not checked again.
//
// Errors, all CKR_FUNCTION_FAILED:
//   - a component cannot be looked up or read (missing file, dangling symlink, EACCES, ELOOP,
//     ENOTDIR): "cannot read <what> <path>: <strerror text>";
//   - the final component is not a regular file: "<what> <path> is not a regular file";
//   - the rule above is broken: "refusing <what> <path>: ..." naming every offending file or
//     directory with its mode in octal (e.g. "mode 0664") or its owner, and the fix
//     ("chmod go-w <dir or file>" / "chown <euid> <dir or file>").
// Only the last kind is affected by kInsecurePermissionsEnv: with it set to "1" the function
// returns OkStatus and, if `warning` is not null, stores the description there for the caller
// to log. `warning` is cleared otherwise.
//
// After a successful check only root and the file's owner can change what `path` opens, so
// opening it afterwards by name is not a time-of-check/time-of-use race.
Status CheckNotWritableByOthers(const std::string& path, std::string_view what,
                                std::string* warning = nullptr);

}  // namespace vaultp11
