#include "util/file_check.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>

#include "matchers.h"
#include "temp_dir.h"

namespace vaultp11 {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using vaultp11::testing::TempDir;

constexpr uid_t kOtherUid = 4242;  // used only by the tests that run as root

void WriteFile(const std::string& path, mode_t mode) {
  std::ofstream(path) << "content\n";
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;
}

void MakeDir(const std::string& path, mode_t mode) {
  ASSERT_EQ(mkdir(path.c_str(), 0700), 0) << path;
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;  // chmod is not subject to the umask
}

void Symlink(const std::string& target, const std::string& link) {
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0) << link;
}

std::string Msg(const Status& s) { return s.ok() ? "" : s.error().message; }

// Sets kInsecurePermissionsEnv for its lifetime.
class ScopedEscape {
 public:
  explicit ScopedEscape(const char* value) { setenv(kInsecurePermissionsEnv, value, 1); }
  ~ScopedEscape() { unsetenv(kInsecurePermissionsEnv); }
};

class FileCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    if (const char* v = std::getenv(kInsecurePermissionsEnv)) saved_env_ = v;
    unsetenv(kInsecurePermissionsEnv);
    // The tests that expect acceptance need $TMPDIR itself to be safe. Check its ancestors
    // independently of the code under test, and skip rather than fail if they are not.
    char real[PATH_MAX];
    ASSERT_NE(realpath(dir_.path().c_str(), real), nullptr);
    root_ = real;  // expected messages name real paths
    std::string p = root_;
    while (true) {
      size_t slash = p.rfind('/');
      p = slash == 0 ? "/" : p.substr(0, slash);
      struct stat st {};
      ASSERT_EQ(stat(p.c_str(), &st), 0) << p;
      bool owner_ok = st.st_uid == 0 || st.st_uid == geteuid();
      bool mode_ok = (st.st_mode & 022) == 0 || (st.st_mode & S_ISVTX) != 0;
      if (!owner_ok || !mode_ok) {
        GTEST_SKIP() << "temporary directory " << dir_.path() << " is under " << p
                     << ", which others can modify; set TMPDIR to a safe directory";
      }
      if (p == "/") break;
    }
  }
  void TearDown() override {
    if (saved_env_) {
      setenv(kInsecurePermissionsEnv, saved_env_->c_str(), 1);
    } else {
      unsetenv(kInsecurePermissionsEnv);
    }
  }

  static bool IsRoot() { return geteuid() == 0; }
  std::string File(const std::string& name) const { return root_ + "/" + name; }

  TempDir dir_;
  std::string root_;
  std::optional<std::string> saved_env_;
};

TEST_F(FileCheckTest, AcceptsFilesOnlyTheOwnerCanWrite) {
  for (mode_t mode : {0600, 0644, 0640, 0400, 0444, 0700, 0755}) {
    std::string f = File(fmt::format("f{:o}", mode));
    WriteFile(f, mode);
    SCOPED_TRACE(fmt::format("mode {:o}", mode));
    std::string warning = "stale";
    EXPECT_OK(CheckNotWritableByOthers(f, "config file", &warning));
    EXPECT_THAT(warning, IsEmpty());
  }
}

class WritableModeTest : public FileCheckTest, public ::testing::WithParamInterface<mode_t> {};

TEST_P(WritableModeTest, IsRefusedWithModeAndFix) {
  std::string f = File("config.yaml");
  WriteFile(f, GetParam());
  Status s = CheckNotWritableByOthers(f, "config file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(Msg(s), AllOf(HasSubstr("refusing config file " + f + ":"),
                            HasSubstr(fmt::format("(mode {:04o};", GetParam())),
                            HasSubstr("chmod go-w " + f)));
}

INSTANTIATE_TEST_SUITE_P(Modes, WritableModeTest,
                         ::testing::Values(0664, 0666, 0620, 0602, 0622, 0660, 0777),
                         [](const auto& info) { return fmt::format("m{:04o}", info.param); });

TEST_F(FileCheckTest, RefusalMessageIsExact) {
  std::string f = File("pin");
  WriteFile(f, 0664);
  Status s = CheckNotWritableByOthers(f, "hsm hsm-a: pin_file");
  EXPECT_EQ(Msg(s), "refusing hsm hsm-a: pin_file " + f +
                        ": it could be modified by users other than its owner and root: file " + f +
                        " is writable by group or others (mode 0664; fix: chmod go-w " + f + ")");
}

TEST_F(FileCheckTest, RefusesGroupWritableParentDirectory) {
  std::string d = File("conf");
  MakeDir(d, 0775);
  std::string f = d + "/config.yaml";
  WriteFile(f, 0600);
  Status s = CheckNotWritableByOthers(f, "config file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(Msg(s),
              AllOf(HasSubstr("directory " + d + " is writable by group or others"),
                    HasSubstr("without the sticky bit"), HasSubstr("(mode 0775;"),
                    HasSubstr("chmod go-w " + d + ")"), Not(HasSubstr("file " + f + " is"))));
}

TEST_F(FileCheckTest, RefusesWorldWritableParentWithoutStickyBit) {
  std::string d = File("conf");
  MakeDir(d, 0777);
  WriteFile(d + "/config.yaml", 0600);
  Status s = CheckNotWritableByOthers(d + "/config.yaml", "config file");
  EXPECT_THAT(Msg(s), HasSubstr("directory " + d + " is writable by group or others"));
  EXPECT_THAT(Msg(s), HasSubstr("(mode 0777;"));
}

TEST_F(FileCheckTest, RefusesWritableDirectoryHigherUp) {
  std::string a = File("a");
  MakeDir(a, 0770);
  MakeDir(a + "/b", 0755);
  MakeDir(a + "/b/c", 0700);
  std::string f = a + "/b/c/jwks.json";
  WriteFile(f, 0644);
  Status s = CheckNotWritableByOthers(f, "JWKS file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(Msg(s), AllOf(HasSubstr("directory " + a + " is writable"), HasSubstr("(mode 0770;"),
                            Not(HasSubstr("directory " + a + "/b"))));
}

TEST_F(FileCheckTest, ListsEveryProblem) {
  std::string d = File("conf");
  MakeDir(d, 0775);
  std::string f = d + "/config.yaml";
  WriteFile(f, 0666);
  Status s = CheckNotWritableByOthers(f, "config file");
  EXPECT_THAT(Msg(s), AllOf(HasSubstr("directory " + d + " is writable"), HasSubstr("(mode 0775;"),
                            HasSubstr("file " + f + " is writable"), HasSubstr("(mode 0666;")));
}

TEST_F(FileCheckTest, AcceptsStickyWritableParent) {
  for (mode_t mode : {01777, 01770, 01775}) {
    std::string d = File(fmt::format("shared{:o}", mode));
    MakeDir(d, mode);
    WriteFile(d + "/cert.pem", 0644);
    SCOPED_TRACE(fmt::format("mode {:o}", mode));
    EXPECT_OK(CheckNotWritableByOthers(d + "/cert.pem", "certificate file"));
  }
}

TEST_F(FileCheckTest, StickyParentDoesNotExcuseAWritableFile) {
  std::string d = File("shared");
  MakeDir(d, 01777);
  WriteFile(d + "/cert.pem", 0646);
  EXPECT_THAT(Msg(CheckNotWritableByOthers(d + "/cert.pem", "certificate file")),
              HasSubstr("(mode 0646;"));
}

TEST_F(FileCheckTest, AcceptsSymlinkToGoodFile) {
  WriteFile(File("real.yaml"), 0600);
  Symlink(File("real.yaml"), File("abs-link"));
  Symlink("real.yaml", File("rel-link"));
  Symlink("rel-link", File("chain"));
  MakeDir(File("sub"), 0700);
  Symlink("../real.yaml", File("sub/up-link"));
  for (const char* name : {"abs-link", "rel-link", "chain", "sub/up-link"}) {
    SCOPED_TRACE(name);
    EXPECT_OK(CheckNotWritableByOthers(File(name), "config file"));
  }
  EXPECT_OK(CheckNotWritableByOthers(File("sub/../sub/./up-link"), "config file"));
}

TEST_F(FileCheckTest, RefusesSymlinkToWritableFileNamingTheRealFile) {
  std::string real = File("real.yaml");
  WriteFile(real, 0664);
  std::string link = File("link");
  Symlink("real.yaml", link);
  Status s = CheckNotWritableByOthers(link, "config file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(Msg(s), AllOf(HasSubstr("refusing config file " + link + ":"),
                            HasSubstr("file " + real + " is writable"), HasSubstr("(mode 0664;"),
                            HasSubstr("chmod go-w " + real + ")")));
}

TEST_F(FileCheckTest, RefusesSymlinkIntoWritableDirectory) {
  std::string d = File("open");
  MakeDir(d, 0775);
  WriteFile(d + "/real.yaml", 0600);
  Symlink(d + "/real.yaml", File("link"));
  EXPECT_THAT(Msg(CheckNotWritableByOthers(File("link"), "config file")),
              HasSubstr("directory " + d + " is writable"));
}

TEST_F(FileCheckTest, RefusesSymlinkKeptInWritableDirectory) {
  // The file and its directory are fine, but whoever can write the directory holding the
  // symlink can point it elsewhere.
  WriteFile(File("real.yaml"), 0600);
  std::string d = File("open");
  MakeDir(d, 0770);
  Symlink(File("real.yaml"), d + "/link");
  Status s = CheckNotWritableByOthers(d + "/link", "config file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(Msg(s), HasSubstr("directory " + d + " is writable"));
  // Same through a symlinked directory.
  MakeDir(File("good"), 0700);
  WriteFile(File("good/pin"), 0600);
  Symlink(File("good"), d + "/dirlink");
  EXPECT_THAT(Msg(CheckNotWritableByOthers(d + "/dirlink/pin", "pin file")),
              HasSubstr("directory " + d + " is writable"));
}

TEST_F(FileCheckTest, MissingFileIsRefused) {
  std::string f = File("absent.yaml");
  Status s = CheckNotWritableByOthers(f, "config file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_EQ(Msg(s), "cannot read config file " + f + ": No such file or directory");
  EXPECT_EQ(Msg(CheckNotWritableByOthers(File("no/such"), "config file")),
            "cannot read config file " + File("no/such") + ": No such file or directory");
  EXPECT_EQ(Msg(CheckNotWritableByOthers("", "config file")),
            "cannot read config file : No such file or directory");
}

TEST_F(FileCheckTest, DanglingSymlinkIsRefused) {
  Symlink("absent.yaml", File("link"));
  EXPECT_EQ(Msg(CheckNotWritableByOthers(File("link"), "config file")),
            "cannot read config file " + File("link") + ": No such file or directory");
}

TEST_F(FileCheckTest, SymlinkLoopIsRefused) {
  Symlink("b", File("a"));
  Symlink("a", File("b"));
  EXPECT_EQ(Msg(CheckNotWritableByOthers(File("a"), "config file")),
            "cannot read config file " + File("a") + ": Too many levels of symbolic links");
}

TEST_F(FileCheckTest, NonRegularFilesAreRefused) {
  MakeDir(File("d"), 0700);
  Status s = CheckNotWritableByOthers(File("d"), "config file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_EQ(Msg(s), "config file " + File("d") + " is not a regular file");
  Symlink("d", File("dlink"));
  EXPECT_THAT(Msg(CheckNotWritableByOthers(File("dlink"), "config file")),
              HasSubstr("is not a regular file"));
  ASSERT_EQ(mkfifo(File("fifo").c_str(), 0600), 0);
  EXPECT_THAT(Msg(CheckNotWritableByOthers(File("fifo"), "config file")),
              HasSubstr("is not a regular file"));
  EXPECT_THAT(Msg(CheckNotWritableByOthers("/dev/null", "config file")),
              HasSubstr("is not a regular file"));
  // A regular file used as a directory.
  WriteFile(File("f"), 0600);
  EXPECT_EQ(Msg(CheckNotWritableByOthers(File("f") + "/x", "config file")),
            "cannot read config file " + File("f") + "/x: Not a directory");
  EXPECT_THAT(Msg(CheckNotWritableByOthers(File("f") + "/.", "config file")),
              HasSubstr("Not a directory"));
}

TEST_F(FileCheckTest, RelativePathsAreResolvedFromTheCurrentDirectory) {
  char old_cwd[PATH_MAX];
  ASSERT_NE(getcwd(old_cwd, sizeof(old_cwd)), nullptr);
  WriteFile(File("good"), 0600);
  WriteFile(File("bad"), 0666);
  ASSERT_EQ(chdir(root_.c_str()), 0);
  Status good = CheckNotWritableByOthers("good", "config file");
  Status good_dot = CheckNotWritableByOthers("./good", "config file");
  Status bad = CheckNotWritableByOthers("bad", "config file");
  ASSERT_EQ(chdir(old_cwd), 0);
  EXPECT_OK(good);
  EXPECT_OK(good_dot);
  EXPECT_THAT(Msg(bad), HasSubstr("refusing config file bad:"));
  char real[PATH_MAX];
  ASSERT_NE(realpath(File("bad").c_str(), real), nullptr);
  EXPECT_THAT(Msg(bad), HasSubstr(std::string("chmod go-w ") + real + ")"));
}

TEST_F(FileCheckTest, EscapeVariableTurnsRefusalIntoWarning) {
  std::string d = File("conf");
  MakeDir(d, 0775);
  std::string f = d + "/config.yaml";
  WriteFile(f, 0664);
  ScopedEscape escape("1");
  std::string warning;
  EXPECT_OK(CheckNotWritableByOthers(f, "config file", &warning));
  EXPECT_THAT(warning, AllOf(HasSubstr("config file " + f), HasSubstr("(mode 0664;"),
                             HasSubstr("chmod go-w " + f), HasSubstr("(mode 0775;"),
                             HasSubstr("chmod go-w " + d), HasSubstr(kInsecurePermissionsEnv)));
  // Without an out-parameter it is still accepted.
  EXPECT_OK(CheckNotWritableByOthers(f, "config file"));
  // A later good check clears the warning.
  WriteFile(File("good"), 0600);
  EXPECT_OK(CheckNotWritableByOthers(File("good"), "config file", &warning));
  EXPECT_THAT(warning, IsEmpty());
}

TEST_F(FileCheckTest, EscapeVariableMustBeExactlyOne) {
  std::string f = File("config.yaml");
  WriteFile(f, 0666);
  for (const char* v : {"0", "", "true", "yes", "11", " 1"}) {
    ScopedEscape escape(v);
    std::string warning;
    EXPECT_THAT(CheckNotWritableByOthers(f, "config file", &warning), RvIs(CKR_FUNCTION_FAILED))
        << '"' << v << '"';
    EXPECT_THAT(warning, IsEmpty());
  }
}

TEST_F(FileCheckTest, EscapeVariableDoesNotExcuseMissingFiles) {
  ScopedEscape escape("1");
  std::string warning;
  EXPECT_EQ(Msg(CheckNotWritableByOthers(File("absent"), "config file", &warning)),
            "cannot read config file " + File("absent") + ": No such file or directory");
  MakeDir(File("d"), 0777);
  EXPECT_THAT(Msg(CheckNotWritableByOthers(File("d"), "config file", &warning)),
              HasSubstr("is not a regular file"));
}

// Ownership: these need root to create files owned by someone else.

TEST_F(FileCheckTest, AcceptsRootOwnedFile) {
  if (!IsRoot()) GTEST_SKIP() << "needs root";
  std::string f = File("pin");
  WriteFile(f, 0600);
  ASSERT_EQ(chown(f.c_str(), 0, 0), 0);
  EXPECT_OK(CheckNotWritableByOthers(f, "pin file"));
}

TEST_F(FileCheckTest, RefusesFileOwnedBySomeoneElse) {
  if (!IsRoot()) GTEST_SKIP() << "needs root";
  std::string f = File("pin");
  WriteFile(f, 0600);
  ASSERT_EQ(chown(f.c_str(), kOtherUid, 0), 0);
  Status s = CheckNotWritableByOthers(f, "pin file");
  EXPECT_THAT(s, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(Msg(s), AllOf(HasSubstr("file " + f + " is owned by uid 4242, not by root"),
                            HasSubstr("chown 0 " + f)));
}

TEST_F(FileCheckTest, RefusesDirectoryOwnedBySomeoneElse) {
  if (!IsRoot()) GTEST_SKIP() << "needs root";
  std::string d = File("conf");
  MakeDir(d, 0755);
  WriteFile(d + "/pin", 0600);
  ASSERT_EQ(chown(d.c_str(), kOtherUid, 0), 0);
  EXPECT_THAT(Msg(CheckNotWritableByOthers(d + "/pin", "pin file")),
              HasSubstr("directory " + d + " is owned by uid 4242"));
}

TEST_F(FileCheckTest, RefusesStickyDirectoryOwnedBySomeoneElse) {
  if (!IsRoot()) GTEST_SKIP() << "needs root";
  std::string d = File("shared");
  MakeDir(d, 01777);
  WriteFile(d + "/pin", 0600);
  ASSERT_EQ(chown(d.c_str(), kOtherUid, 0), 0);
  EXPECT_THAT(Msg(CheckNotWritableByOthers(d + "/pin", "pin file")),
              HasSubstr("directory " + d + " is owned by uid 4242"));
}

TEST_F(FileCheckTest, RefusesSymlinkOwnedBySomeoneElse) {
  if (!IsRoot()) GTEST_SKIP() << "needs root";
  // In a sticky directory the symlink's owner can replace it.
  std::string d = File("shared");
  MakeDir(d, 01777);
  WriteFile(File("pin"), 0600);
  Symlink(File("pin"), d + "/link");
  ASSERT_EQ(lchown((d + "/link").c_str(), kOtherUid, 0), 0);
  EXPECT_THAT(Msg(CheckNotWritableByOthers(d + "/link", "pin file")),
              HasSubstr("symlink " + d + "/link is owned by uid 4242"));
}

}  // namespace
}  // namespace vaultp11
