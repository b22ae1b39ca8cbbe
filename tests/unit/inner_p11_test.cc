// Tests of the inner PKCS#11 driver: InnerModule (loading, registry, quirks, fork), InnerToken
// (token lookup, login, session pool, typed calls) and the inner ops, against real SoftHSMv2
// tokens, with signatures verified in-process by the OpenSSL backend; plus a mock inner module
// for the paths SoftHSM cannot show (C_GetInterface, NULL entries, failing C_Initialize).
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_module.h"
#include "backend/p11/inner_ops.h"
#include "backend/p11/inner_token.h"
#include "matchers.h"
#include "softhsm_fixture.h"
#include "temp_dir.h"

namespace vaultp11::p11 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using vaultp11::testing::SoftHsmEnvironment;
using vaultp11::testing::SoftHsmFixture;
using vaultp11::testing::TempDir;

constexpr char kAlphaPin[] = "alpha-pin-4821";
constexpr char kBetaPin[] = "beta-pin-3307";
constexpr char kGammaPin[] = "gamma-pin-9154";

[[maybe_unused]] ::testing::Environment* const kSoftHsm =
    ::testing::AddGlobalTestEnvironment(new SoftHsmEnvironment({
        {"alpha", kAlphaPin, "alpha-so-7730"},
        {"beta", kBetaPin, "beta-so-1187"},
        {"gamma", kGammaPin, "gamma-so-5512"},  // only ever sees a wrong PIN
        {"dup", "dup-pin-0001", "dup-so-0001"},
        {"dup", "dup-pin-0002", "dup-so-0002"},
    }));

const uint8_t kP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const uint8_t kF4[] = {0x01, 0x00, 0x01};

Quirks SoftHsmQuirks() {
  Quirks q;
  q.no_deinit = true;
  return q;
}

Bytes Data(size_t n, uint8_t seed = 7) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 13);
  return b;
}

template <typename A, typename B>
bool Same(const A& a, const B& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// Runs fn in a forked child and returns its exit status (fn's result), or -1. The child leaves
// with _exit so no test-environment cleanup runs there.
int InChild(const std::function<int()>& fn) {
  fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) _exit(fn());
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// ---- key helpers ------------------------------------------------------------------------------

Result<KeyPairHandles> GenRsa(const InnerToken& t, const std::string& label, CK_ULONG bits = 2048) {
  AttrTemplate pub, priv;
  pub.Bool(CKA_TOKEN, true)
      .Ulong(CKA_MODULUS_BITS, bits)
      .Data(CKA_PUBLIC_EXPONENT, kF4)
      .Bool(CKA_VERIFY, true)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_WRAP, true)
      .Str(CKA_LABEL, label)
      .Str(CKA_ID, label);
  priv.Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_SIGN, true)
      .Bool(CKA_DECRYPT, true)
      .Bool(CKA_UNWRAP, true)
      .Str(CKA_LABEL, label)
      .Str(CKA_ID, label);
  CK_MECHANISM m{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  return t.GenerateKeyPair(m, pub, priv);
}

Result<KeyPairHandles> GenEc(const InnerToken& t, const std::string& label) {
  AttrTemplate pub, priv;
  pub.Bool(CKA_TOKEN, true)
      .Data(CKA_EC_PARAMS, kP256)
      .Bool(CKA_VERIFY, true)
      .Str(CKA_LABEL, label)
      .Str(CKA_ID, label);
  priv.Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_SIGN, true)
      .Str(CKA_LABEL, label)
      .Str(CKA_ID, label);
  CK_MECHANISM m{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  return t.GenerateKeyPair(m, pub, priv);
}

Result<ossl::KeyRef> RsaPublic(const InnerToken& t, CK_OBJECT_HANDLE pub) {
  const CK_ATTRIBUTE_TYPE types[] = {CKA_MODULUS, CKA_PUBLIC_EXPONENT};
  VAULTP11_ASSIGN_OR_RETURN(AttributeValues a, t.GetAttributes(pub, types));
  VAULTP11_ASSIGN_OR_RETURN(
      ossl::PkeyRef pk,
      ossl::RsaPublicFromComponents(a[CKA_MODULUS].value, a[CKA_PUBLIC_EXPONENT].value));
  return ossl::KeyRef{CKK_RSA, CKO_PUBLIC_KEY, pk, nullptr};
}

Result<ossl::KeyRef> EcPublic(const InnerToken& t, CK_OBJECT_HANDLE pub) {
  const CK_ATTRIBUTE_TYPE types[] = {CKA_EC_PARAMS, CKA_EC_POINT};
  VAULTP11_ASSIGN_OR_RETURN(AttributeValues a, t.GetAttributes(pub, types));
  VAULTP11_ASSIGN_OR_RETURN(ossl::PkeyRef pk,
                            ossl::EcPublicFromPoint(a[CKA_EC_PARAMS].value, a[CKA_EC_POINT].value));
  return ossl::KeyRef{CKK_EC, CKO_PUBLIC_KEY, pk, nullptr};
}

Status VerifyWith(const ossl::KeyRef& key, const CK_MECHANISM& mech, std::span<const uint8_t> data,
                  std::span<const uint8_t> sig) {
  VAULTP11_ASSIGN_OR_RETURN(auto op, ossl::NewVerifyOp(key, mech));
  return op->Verify(data, sig);
}

// Key pairs made once per test binary (token objects; handles stay valid across InnerTokens).
struct SharedKeys {
  KeyPairHandles rsa, ec;
  ossl::KeyRef rsa_pub, ec_pub;
};

// ---- fixtures ---------------------------------------------------------------------------------

// One module and one "alpha" InnerToken for the whole binary, as the outer module keeps them
// from C_Initialize to C_Finalize. This matters: SoftHSMv2 forgets a slot's object handles
// when the slot's last session closes, and the InnerToken's login session keeps them alive.
class InnerTokenTest : public SoftHsmFixture {
 protected:
  void SetUp() override {
    SoftHsmFixture::SetUp();
    if (IsSkipped()) return;
    static std::shared_ptr<InnerModule>& module = *new std::shared_ptr<InnerModule>;
    static std::shared_ptr<InnerToken>& alpha = *new std::shared_ptr<InnerToken>;
    if (!module) {
      auto m = InnerModule::Load(Env().module_path(), SoftHsmQuirks());
      ASSERT_TRUE(m.ok()) << m.error().message;
      module = m.value();
    }
    if (!alpha) {
      auto t = InnerToken::Open(module, "alpha", SecureString(kAlphaPin));
      ASSERT_TRUE(t.ok()) << t.error().message;
      alpha = std::move(t).value();
    }
    module_ = module;
    alpha_ = alpha;
  }

  // The shared RSA-2048 and P-256 key pairs in "alpha".
  const SharedKeys& Keys() {
    static SharedKeys& keys = *new SharedKeys;  // never destroyed: outlives OpenSSL's cleanup
    static bool made = false;
    if (!made) {
      auto rsa = GenRsa(*alpha_, "shared-rsa");
      EXPECT_TRUE(rsa.ok()) << rsa.error().message;
      auto ec = GenEc(*alpha_, "shared-ec");
      EXPECT_TRUE(ec.ok()) << ec.error().message;
      if (rsa.ok() && ec.ok()) {
        keys.rsa = rsa.value();
        keys.ec = ec.value();
        auto rp = RsaPublic(*alpha_, keys.rsa.public_key);
        auto ep = EcPublic(*alpha_, keys.ec.public_key);
        EXPECT_TRUE(rp.ok() && ep.ok());
        if (rp.ok()) keys.rsa_pub = rp.value();
        if (ep.ok()) keys.ec_pub = ep.value();
        made = rp.ok() && ep.ok();
      }
    }
    return keys;
  }

  Result<Bytes> SignOnce(const std::shared_ptr<InnerToken>& t, CK_OBJECT_HANDLE key,
                         const CK_MECHANISM& mech, size_t sig_len, std::span<const uint8_t> data) {
    VAULTP11_ASSIGN_OR_RETURN(auto op, NewInnerSignOp(t, key, mech, sig_len));
    return op->Sign(data);
  }

  std::shared_ptr<InnerModule> module_;
  std::shared_ptr<InnerToken> alpha_;
};

// ---- InnerModule: loading, quirks, registry
// ------------------------------------------------------

TEST(QuirksTest, ParsesKnownNamesAndRejectsOthers) {
  std::vector<std::string> names = {"no-deinit", "fork-finalize"};
  ASSERT_OK_AND_ASSIGN(Quirks q, Quirks::Parse(names));
  EXPECT_TRUE(q.no_deinit);
  EXPECT_TRUE(q.fork_finalize);
  std::vector<std::string> bad = {"no-deinit", "turbo"};
  auto r = Quirks::Parse(bad);
  EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(r.error().message, HasSubstr("turbo"));
}

TEST(InnerModuleTest, MissingModuleIsDeviceErrorNamingThePath) {
  const std::string path = "/nonexistent/vaultp11/libnope-pkcs11.so";
  auto r = InnerModule::Load(path, Quirks{});
  EXPECT_THAT(r, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(r.error().message, HasSubstr(path));
}

TEST(InnerModuleTest, LibraryWithoutFunctionListIsDeviceError) {
  // libcrypto is a real shared library, but no PKCS#11 module.
  Dl_info info{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&EVP_MD_fetch), &info), 0);
  ASSERT_NE(info.dli_fname, nullptr);
  auto r = InnerModule::Load(info.dli_fname, Quirks{});
  EXPECT_THAT(r, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(r.error().message, HasSubstr("C_GetFunctionList"));
  EXPECT_THAT(r.error().message, HasSubstr(info.dli_fname));
}

// Copies of the mock module under other names are separate libraries (own registry entry, own
// dlopen handle, own counters); the test keeps its own handle so counters survive dlclose.
class MockModuleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* p = std::getenv("VAULTP11_MOCK_INNER_MODULE");
    if (p == nullptr || *p == '\0' || access(p, R_OK) != 0)
      GTEST_SKIP() << "VAULTP11_MOCK_INNER_MODULE not set";
    mock_ = p;
  }
  void TearDown() override {
    for (void* h : handles_) dlclose(h);
    unsetenv("MOCK_P11_INIT_RV");
    unsetenv("MOCK_P11_GETINTERFACE_RV");
  }
  std::string Copy(const std::string& name) {
    std::string dst = dir_.file(name);
    std::filesystem::copy_file(mock_, dst, std::filesystem::copy_options::overwrite_existing);
    void* h = dlopen(dst.c_str(), RTLD_NOW | RTLD_LOCAL);
    EXPECT_NE(h, nullptr) << dlerror();
    if (h != nullptr) handles_.push_back(h);
    return dst;
  }
  struct Counts {
    int init = 0, finalize = 0, get_interface = 0, open_sessions = 0;
  };
  Counts CountsOf(const std::string& path) {
    Counts c;
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (h == nullptr) return c;
    using Fn = void (*)(int*, int*, int*, int*);
    auto fn = reinterpret_cast<Fn>(dlsym(h, "mock_p11_counts"));
    if (fn != nullptr) fn(&c.init, &c.finalize, &c.get_interface, &c.open_sessions);
    dlclose(h);
    return c;
  }

  std::string mock_;
  TempDir dir_;
  std::vector<void*> handles_;
};

TEST_F(MockModuleTest, LoadsThroughGetInterface) {
  std::string path = Copy("iface.so");
  ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(path, Quirks{}));
  EXPECT_TRUE(m->via_get_interface());
  EXPECT_EQ(m->function_list_version().major, 3);
  EXPECT_TRUE(m->initialized_by_us());
  EXPECT_EQ(CountsOf(path).get_interface, 1);
  EXPECT_EQ(CountsOf(path).init, 1);
}

TEST_F(MockModuleTest, FallsBackToGetFunctionListWhenGetInterfaceFails) {
  std::string path = Copy("fallback.so");
  setenv("MOCK_P11_GETINTERFACE_RV", "0x6", 1);
  ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(path, Quirks{}));
  EXPECT_FALSE(m->via_get_interface());
  EXPECT_EQ(m->function_list_version().major, 2);
  EXPECT_EQ(m->function_list_version().minor, 40);
}

TEST_F(MockModuleTest, FailingInitializePassesTheInnerRvThrough) {
  std::string path = Copy("initfail.so");
  setenv("MOCK_P11_INIT_RV", "0x30", 1);  // CKR_DEVICE_ERROR
  auto r = InnerModule::Load(path, Quirks{});
  EXPECT_THAT(r, RvIs(CKR_DEVICE_ERROR));
  EXPECT_THAT(r.error().message, HasSubstr(path));
  EXPECT_THAT(r.error().message, HasSubstr("C_Initialize"));
  setenv("MOCK_P11_INIT_RV", "0x6", 1);  // CKR_FUNCTION_FAILED
  EXPECT_THAT(InnerModule::Load(path, Quirks{}), RvIs(CKR_FUNCTION_FAILED));
  unsetenv("MOCK_P11_INIT_RV");
  EXPECT_OK(InnerModule::Load(path, Quirks{}));  // a failed load leaves nothing behind
}

TEST_F(MockModuleTest, AlreadyInitializedIsAcceptedAndNeverFinalized) {
  std::string path = Copy("already.so");
  setenv("MOCK_P11_INIT_RV", "0x191", 1);  // CKR_CRYPTOKI_ALREADY_INITIALIZED
  {
    ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(path, Quirks{}));
    EXPECT_FALSE(m->initialized_by_us());
  }
  EXPECT_EQ(CountsOf(path).finalize, 0);  // another component owns it
}

TEST_F(MockModuleTest, FinalizesOnReleaseUnlessNoDeinit) {
  std::string plain = Copy("plain.so");
  std::string nodeinit = Copy("nodeinit.so");
  {
    ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(plain, Quirks{}));
    ASSERT_OK_AND_ASSIGN(auto again, InnerModule::Load(plain, Quirks{}));
    EXPECT_EQ(m.get(), again.get());
    EXPECT_EQ(CountsOf(plain).init, 1);  // once per process
  }
  EXPECT_EQ(CountsOf(plain).finalize, 1);
  {
    ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(nodeinit, SoftHsmQuirks()));
    EXPECT_TRUE(m->quirks().no_deinit);
  }
  EXPECT_EQ(CountsOf(nodeinit).finalize, 0);
  // Loaded again after release: the module was never finalized, so it reports already
  // initialised, which is accepted.
  ASSERT_OK_AND_ASSIGN(auto m2, InnerModule::Load(nodeinit, SoftHsmQuirks()));
  EXPECT_FALSE(m2->initialized_by_us());
  EXPECT_EQ(CountsOf(nodeinit).init, 2);
}

TEST_F(MockModuleTest, SameLibraryThroughASymlinkIsLoadedOnce) {
  std::string path = Copy("real.so");
  std::string link = dir_.file("link.so");
  std::filesystem::create_symlink(path, link);
  ASSERT_OK_AND_ASSIGN(auto a, InnerModule::Load(path, Quirks{}));
  ASSERT_OK_AND_ASSIGN(auto b, InnerModule::Load(link, Quirks{}));
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(CountsOf(path).init, 1);
}

TEST_F(MockModuleTest, NullFunctionListEntriesAreNotSupportedInsteadOfACrash) {
  std::string path = Copy("nulls.so");
  ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(path, Quirks{}));
  // The mock has no C_Login: a PIN makes Open try it.
  auto with_pin = InnerToken::Open(m, "mock", SecureString("1234"));
  EXPECT_THAT(with_pin, RvIs(CKR_FUNCTION_NOT_SUPPORTED));
  EXPECT_THAT(with_pin.error().message, Not(HasSubstr("1234")));
  // No CKF_LOGIN_REQUIRED and no PIN: no login needed.
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<InnerToken> t,
                       InnerToken::Open(m, "pkcs11:token=mock", SecureString()));
  EXPECT_EQ(t->slot_id(), 7u);
  EXPECT_EQ(t->serial(), "0007");
  CK_MECHANISM mech{CKM_ECDSA, nullptr, 0};
  EXPECT_THAT(NewInnerSignOp(t, 1, mech, 64), RvIs(CKR_FUNCTION_NOT_SUPPORTED));
  const CK_ATTRIBUTE_TYPE types[] = {CKA_LABEL};
  EXPECT_THAT(t->GetAttributes(1, types), RvIs(CKR_FUNCTION_NOT_SUPPORTED));
}

TEST_F(MockModuleTest, ForkedChildGetsAFreshModuleStateAndNewHandlesEpoch) {
  std::string path = Copy("forky.so");
  ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(path, Quirks{}));
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<InnerToken> t, InnerToken::Open(m, "mock", SecureString()));
  { ASSERT_OK_AND_ASSIGN(SessionLease l, t->Acquire()); }
  const uint64_t gen = m->generation(), epoch = m->object_epoch();
  const pid_t parent = getpid();
  int rc = InChild([&] {
    if (!m->ForkedSinceInit()) return 10;
    auto again = InnerModule::Load(path, Quirks{});
    if (!again.ok() || again.value().get() != m.get()) return 11;
    if (m->generation() != gen + 1) return 12;
    if (m->object_epoch() != epoch + 1) return 13;  // the mock reset itself: handles are stale
    if (m->pid() == parent) return 14;
    auto lease = t->Acquire();  // drops the parent's sessions, opens a new one
    if (!lease.ok()) return 15;
    if (t->Stats().opened_total != 2) return 16;
    return 0;
  });
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(m->generation(), gen);  // the parent is untouched
}

// ---- InnerToken: finding and opening tokens ---------------------------------------------------

TEST_F(InnerTokenTest, OpensByLabel) {
  EXPECT_EQ(alpha_->label(), "alpha");
  EXPECT_FALSE(alpha_->serial().empty());
  EXPECT_THAT(alpha_->description(), HasSubstr(Env().module_path()));
  EXPECT_FALSE(module_->via_get_interface());  // SoftHSMv2 2.6 exports C_GetFunctionList only
  EXPECT_TRUE(alpha_->SupportsMechanism(CKM_SHA256_RSA_PKCS));
  EXPECT_TRUE(alpha_->SupportsMechanism(CKM_ECDSA));
  ASSERT_OK_AND_ASSIGN(CK_MECHANISM_INFO info, alpha_->MechanismInfo(CKM_RSA_PKCS_KEY_PAIR_GEN));
  EXPECT_LE(info.ulMinKeySize, 2048u);
}

TEST_F(InnerTokenTest, OpensByPkcs11Uri) {
  ASSERT_OK_AND_ASSIGN(auto beta,
                       InnerToken::Open(module_, "pkcs11:token=beta", SecureString(kBetaPin)));
  EXPECT_EQ(beta->label(), "beta");
  ASSERT_OK_AND_ASSIGN(
      auto full,
      InnerToken::Open(module_,
                       "pkcs11:library-manufacturer=SoftHSM;manufacturer=SoftHSM%20project;"
                       "model=SoftHSM%20v2;token=beta",
                       SecureString(kBetaPin)));
  EXPECT_EQ(full->serial(), beta->serial());
  ASSERT_OK_AND_ASSIGN(
      auto by_serial,
      InnerToken::Open(module_, "pkcs11:serial=" + alpha_->serial(), SecureString(kAlphaPin)));
  EXPECT_EQ(by_serial->label(), "alpha");
  ASSERT_OK_AND_ASSIGN(
      auto by_slot, InnerToken::Open(module_, "pkcs11:slot-id=" + std::to_string(beta->slot_id()),
                                     SecureString(kBetaPin)));
  EXPECT_EQ(by_slot->label(), "beta");
}

TEST_F(InnerTokenTest, UnknownTokenIsTokenNotPresent) {
  for (const std::string spec : {"nope", "pkcs11:token=nope", "pkcs11:token=alpha;serial=0000"}) {
    auto r = InnerToken::Open(module_, spec, SecureString(kAlphaPin));
    EXPECT_THAT(r, RvIs(CKR_TOKEN_NOT_PRESENT)) << spec;
    if (r.ok()) continue;
    EXPECT_THAT(r.error().message, HasSubstr(spec));
    EXPECT_THAT(r.error().message, HasSubstr(Env().module_path()));
    EXPECT_THAT(r.error().message, HasSubstr("'alpha'"));  // lists what is there
    EXPECT_THAT(r.error().message, Not(HasSubstr(kAlphaPin)));
  }
}

TEST_F(InnerTokenTest, BadOrForeignUrisAreRejectedClearly) {
  auto obj = InnerToken::Open(module_, "pkcs11:token=beta;object=key1;type=private",
                              SecureString(kBetaPin));
  EXPECT_THAT(obj, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(obj.error().message, HasSubstr("do not name a token"));
  EXPECT_THAT(InnerToken::Open(module_, "pkcs11:token=%zz", SecureString(kBetaPin)),
              RvIs(CKR_FUNCTION_FAILED));
  // A PIN inside a URI is never echoed back.
  auto pv =
      InnerToken::Open(module_, "pkcs11:token=nope;pin-value=topsecret77", SecureString(kBetaPin));
  EXPECT_THAT(pv, RvIs(CKR_TOKEN_NOT_PRESENT));
  EXPECT_THAT(pv.error().message, Not(HasSubstr("topsecret77")));
}

TEST_F(InnerTokenTest, AmbiguousLabelIsRefused) {
  auto r = InnerToken::Open(module_, "dup", SecureString("dup-pin-0001"));
  EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(r.error().message, HasSubstr("matches 2 tokens"));
  EXPECT_THAT(r.error().message, HasSubstr("serial="));
}

TEST_F(InnerTokenTest, WrongPinIsPinIncorrectAndNeverEchoed) {
  const std::string wrong = "wrong-pin-60417";
  auto r = InnerToken::Open(module_, "gamma", SecureString(wrong.c_str()));
  EXPECT_THAT(r, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(r.error().message, HasSubstr("gamma"));
  EXPECT_THAT(r.error().message, HasSubstr(Env().module_path()));
  EXPECT_THAT(r.error().message, Not(HasSubstr(wrong)));
  EXPECT_THAT(r.error().message, Not(HasSubstr(kGammaPin)));
}

TEST_F(InnerTokenTest, ModuleIsLoadedOncePerProcess) {
  ASSERT_OK_AND_ASSIGN(auto again, InnerModule::Load(Env().module_path(), SoftHsmQuirks()));
  EXPECT_EQ(again.get(), module_.get());
}

// ---- keys and attributes ----------------------------------------------------------------------

TEST_F(InnerTokenTest, RsaKeyPairPrivatePartsAreSensitive) {
  const SharedKeys& k = Keys();
  ASSERT_NE(k.rsa.private_key, CK_INVALID_HANDLE);
  const CK_ATTRIBUTE_TYPE types[] = {CKA_PRIVATE_EXPONENT, CKA_PRIME_1,     CKA_MODULUS,
                                     CKA_SENSITIVE,        CKA_EXTRACTABLE, CKA_EC_POINT,
                                     CKA_WRAP_TEMPLATE};
  ASSERT_OK_AND_ASSIGN(AttributeValues a, alpha_->GetAttributes(k.rsa.private_key, types));
  EXPECT_EQ(a[CKA_PRIVATE_EXPONENT].rv, CKR_ATTRIBUTE_SENSITIVE);
  EXPECT_TRUE(a[CKA_PRIVATE_EXPONENT].value.empty());
  EXPECT_EQ(a[CKA_PRIME_1].rv, CKR_ATTRIBUTE_SENSITIVE);
  EXPECT_TRUE(a[CKA_MODULUS].ok());
  EXPECT_EQ(a[CKA_MODULUS].value.size(), 256u);
  ASSERT_EQ(a[CKA_SENSITIVE].value.size(), 1u);
  EXPECT_EQ(a[CKA_SENSITIVE].value[0], CK_TRUE);
  EXPECT_EQ(a[CKA_EXTRACTABLE].value[0], CK_FALSE);
  EXPECT_EQ(a[CKA_EC_POINT].rv, CKR_ATTRIBUTE_TYPE_INVALID);
  EXPECT_EQ(a[CKA_WRAP_TEMPLATE].rv, CKR_ATTRIBUTE_TYPE_INVALID);
}

TEST_F(InnerTokenTest, EcKeyPairPrivateValueIsSensitive) {
  const SharedKeys& k = Keys();
  ASSERT_NE(k.ec.private_key, CK_INVALID_HANDLE);
  const CK_ATTRIBUTE_TYPE types[] = {CKA_VALUE, CKA_EC_PARAMS, CKA_KEY_TYPE};
  ASSERT_OK_AND_ASSIGN(AttributeValues a, alpha_->GetAttributes(k.ec.private_key, types));
  EXPECT_EQ(a[CKA_VALUE].rv, CKR_ATTRIBUTE_SENSITIVE);
  EXPECT_TRUE(Same(a[CKA_EC_PARAMS].value, std::span<const uint8_t>(kP256)));
  ASSERT_EQ(a[CKA_KEY_TYPE].value.size(), sizeof(CK_KEY_TYPE));
  CK_KEY_TYPE kt;
  std::memcpy(&kt, a[CKA_KEY_TYPE].value.data(), sizeof(kt));
  EXPECT_EQ(kt, CKK_EC);
  // A single unavailable attribute takes the call's own code.
  const CK_ATTRIBUTE_TYPE only[] = {CKA_VALUE};
  ASSERT_OK_AND_ASSIGN(AttributeValues b, alpha_->GetAttributes(k.ec.private_key, only));
  EXPECT_EQ(b[CKA_VALUE].rv, CKR_ATTRIBUTE_SENSITIVE);
}

TEST_F(InnerTokenTest, FindsSetsAndDestroysObjects) {
  AttrTemplate t;
  t.Ulong(CKA_CLASS, CKO_DATA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Str(CKA_LABEL, "find-me")
      .Str(CKA_APPLICATION, "vaultp11-tests")
      .Data(CKA_VALUE, Data(20));
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE h, alpha_->CreateObject(t));
  AttrTemplate q;
  q.Str(CKA_LABEL, "find-me");
  ASSERT_OK_AND_ASSIGN(auto found, alpha_->FindObjects(q));
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0], h);

  AttrTemplate relabel;
  relabel.Str(CKA_LABEL, "found-me");
  EXPECT_OK(alpha_->SetAttributes(h, relabel));
  ASSERT_OK_AND_ASSIGN(auto none, alpha_->FindObjects(q));
  EXPECT_TRUE(none.empty());
  const CK_ATTRIBUTE_TYPE types[] = {CKA_LABEL, CKA_VALUE};
  ASSERT_OK_AND_ASSIGN(AttributeValues a, alpha_->GetAttributes(h, types));
  EXPECT_EQ(std::string(a[CKA_LABEL].value.begin(), a[CKA_LABEL].value.end()), "found-me");
  EXPECT_TRUE(Same(a[CKA_VALUE].value, Data(20)));

  EXPECT_OK(alpha_->DestroyObject(h));
  EXPECT_THAT(alpha_->GetAttributes(h, types), RvIs(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_THAT(alpha_->DestroyObject(h), RvIs(CKR_OBJECT_HANDLE_INVALID));

  // max_results bounds the search.
  AttrTemplate cls;
  cls.Ulong(CKA_CLASS, CKO_PRIVATE_KEY);
  Keys();
  ASSERT_OK_AND_ASSIGN(auto one, alpha_->FindObjects(cls, 1));
  EXPECT_EQ(one.size(), 1u);
}

// ---- signing ----------------------------------------------------------------------------------

TEST_F(InnerTokenTest, SignsRsaPkcs1Sha256SingleAndMultiPart) {
  const SharedKeys& k = Keys();
  CK_MECHANISM mech{CKM_SHA256_RSA_PKCS, nullptr, 0};
  Bytes data = Data(1000);
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(alpha_, k.rsa.private_key, mech, 256, data));
  EXPECT_EQ(sig.size(), 256u);
  EXPECT_OK(VerifyWith(k.rsa_pub, mech, data, sig));

  ASSERT_OK_AND_ASSIGN(auto op, NewInnerSignOp(alpha_, k.rsa.private_key, mech, 256));
  EXPECT_TRUE(op->SupportsMultiPart());
  EXPECT_EQ(op->SignatureLength(), 256u);
  EXPECT_OK(op->Update(std::span<const uint8_t>(data).first(300)));
  EXPECT_OK(op->Update(std::span<const uint8_t>(data).subspan(300)));
  ASSERT_OK_AND_ASSIGN(Bytes sig2, op->Final());
  EXPECT_EQ(sig2, sig);                                           // PKCS#1 v1.5 is deterministic
  EXPECT_THAT(op->Final(), RvIs(CKR_OPERATION_NOT_INITIALIZED));  // ended
}

TEST_F(InnerTokenTest, SignsEmptyMessages) {
  const SharedKeys& k = Keys();
  const Bytes empty;
  CK_MECHANISM rsa{CKM_SHA256_RSA_PKCS, nullptr, 0};
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(alpha_, k.rsa.private_key, rsa, 256, empty));
  EXPECT_OK(VerifyWith(k.rsa_pub, rsa, empty, sig));
  ASSERT_OK_AND_ASSIGN(auto op, NewInnerSignOp(alpha_, k.rsa.private_key, rsa, 256));
  EXPECT_OK(op->Update(empty));
  ASSERT_OK_AND_ASSIGN(Bytes sig2, op->Final());
  EXPECT_EQ(sig2, sig);
  CK_MECHANISM ec{CKM_ECDSA_SHA256, nullptr, 0};
  ASSERT_OK_AND_ASSIGN(Bytes esig, SignOnce(alpha_, k.ec.private_key, ec, 64, empty));
  EXPECT_OK(VerifyWith(k.ec_pub, ec, empty, esig));
}

TEST_F(InnerTokenTest, SignsRsaPssSha256) {
  const SharedKeys& k = Keys();
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM mech{CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
  Bytes data = Data(77);
  ASSERT_OK_AND_ASSIGN(auto op, NewInnerSignOp(alpha_, k.rsa.private_key, mech, 256));
  pss.sLen = 0;  // the op keeps its own copy of the parameter
  ASSERT_OK_AND_ASSIGN(Bytes sig, op->Sign(data));
  pss.sLen = 32;
  EXPECT_OK(VerifyWith(k.rsa_pub, mech, data, sig));
}

TEST_F(InnerTokenTest, HashesInProcessWhenAskedAndStillVerifies) {
  const SharedKeys& k = Keys();
  InnerToken::Options o;
  o.hash_in_process = true;
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<InnerToken> t,
                       InnerToken::Open(module_, "alpha", SecureString(kAlphaPin), o));
  Bytes data = Data(5000);
  for (CK_MECHANISM_TYPE type : {CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA1_RSA_PKCS}) {
    CK_MECHANISM mech{type, nullptr, 0};
    ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(t, k.rsa.private_key, mech, 256, data));
    EXPECT_OK(VerifyWith(k.rsa_pub, mech, data, sig));
    // Same bytes as the token's own hashing mechanism.
    ASSERT_OK_AND_ASSIGN(Bytes native, SignOnce(alpha_, k.rsa.private_key, mech, 256, data));
    EXPECT_EQ(sig, native) << type;
  }
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA512, CKG_MGF1_SHA512, 64};
  CK_MECHANISM pmech{CKM_SHA512_RSA_PKCS_PSS, &pss, sizeof(pss)};
  ASSERT_OK_AND_ASSIGN(auto op, NewInnerSignOp(t, k.rsa.private_key, pmech, 256));
  EXPECT_OK(op->Update(std::span<const uint8_t>(data).first(10)));
  EXPECT_OK(op->Update(std::span<const uint8_t>(data).subspan(10)));
  ASSERT_OK_AND_ASSIGN(Bytes psig, op->Final());
  EXPECT_OK(VerifyWith(k.rsa_pub, pmech, data, psig));
  // The raw PSS mechanism cannot check hashAlg against the data: the op does.
  CK_RSA_PKCS_PSS_PARAMS wrong{CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM wmech{CKM_SHA512_RSA_PKCS_PSS, &wrong, sizeof(wrong)};
  EXPECT_THAT(NewInnerSignOp(t, k.rsa.private_key, wmech, 256), RvIs(CKR_MECHANISM_PARAM_INVALID));
}

TEST_F(InnerTokenTest, SignsEcdsaSha256AsRawRsEvenThoughSoftHsmLacksIt) {
  const SharedKeys& k = Keys();
  EXPECT_FALSE(alpha_->SupportsMechanism(CKM_ECDSA_SHA256));  // SoftHSMv2 2.6: emulated
  CK_MECHANISM mech{CKM_ECDSA_SHA256, nullptr, 0};
  Bytes data = Data(333);
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(alpha_, k.ec.private_key, mech, 64, data));
  EXPECT_EQ(sig.size(), 64u);  // r || s, 32 bytes each
  EXPECT_OK(VerifyWith(k.ec_pub, mech, data, sig));

  ASSERT_OK_AND_ASSIGN(auto op, NewInnerSignOp(alpha_, k.ec.private_key, mech, 64));
  EXPECT_TRUE(op->SupportsMultiPart());
  EXPECT_OK(op->Update(std::span<const uint8_t>(data).first(100)));
  EXPECT_OK(op->Update(std::span<const uint8_t>(data).subspan(100)));
  ASSERT_OK_AND_ASSIGN(Bytes sig2, op->Final());
  EXPECT_OK(VerifyWith(k.ec_pub, mech, data, sig2));

  // Raw CKM_ECDSA over a digest: single-part only.
  CK_MECHANISM raw{CKM_ECDSA, nullptr, 0};
  Bytes digest = Data(32, 99);
  ASSERT_OK_AND_ASSIGN(auto rop, NewInnerSignOp(alpha_, k.ec.private_key, raw, 64));
  EXPECT_FALSE(rop->SupportsMultiPart());
  ASSERT_OK_AND_ASSIGN(Bytes rsig, rop->Sign(digest));
  EXPECT_OK(VerifyWith(k.ec_pub, raw, digest, rsig));
}

TEST_F(InnerTokenTest, SignInitErrorsPassThroughAndKeepTheSession) {
  Keys();
  const auto before = alpha_->Stats();
  CK_MECHANISM mech{CKM_SHA256_RSA_PKCS, nullptr, 0};
  auto r = NewInnerSignOp(alpha_, 0xdead, mech, 256);
  // SoftHSM's own code, unchanged (mapping inner handle errors is the caller's job).
  EXPECT_THAT(r, RvIs(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_THAT(r.error().message, HasSubstr("alpha"));
  // A public key cannot sign: the inner code comes back unchanged.
  auto pub = NewInnerSignOp(alpha_, Keys().rsa.public_key, mech, 256);
  EXPECT_FALSE(pub.ok());
  const auto after = alpha_->Stats();
  EXPECT_EQ(after.closed_total, before.closed_total);  // the session went back to the pool
  EXPECT_EQ(after.idle, after.open);
}

TEST_F(InnerTokenTest, AbandonedOperationClosesItsSessionInsteadOfPoolingIt) {
  const SharedKeys& k = Keys();
  CK_MECHANISM mech{CKM_SHA256_RSA_PKCS, nullptr, 0};
  const auto before = alpha_->Stats();
  {
    ASSERT_OK_AND_ASSIGN(auto op, NewInnerSignOp(alpha_, k.rsa.private_key, mech, 256));
    EXPECT_OK(op->Update(Data(10)));
  }  // dropped with C_SignUpdate done and no C_SignFinal
  const auto after = alpha_->Stats();
  EXPECT_EQ(after.closed_total, before.closed_total + 1);
  // Every pooled session is clean: no CKR_OPERATION_ACTIVE for the next users.
  for (int i = 0; i < 4; ++i) EXPECT_OK(SignOnce(alpha_, k.rsa.private_key, mech, 256, Data(10)));
}

// ---- decrypt, encrypt, wrap, unwrap ----------------------------------------------------------

TEST_F(InnerTokenTest, DecryptsRsaOaepAndPkcs1) {
  const SharedKeys& k = Keys();
  // SoftHSMv2 2.6 does OAEP with SHA-1 and no label only.
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_MECHANISM mech{CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
  Bytes plain = Data(48);
  ASSERT_OK_AND_ASSIGN(auto enc, ossl::NewEncryptOp(k.rsa_pub, mech));
  ASSERT_OK_AND_ASSIGN(SecureBytes ct, enc->OneShot(plain));
  ASSERT_OK_AND_ASSIGN(auto dec, NewInnerDecryptOp(alpha_, k.rsa.private_key, mech));
  EXPECT_FALSE(dec->SupportsMultiPart());
  EXPECT_EQ(dec->MaxOutput(ct.size(), true), ct.size());
  ASSERT_OK_AND_ASSIGN(SecureBytes out, dec->OneShot(ct));
  EXPECT_TRUE(Same(out, plain));

  CK_MECHANISM pkcs{CKM_RSA_PKCS, nullptr, 0};
  ASSERT_OK_AND_ASSIGN(auto enc2, ossl::NewEncryptOp(k.rsa_pub, pkcs));
  ASSERT_OK_AND_ASSIGN(SecureBytes ct2, enc2->OneShot(plain));
  ASSERT_OK_AND_ASSIGN(auto dec2, NewInnerDecryptOp(alpha_, k.rsa.private_key, pkcs));
  ASSERT_OK_AND_ASSIGN(SecureBytes out2, dec2->OneShot(ct2));
  EXPECT_TRUE(Same(out2, plain));

  // A corrupted ciphertext fails with the inner code, and the session is not reused.
  ct[10] ^= 0x55;
  const auto before = alpha_->Stats();
  ASSERT_OK_AND_ASSIGN(auto dec3, NewInnerDecryptOp(alpha_, k.rsa.private_key, mech));
  auto bad = dec3->OneShot(ct);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(alpha_->Stats().closed_total, before.closed_total + 1);
}

TEST_F(InnerTokenTest, EncryptsAndDecryptsAesCbcPadInParts) {
  AttrTemplate t;
  t.Bool(CKA_TOKEN, false)
      .Ulong(CKA_VALUE_LEN, 32)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_DECRYPT, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Str(CKA_LABEL, "aes-session");
  CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE key, alpha_->GenerateKey(gen, t));  // a session object

  Bytes iv = Data(16, 3);
  CK_MECHANISM mech{CKM_AES_CBC_PAD, iv.data(), static_cast<CK_ULONG>(iv.size())};
  Bytes plain = Data(1000, 42);
  ASSERT_OK_AND_ASSIGN(auto enc, NewInnerEncryptOp(alpha_, key, mech));
  std::fill(iv.begin(), iv.end(), 0);  // the op copied the IV at init
  EXPECT_TRUE(enc->SupportsMultiPart());
  SecureBytes ct;
  for (size_t off = 0; off < plain.size(); off += 333) {
    auto part =
        std::span<const uint8_t>(plain).subspan(off, std::min<size_t>(333, plain.size() - off));
    const size_t bound = enc->MaxOutput(part.size(), false);
    ASSERT_OK_AND_ASSIGN(SecureBytes o, enc->Update(part));
    EXPECT_LE(o.size(), bound);
    ct.insert(ct.end(), o.begin(), o.end());
  }
  ASSERT_OK_AND_ASSIGN(SecureBytes last, enc->Final());
  ct.insert(ct.end(), last.begin(), last.end());
  EXPECT_EQ(ct.size(), 1008u);

  Bytes iv_again = Data(16, 3);
  std::copy(iv_again.begin(), iv_again.end(), iv.begin());  // mech points at iv's buffer
  ASSERT_OK_AND_ASSIGN(auto dec, NewInnerDecryptOp(alpha_, key, mech));
  SecureBytes back;
  for (size_t off = 0; off < ct.size(); off += 100) {
    auto part = std::span<const uint8_t>(ct).subspan(off, std::min<size_t>(100, ct.size() - off));
    ASSERT_OK_AND_ASSIGN(SecureBytes o, dec->Update(part));
    back.insert(back.end(), o.begin(), o.end());
  }
  ASSERT_OK_AND_ASSIGN(SecureBytes tail, dec->Final());
  back.insert(back.end(), tail.begin(), tail.end());
  EXPECT_TRUE(Same(back, plain));

  ASSERT_OK_AND_ASSIGN(auto one, NewInnerDecryptOp(alpha_, key, mech));
  ASSERT_OK_AND_ASSIGN(SecureBytes again, one->OneShot(ct));
  EXPECT_TRUE(Same(again, plain));
  EXPECT_OK(alpha_->DestroyObject(key));
}

TEST_F(InnerTokenTest, UnwrapsAnAesKeyUnderRsaOaep) {
  const SharedKeys& k = Keys();
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_MECHANISM mech{CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
  Bytes aes = Data(32, 200);
  ASSERT_OK_AND_ASSIGN(Bytes wrapped, ossl::Wrap(k.rsa_pub, mech, aes));

  // A readable session copy, to check the value...
  AttrTemplate t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_SENSITIVE, false)
      .Bool(CKA_EXTRACTABLE, true)
      .Bool(CKA_ENCRYPT, true);
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE h, UnwrapKey(*alpha_, mech, k.rsa.private_key, wrapped, t));
  const CK_ATTRIBUTE_TYPE types[] = {CKA_VALUE, CKA_VALUE_LEN};
  ASSERT_OK_AND_ASSIGN(AttributeValues a, alpha_->GetAttributes(h, types));
  EXPECT_TRUE(Same(a[CKA_VALUE].value, aes));

  // ...and a sensitive token key, whose value stays in the HSM.
  AttrTemplate st;
  st.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_DECRYPT, true)
      .Str(CKA_LABEL, "unwrapped");
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE s,
                       UnwrapKey(*alpha_, mech, k.rsa.private_key, wrapped, st));
  ASSERT_OK_AND_ASSIGN(AttributeValues b, alpha_->GetAttributes(s, types));
  EXPECT_EQ(b[CKA_VALUE].rv, CKR_ATTRIBUTE_SENSITIVE);
  // (SoftHSMv2 2.6 reports CKA_VALUE_LEN 0 for unwrapped keys and refuses it in the template.)

  wrapped[5] ^= 1;
  EXPECT_FALSE(UnwrapKey(*alpha_, mech, k.rsa.private_key, wrapped, t).ok());
  EXPECT_OK(alpha_->DestroyObject(h));
  EXPECT_OK(alpha_->DestroyObject(s));
}

TEST_F(InnerTokenTest, UnwrapsAndWrapsWithAesKeyWrapPad) {
  Bytes kek = Data(32, 17);
  AttrTemplate kt;
  kt.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_WRAP, true)
      .Bool(CKA_UNWRAP, true)
      .Str(CKA_LABEL, "kek")
      .Data(CKA_VALUE, kek);
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE kek_h, alpha_->CreateObject(kt));

  CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  Bytes aes = Data(32, 90);
  ossl::KeyRef kek_ref{CKK_AES, CKO_SECRET_KEY, nullptr,
                       std::make_shared<const SecureBytes>(kek.begin(), kek.end())};
  ASSERT_OK_AND_ASSIGN(Bytes wrapped, ossl::Wrap(kek_ref, kwp, aes));

  AttrTemplate t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, false)
      .Bool(CKA_EXTRACTABLE, true)
      .Str(CKA_LABEL, "kwp-unwrapped");
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE h, alpha_->UnwrapKey(kwp, kek_h, wrapped, t));
  const CK_ATTRIBUTE_TYPE types[] = {CKA_VALUE};
  ASSERT_OK_AND_ASSIGN(AttributeValues a, alpha_->GetAttributes(h, types));
  EXPECT_TRUE(Same(a[CKA_VALUE].value, aes));

  // RFC 5649 is deterministic: the HSM wraps it back to the same bytes.
  ASSERT_OK_AND_ASSIGN(Bytes rewrapped, alpha_->WrapKey(kwp, kek_h, h));
  EXPECT_EQ(rewrapped, wrapped);
  // The KEK itself is not extractable: the inner code passes through.
  EXPECT_THAT(alpha_->WrapKey(kwp, kek_h, kek_h), RvIs(CKR_KEY_UNEXTRACTABLE));
  EXPECT_OK(alpha_->DestroyObject(h));
  EXPECT_OK(alpha_->DestroyObject(kek_h));
}

// ---- the session pool -------------------------------------------------------------------------

TEST_F(InnerTokenTest, ReusesSessionsAcrossAThousandSigns) {
  const SharedKeys& k = Keys();
  const auto before = alpha_->Stats();
  CK_MECHANISM mech{CKM_ECDSA_SHA256, nullptr, 0};
  Bytes data = Data(64);
  for (int i = 0; i < 1000; ++i) {
    auto sig = SignOnce(alpha_, k.ec.private_key, mech, 64, data);
    ASSERT_TRUE(sig.ok()) << i << ": " << sig.error().message;
    if (i % 250 == 0) EXPECT_OK(VerifyWith(k.ec_pub, mech, data, sig.value()));
  }
  const auto after = alpha_->Stats();
  EXPECT_LE(after.opened_total - before.opened_total, 1u);
  EXPECT_LE(after.open, 2u);
  EXPECT_EQ(after.closed_total, before.closed_total);
}

TEST_F(InnerTokenTest, FourThreadsSignConcurrently) {
  const SharedKeys& k = Keys();
  std::atomic<int> failures{0}, verified{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      CK_MECHANISM ec{CKM_ECDSA_SHA256, nullptr, 0};
      CK_MECHANISM rsa{CKM_SHA256_RSA_PKCS, nullptr, 0};
      for (int i = 0; i < 150; ++i) {
        Bytes data = Data(40, static_cast<uint8_t>(t * 16 + i));
        const bool use_rsa = (i % 10) == 0;
        auto sig = SignOnce(alpha_, use_rsa ? k.rsa.private_key : k.ec.private_key,
                            use_rsa ? rsa : ec, use_rsa ? 256 : 64, data);
        if (!sig.ok()) {
          ++failures;
          continue;
        }
        if (i % 15 == 0) {
          if (VerifyWith(use_rsa ? k.rsa_pub : k.ec_pub, use_rsa ? rsa : ec, data, sig.value())
                  .ok())
            ++verified;
          else
            ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(verified.load(), 40);
  EXPECT_LE(alpha_->Stats().open, 4u);
  EXPECT_EQ(alpha_->Stats().idle, alpha_->Stats().open);
}

TEST_F(InnerTokenTest, AcquireWaitsForAFreeSessionThenTimesOut) {
  InnerToken::Options o;
  o.max_sessions = 2;
  o.acquire_timeout = std::chrono::milliseconds(300);
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<InnerToken> t,
                       InnerToken::Open(module_, "alpha", SecureString(kAlphaPin), o));
  ASSERT_OK_AND_ASSIGN(SessionLease a, t->Acquire());
  ASSERT_OK_AND_ASSIGN(SessionLease b, t->Acquire());
  EXPECT_NE(a.handle(), b.handle());
  auto start = std::chrono::steady_clock::now();
  auto c = t->Acquire();
  EXPECT_THAT(c, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(250));

  const CK_SESSION_HANDLE a_handle = a.handle();
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    a.Release();
  });
  auto d = t->Acquire();  // waits for the release
  releaser.join();
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->handle(), a_handle);
  EXPECT_EQ(t->Stats().opened_total, 2u);
}

TEST_F(InnerTokenTest, BrokenLeaseIsClosedNotPooled) {
  ASSERT_OK_AND_ASSIGN(SessionLease l, alpha_->Acquire());
  const CK_SESSION_HANDLE h = l.handle();
  const auto before = alpha_->Stats();
  l.MarkBroken();
  l.Release();
  const auto after = alpha_->Stats();
  EXPECT_EQ(after.closed_total, before.closed_total + 1);
  EXPECT_EQ(after.open, before.open - 1);
  CK_SESSION_INFO info;
  EXPECT_EQ(VAULTP11_P11_CALL(*module_, C_GetSessionInfo, h, &info), CKR_SESSION_HANDLE_INVALID);
  // Check() marks the lease broken on a lost session.
  ASSERT_OK_AND_ASSIGN(SessionLease m, alpha_->Acquire());
  EXPECT_EQ(m.Check(CKR_SESSION_HANDLE_INVALID), CKR_SESSION_HANDLE_INVALID);
  EXPECT_TRUE(m.broken());
}

TEST_F(InnerTokenTest, LeftoverOperationOnAPooledSessionIsRetriedOnAnother) {
  const SharedKeys& k = Keys();
  CK_MECHANISM mech{CKM_SHA256_RSA_PKCS, nullptr, 0};
  CK_SESSION_HANDLE dirty;
  {
    // A careless user leaves a signature half-done and returns the session as healthy.
    ASSERT_OK_AND_ASSIGN(SessionLease l, alpha_->Acquire());
    ASSERT_EQ(VAULTP11_P11_CALL(l.module(), C_SignInit, l.handle(), &mech, k.rsa.private_key),
              CKR_OK);
    dirty = l.handle();
  }
  const auto before = alpha_->Stats();
  // The pool hands out the most recently returned session first: the dirty one.
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(alpha_, k.rsa.private_key, mech, 256, Data(5)));
  EXPECT_OK(VerifyWith(k.rsa_pub, mech, Data(5), sig));
  EXPECT_EQ(alpha_->Stats().closed_total, before.closed_total + 1);
  CK_SESSION_INFO info;
  EXPECT_EQ(VAULTP11_P11_CALL(*module_, C_GetSessionInfo, dirty, &info),
            CKR_SESSION_HANDLE_INVALID);
}

TEST_F(InnerTokenTest, LostLoginIsRestoredAndTheCallRetried) {
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<InnerToken> beta,
                       InnerToken::Open(module_, "beta", SecureString(kBetaPin)));
  {
    ASSERT_OK_AND_ASSIGN(SessionLease l, beta->Acquire());
    ASSERT_EQ(VAULTP11_P11_CALL(l.module(), C_Logout, l.handle()), CKR_OK);  // e.g. an HSM restart
    CK_SESSION_INFO info{};
    ASSERT_EQ(VAULTP11_P11_CALL(l.module(), C_GetSessionInfo, l.handle(), &info), CKR_OK);
    ASSERT_EQ(info.state, CKS_RW_PUBLIC_SESSION);  // a private object cannot be made now
  }
  AttrTemplate t;
  t.Ulong(CKA_CLASS, CKO_DATA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Str(CKA_LABEL, "after-logout");
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE h,
                       beta->CreateObject(t));  // CKR_USER_NOT_LOGGED_IN, re-login, retry
  ASSERT_OK_AND_ASSIGN(SessionLease l, beta->Acquire());
  CK_SESSION_INFO info{};
  ASSERT_EQ(VAULTP11_P11_CALL(l.module(), C_GetSessionInfo, l.handle(), &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_USER_FUNCTIONS);
  l.Release();
  EXPECT_OK(beta->DestroyObject(h));
}

TEST_F(InnerTokenTest, PooledSessionsAreLoggedInReadWriteSessions) {
  ASSERT_OK_AND_ASSIGN(SessionLease l, alpha_->Acquire());
  CK_SESSION_INFO info{};
  ASSERT_EQ(VAULTP11_P11_CALL(l.module(), C_GetSessionInfo, l.handle(), &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_USER_FUNCTIONS);
  EXPECT_EQ(info.slotID, alpha_->slot_id());
}

TEST_F(InnerTokenTest, SessionObjectsOutliveBrokenPoolSessions) {
  AttrTemplate t;
  t.Bool(CKA_TOKEN, false)
      .Ulong(CKA_VALUE_LEN, 16)
      .Bool(CKA_ENCRYPT, true)
      .Str(CKA_LABEL, "ephemeral");
  CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
  ASSERT_OK_AND_ASSIGN(CK_OBJECT_HANDLE key, alpha_->GenerateKey(gen, t));
  for (int i = 0; i < 3; ++i) {  // close every pooled session
    ASSERT_OK_AND_ASSIGN(SessionLease l, alpha_->Acquire());
    l.MarkBroken();
  }
  const CK_ATTRIBUTE_TYPE types[] = {CKA_LABEL};
  EXPECT_OK(alpha_->GetAttributes(key, types));  // made on the login session: still there
  EXPECT_OK(alpha_->DestroyObject(key));
}

// ---- fork -------------------------------------------------------------------------------------

TEST_F(InnerTokenTest, ForkedChildReloadsTheModuleAndSigns) {
  const SharedKeys& k = Keys();
  CK_MECHANISM mech{CKM_ECDSA_SHA256, nullptr, 0};
  Bytes data = Data(50);
  ASSERT_OK(SignOnce(alpha_, k.ec.private_key, mech, 64, data));  // the pool holds a session
  const uint64_t gen = module_->generation(), epoch = module_->object_epoch();
  const std::string path = Env().module_path();
  const ossl::KeyRef ec_pub = k.ec_pub;
  const CK_OBJECT_HANDLE ec_key = k.ec.private_key;

  int rc = InChild([&] {
    // C_Initialize in the child: SoftHSMv2 keeps its state (CKR_CRYPTOKI_ALREADY_INITIALIZED),
    // so object handles stay valid; our sessions from the parent are dropped.
    auto m = InnerModule::Load(path, SoftHsmQuirks());
    if (!m.ok() || m.value().get() != module_.get()) return 20;
    if (module_->generation() != gen + 1) return 21;
    if (module_->object_epoch() != epoch) return 22;
    if (module_->pid() != getpid()) return 23;
    auto fresh = InnerToken::Open(m.value(), "alpha", SecureString(kAlphaPin));
    if (!fresh.ok()) return 24;
    std::shared_ptr<InnerToken> t = std::move(fresh).value();
    auto sig = SignOnce(t, ec_key, mech, 64, data);
    if (!sig.ok() || !VerifyWith(ec_pub, mech, data, sig.value()).ok()) return 25;
    // The parent's token object works too: it drops the parent's sessions and logs in again.
    const uint64_t opened = alpha_->Stats().opened_total;
    auto sig2 = SignOnce(alpha_, ec_key, mech, 64, data);
    if (!sig2.ok()) return 26;
    if (!VerifyWith(ec_pub, mech, data, sig2.value()).ok()) return 27;
    if (alpha_->Stats().opened_total != opened + 1) return 28;
    return 0;
  });
  EXPECT_EQ(rc, 0);
  // The parent never noticed.
  EXPECT_EQ(module_->generation(), gen);
  EXPECT_OK(SignOnce(alpha_, k.ec.private_key, mech, 64, data));
}

TEST_F(InnerTokenTest, ForkedChildRecoversLazilyWithoutAnExplicitLoad) {
  const SharedKeys& k = Keys();
  CK_MECHANISM mech{CKM_SHA256_RSA_PKCS, nullptr, 0};
  Bytes data = Data(50);
  const ossl::KeyRef rsa_pub = k.rsa_pub;
  const CK_OBJECT_HANDLE rsa_key = k.rsa.private_key;
  int rc = InChild([&] {
    auto sig = SignOnce(alpha_, rsa_key, mech, 256, data);
    if (!sig.ok()) return 30;
    if (!VerifyWith(rsa_pub, mech, data, sig.value()).ok()) return 31;
    if (module_->ForkedSinceInit()) return 32;
    return 0;
  });
  EXPECT_EQ(rc, 0);
}

TEST_F(InnerTokenTest, ForkFinalizeQuirkGivesTheChildAFreshStateWhereHandlesMustBeFoundAgain) {
  // A second copy of SoftHSM under another name is a separate library with its own state, so
  // it can carry quirk fork-finalize without disturbing the shared one.
  TempDir dir;
  const std::string copy = dir.file("libsofthsm2-copy.so");
  std::filesystem::copy_file(Env().module_path(), copy);
  Quirks q = SoftHsmQuirks();
  q.fork_finalize = true;
  ASSERT_OK_AND_ASSIGN(auto m, InnerModule::Load(copy, q));
  ASSERT_NE(m.get(), module_.get());
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<InnerToken> t,
                       InnerToken::Open(m, "alpha", SecureString(kAlphaPin)));
  const ossl::KeyRef ec_pub = Keys().ec_pub;
  AttrTemplate by_id;
  by_id.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Str(CKA_ID, "shared-ec");
  ASSERT_OK_AND_ASSIGN(auto found, t->FindObjects(by_id));
  ASSERT_EQ(found.size(), 1u);
  const CK_OBJECT_HANDLE key = found[0];
  CK_MECHANISM mech{CKM_ECDSA_SHA256, nullptr, 0};
  Bytes data = Data(20);
  ASSERT_OK(SignOnce(t, key, mech, 64, data));
  const uint64_t epoch = m->object_epoch();

  int rc = InChild([&] {
    auto again = InnerModule::Load(copy, q);  // C_Finalize + C_Initialize in the child
    if (!again.ok()) return 40;
    if (m->object_epoch() != epoch + 1) return 41;
    // The parent's handle means nothing to the fresh state (or names another object).
    auto stale = SignOnce(t, key, mech, 64, data);
    if (stale.ok() && VerifyWith(ec_pub, mech, data, stale.value()).ok()) return 42;
    auto refound = t->FindObjects(by_id);
    if (!refound.ok() || refound.value().size() != 1) return 43;
    auto sig = SignOnce(t, refound.value()[0], mech, 64, data);
    if (!sig.ok() || !VerifyWith(ec_pub, mech, data, sig.value()).ok()) return 44;
    return 0;
  });
  EXPECT_EQ(rc, 0);
  EXPECT_OK(SignOnce(t, key, mech, 64, data));  // the parent's state is untouched
}

}  // namespace
}  // namespace vaultp11::p11
