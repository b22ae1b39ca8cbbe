#include "util/file_check.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace vaultp11 {
namespace {

constexpr int kMaxSymlinks = 40;  // Linux's MAXSYMLINKS

std::string Octal(mode_t mode) { return fmt::format("{:04o}", mode & 07777); }

// Appends the non-empty components of `p` to the front of `todo`, keeping their order.
void PushFrontComponents(std::string_view p, std::deque<std::string>& todo) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    if (j > i) parts.emplace_back(p.substr(i, j - i));
    i = j + 1;
  }
  todo.insert(todo.begin(), parts.begin(), parts.end());
}

std::string Join(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

std::string Parent(const std::string& dir) {
  size_t slash = dir.rfind('/');
  return slash == 0 || slash == std::string::npos ? "/" : dir.substr(0, slash);
}

class Checker {
 public:
  Checker(const std::string& path, std::string_view what)
      : path_(path), what_(what), euid_(geteuid()) {}

  Error CannotRead(int err) const {
    return Err(CKR_FUNCTION_FAILED, "cannot read {} {}: {}", what_, path_,
               std::generic_category().message(err));
  }

  bool Trusted(const struct stat& st) const { return st.st_uid == 0 || st.st_uid == euid_; }

  void Owner(std::string_view kind, const std::string& p, const struct stat& st) {
    if (Trusted(st)) return;
    std::string allowed = euid_ == 0 ? "root" : fmt::format("root or uid {}", euid_);
    Add(fmt::format("{} {} is owned by uid {}, not by {} (fix: chown {} {})", kind, p, st.st_uid,
                    allowed, euid_, p));
  }

  void Directory(const std::string& dir, const struct stat& st) {
    Owner("directory", dir, st);
    if ((st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0) {
      Add(fmt::format(
          "directory {} is writable by group or others without the sticky bit (mode {}; fix: "
          "chmod go-w {})",
          dir, Octal(st.st_mode), dir));
    }
  }

  void Symlink(const std::string& link, const struct stat& st) { Owner("symlink", link, st); }

  void File(const std::string& file, const struct stat& st) {
    Owner("file", file, st);
    if ((st.st_mode & 022) != 0) {
      Add(fmt::format("file {} is writable by group or others (mode {}; fix: chmod go-w {})", file,
                      Octal(st.st_mode), file));
    }
  }

  const std::vector<std::string>& problems() const { return problems_; }

 private:
  void Add(std::string problem) {
    // A directory can be traversed twice (through "..", or two symlinks into it).
    if (std::find(problems_.begin(), problems_.end(), problem) == problems_.end())
      problems_.push_back(std::move(problem));
  }

  const std::string& path_;
  std::string_view what_;
  uid_t euid_;
  std::vector<std::string> problems_;
};

}  // namespace

Status CheckNotWritableByOthers(const std::string& path, std::string_view what,
                                std::string* warning) {
  if (warning != nullptr) warning->clear();
  Checker c(path, what);
  if (path.empty()) return c.CannotRead(ENOENT);

  std::deque<std::string> todo;
  PushFrontComponents(path, todo);
  if (path.front() != '/') {
    std::error_code ec;
    std::filesystem::path cwd = std::filesystem::current_path(ec);
    if (ec) return c.CannotRead(ec.value());
    PushFrontComponents(cwd.string(), todo);
  }

  // Invariant: `cur` is a real directory path (no symlinks, no "." or "..") and it and all its
  // ancestors have been checked.
  std::string cur = "/";
  struct stat st {};
  if (lstat("/", &st) != 0) return c.CannotRead(errno);
  c.Directory("/", st);

  int links = 0;
  bool is_file = false;  // the last component resolved to a regular file
  while (!todo.empty()) {
    std::string comp = std::move(todo.front());
    todo.pop_front();
    if (is_file) return c.CannotRead(ENOTDIR);  // "file/..." or "file/."
    if (comp == ".") continue;
    if (comp == "..") {
      cur = Parent(cur);
      continue;
    }
    std::string next = Join(cur, comp);
    if (lstat(next.c_str(), &st) != 0) return c.CannotRead(errno);
    if (S_ISLNK(st.st_mode)) {
      if (++links > kMaxSymlinks) return c.CannotRead(ELOOP);
      c.Symlink(next, st);
      std::error_code ec;
      std::string target = std::filesystem::read_symlink(next, ec).string();
      if (ec) return c.CannotRead(ec.value());
      if (target.empty()) return c.CannotRead(ENOENT);
      if (target.front() == '/') cur.assign(1, '/');  // (not `= "/"`: GCC 12 -Wrestrict false positive)
      PushFrontComponents(target, todo);
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      c.Directory(next, st);
      cur = std::move(next);
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      if (!todo.empty()) return c.CannotRead(ENOTDIR);
      return Err(CKR_FUNCTION_FAILED, "{} {} is not a regular file", what, path);
    }
    c.File(next, st);
    is_file = true;
  }
  if (!is_file) return Err(CKR_FUNCTION_FAILED, "{} {} is not a regular file", what, path);

  if (c.problems().empty()) return OkStatus();
  std::string details;
  for (const std::string& p : c.problems()) details += (details.empty() ? "" : "; ") + p;
  const char* escape = std::getenv(kInsecurePermissionsEnv);
  if (escape != nullptr && std::strcmp(escape, "1") == 0) {
    if (warning != nullptr) {
      *warning = fmt::format(
          "{} {} could be modified by users other than its owner and root: {} (accepted only "
          "because {}=1 is set, which is meant for test suites)",
          what, path, details, kInsecurePermissionsEnv);
    }
    return OkStatus();
  }
  return Err(CKR_FUNCTION_FAILED,
             "refusing {} {}: it could be modified by users other than its owner and root: {}",
             what, path, details);
}

}  // namespace vaultp11
