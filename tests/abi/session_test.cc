// Sessions, login and the store as seen through the module (issue parts 6 and 9).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <barrier>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include "fixture.h"

namespace vaultp11::testing {
namespace {

using SessionTest = AbiTest;

TEST_F(SessionTest, OpenSessionRules) {
  CK_SESSION_HANDLE s;
  EXPECT_EQ(f->C_OpenSession(0, 0, nullptr, nullptr, &s), CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  EXPECT_EQ(f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, nullptr), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_OpenSession(42, CKF_SERIAL_SESSION, nullptr, nullptr, &s), CKR_SLOT_ID_INVALID);
  EXPECT_EQ(f->C_CloseSession(12345), CKR_SESSION_HANDLE_INVALID);
  CK_SESSION_INFO info;
  EXPECT_EQ(f->C_GetSessionInfo(12345, &info), CKR_SESSION_HANDLE_INVALID);
}

TEST_F(SessionTest, SessionStatesFollowLogin) {
  CK_SESSION_HANDLE ro = OpenRo(), rw = OpenRw();
  CK_SESSION_INFO info;
  ASSERT_EQ(f->C_GetSessionInfo(ro, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RO_PUBLIC_SESSION);
  EXPECT_EQ(info.slotID, 0u);
  ASSERT_EQ(f->C_GetSessionInfo(rw, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_PUBLIC_SESSION);
  EXPECT_TRUE(info.flags & CKF_RW_SESSION);
  ASSERT_EQ(Login(ro), CKR_OK);
  // Login applies to every session of the application on that token.
  ASSERT_EQ(f->C_GetSessionInfo(rw, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_USER_FUNCTIONS);
  ASSERT_EQ(f->C_GetSessionInfo(ro, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RO_USER_FUNCTIONS);
  EXPECT_EQ(Login(rw), CKR_USER_ALREADY_LOGGED_IN);
  ASSERT_EQ(f->C_Logout(rw), CKR_OK);
  ASSERT_EQ(f->C_GetSessionInfo(ro, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RO_PUBLIC_SESSION);
  EXPECT_EQ(f->C_Logout(rw), CKR_USER_NOT_LOGGED_IN);
  CK_TOKEN_INFO ti;
  ASSERT_EQ(f->C_GetTokenInfo(0, &ti), CKR_OK);
  EXPECT_EQ(ti.ulSessionCount, 2u);
  EXPECT_EQ(ti.ulRwSessionCount, 1u);
}

TEST_F(SessionTest, LoginChecksThePrincipalSecret) {
  CK_SESSION_HANDLE s = OpenRw();
  EXPECT_EQ(Login(s, "app:wrong horse"), CKR_PIN_INCORRECT);
  EXPECT_EQ(Login(s, "nobody:correct horse"), CKR_PIN_INCORRECT);
  // A malformed PIN is a failed authentication like any other: CKR_PIN_INCORRECT (spec
  // C_Login; CKR_PIN_INVALID is for C_InitPIN / C_SetPIN).
  EXPECT_EQ(Login(s, "no colon here"), CKR_PIN_INCORRECT);
  EXPECT_EQ(Login(s, ":secret"), CKR_PIN_INCORRECT);
  EXPECT_EQ(Login(s, "app:"), CKR_PIN_INCORRECT);
  EXPECT_EQ(Login(s, "a.b.c"), CKR_PIN_INCORRECT);                  // not a JWT
  EXPECT_EQ(Login(s, std::string(20000, 'x')), CKR_PIN_INCORRECT);  // longer than any credential
  EXPECT_EQ(Login(s, kExpiredPin), CKR_PIN_INCORRECT);  // expired secrets are refused
  EXPECT_EQ(f->C_Login(s, CKU_USER, nullptr, 5), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_Login(s, 77, nullptr, 0), CKR_USER_TYPE_INVALID);
  std::string so = "app:correct horse";
  EXPECT_EQ(f->C_Login(s, CKU_SO, reinterpret_cast<CK_UTF8CHAR_PTR>(so.data()), so.size()), CKR_PIN_INCORRECT);
  CK_SESSION_INFO info;
  ASSERT_EQ(f->C_GetSessionInfo(s, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_PUBLIC_SESSION);
  EXPECT_EQ(Login(s), CKR_OK);
  // Spec C_Login: the SO while a normal user is logged in is CKR_USER_ANOTHER_ALREADY_LOGGED_IN.
  EXPECT_EQ(f->C_Login(s, CKU_SO, reinterpret_cast<CK_UTF8CHAR_PTR>(so.data()), so.size()),
            CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
}

// Two threads log two principals in on one token at once, many times: exactly one wins each
// round, the other is told another user is logged in, and the token's grants are the
// winner's (issue 16 item 9: the login state is re-checked under the login lock).
TEST_F(SessionTest, ConcurrentLoginsOfTwoPrincipalsHaveOneWinner) {
  CK_SESSION_HANDLE sa = OpenRw(), sb = OpenRw();
  // What the token's login allows: app (Key Vault Administrator on payments) may generate a
  // session key, norole may not.
  auto may_generate = [&] {
    CK_MECHANISM m{CKM_AES_KEY_GEN, nullptr, 0};
    CK_ULONG len = 16;
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE t[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}};
    CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
    CK_RV rv = f->C_GenerateKey(sa, &m, t, 2, &k);
    if (rv == CKR_OK) (void)f->C_DestroyObject(sa, k);
    return rv;
  };
  constexpr int kRounds = 100;
  std::barrier sync(2);
  CK_RV rv_a = CKR_OK, rv_b = CKR_OK;
  int a_won = 0, b_won = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::thread ta([&] {
      sync.arrive_and_wait();
      rv_a = Login(sa, kAdminPin);
    });
    std::thread tb([&] {
      sync.arrive_and_wait();
      rv_b = Login(sb, kNoRolePin);
    });
    ta.join();
    tb.join();
    ASSERT_EQ((rv_a == CKR_OK) + (rv_b == CKR_OK), 1)
        << "round " << round << ": " << rv_a << " " << rv_b;
    const CK_RV loser = rv_a == CKR_OK ? rv_b : rv_a;
    // The loser saw the winner either before authenticating (the spec's "already logged in")
    // or under the lock, once its own principal was known (another user).
    EXPECT_TRUE(loser == CKR_USER_ANOTHER_ALREADY_LOGGED_IN || loser == CKR_USER_ALREADY_LOGGED_IN)
        << loser;
    if (rv_a == CKR_OK) {
      ++a_won;
      EXPECT_EQ(may_generate(), CKR_OK) << "round " << round;
    } else {
      ++b_won;
      EXPECT_EQ(may_generate(), CKR_ACTION_PROHIBITED) << "round " << round;
    }
    ASSERT_EQ(f->C_Logout(sa), CKR_OK);
  }
  EXPECT_EQ(a_won + b_won, kRounds);
}

TEST_F(SessionTest, ClosingTheLastSessionLogsOut) {
  CK_SESSION_HANDLE s = LoggedInRw();
  ASSERT_EQ(f->C_CloseSession(s), CKR_OK);
  CK_SESSION_HANDLE s2 = OpenRo();
  CK_SESSION_INFO info;
  ASSERT_EQ(f->C_GetSessionInfo(s2, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RO_PUBLIC_SESSION);
}

TEST_F(SessionTest, CloseAllSessionsInvalidatesHandles) {
  CK_SESSION_HANDLE a = OpenRo(), b = OpenRw(), other = OpenRo(1);
  ASSERT_EQ(f->C_CloseAllSessions(0), CKR_OK);
  CK_SESSION_INFO info;
  EXPECT_EQ(f->C_GetSessionInfo(a, &info), CKR_SESSION_HANDLE_INVALID);
  EXPECT_EQ(f->C_GetSessionInfo(b, &info), CKR_SESSION_HANDLE_INVALID);
  EXPECT_EQ(f->C_GetSessionInfo(other, &info), CKR_OK);
  EXPECT_EQ(f->C_CloseAllSessions(8), CKR_SLOT_ID_INVALID);
}

TEST_F(SessionTest, PrincipalWithoutRoleCannotCreateOrSeeKeys) {
  CK_SESSION_HANDLE admin = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(admin, kP256, "admins-key", &pub, &priv);
  ASSERT_EQ(f->C_Logout(admin), CKR_OK);
  ASSERT_EQ(Login(admin, kNoRolePin), CKR_OK);
  CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL t = CK_TRUE;
  CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &t, 1}, {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()}};
  CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &t, 1}};
  CK_OBJECT_HANDLE p2, v2;
  EXPECT_EQ(f->C_GenerateKeyPair(admin, &mech, pt, 2, vt, 1, &p2, &v2), CKR_ACTION_PROHIBITED);
  // The private key is invisible; the public key stays public.
  auto found = FindByLabel(admin, "admins-key");
  EXPECT_EQ(found, std::vector<CK_OBJECT_HANDLE>{pub});
  CK_MECHANISM sm{CKM_ECDSA, nullptr, 0};
  EXPECT_EQ(f->C_SignInit(admin, &sm, priv), CKR_KEY_HANDLE_INVALID);
}

TEST_F(SessionTest, ReadOnlySessionCannotCreateTokenObjects) {
  CK_SESSION_HANDLE s = OpenRo();
  ASSERT_EQ(Login(s), CKR_OK);
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_BBOOL t = CK_TRUE;
  CK_ULONG len = 32;
  CK_ATTRIBUTE tmpl[] = {{CKA_TOKEN, &t, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}};
  CK_OBJECT_HANDLE h;
  EXPECT_EQ(f->C_GenerateKey(s, &mech, tmpl, 2, &h), CKR_SESSION_READ_ONLY);
  // Session objects are fine in a read-only session.
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE sess[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}};
  EXPECT_EQ(f->C_GenerateKey(s, &mech, sess, 2, &h), CKR_OK);
}

TEST_F(SessionTest, NotLoggedInCannotCreatePrivateObjects) {
  CK_SESSION_HANDLE s = OpenRw();
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG len = 16;
  CK_ATTRIBUTE tmpl[] = {{CKA_VALUE_LEN, &len, sizeof(len)}};
  CK_OBJECT_HANDLE h;
  EXPECT_EQ(f->C_GenerateKey(s, &mech, tmpl, 1, &h), CKR_USER_NOT_LOGGED_IN);
}

TEST_F(SessionTest, TokenObjectsPersistAcrossInitializations) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "persistent", &pub, &priv);
  CK_OBJECT_HANDLE spub, spriv;
  GenEc(s, kP256, "ephemeral", &spub, &spriv, /*token=*/false);
  std::vector<uint8_t> data = Bytes("hello");
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  s = LoggedInRw();
  auto found = FindByLabel(s, "persistent");
  ASSERT_EQ(found.size(), 2u);
  EXPECT_TRUE(FindByLabel(s, "ephemeral").empty());
  // The reloaded private key signs; the reloaded public key verifies.
  CK_OBJECT_HANDLE k_priv = 0, k_pub = 0;
  for (auto h : found) {
    auto cls = GetAttr(s, h, CKA_CLASS);
    CK_OBJECT_CLASS c;
    std::memcpy(&c, cls.data(), sizeof(c));
    (c == CKO_PRIVATE_KEY ? k_priv : k_pub) = h;
  }
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  auto sig = Sign(s, m, k_priv, data);
  EXPECT_EQ(Verify(s, m, k_pub, data, sig), CKR_OK);
}

TEST_F(SessionTest, StoreHoldsNoPlaintextKeyMaterial) {
  CK_SESSION_HANDLE s = LoggedInRw();
  // Import an AES key and a data object with distinctive values, then grep the files.
  std::vector<uint8_t> key(32, 0x5a);
  for (size_t i = 0; i < key.size(); ++i) key[i] ^= static_cast<uint8_t>(i * 7);
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL t = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &t, 1},
                         {CKA_VALUE, key.data(), key.size()}};
  CK_OBJECT_HANDLE h;
  ASSERT_EQ(f->C_CreateObject(s, tmpl, 4, &h), CKR_OK);
  std::string secret = "top-secret-value-4711-do-not-store-in-clear";
  CK_OBJECT_CLASS dc = CKO_DATA;
  CK_ATTRIBUTE dt[] = {{CKA_CLASS, &dc, sizeof(dc)}, {CKA_TOKEN, &t, 1}, {CKA_PRIVATE, &t, 1},
                       {CKA_VALUE, secret.data(), secret.size()}};
  ASSERT_EQ(f->C_CreateObject(s, dt, 4, &h), CKR_OK);
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  std::string all;
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::ifstream in(dir.file(std::string("store.db") + suffix), std::ios::binary);
    all.append(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.find(std::string(key.begin(), key.end())), std::string::npos);
  EXPECT_EQ(all.find(secret), std::string::npos);
  struct stat st;
  ASSERT_EQ(stat(dir.file("store.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  ASSERT_EQ(stat(dir.file("store.db.masterkey").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
}

// Two processes share one store: a key created by a child process is found by the parent,
// which initialised before the key existed, without a restart.
TEST_F(SessionTest, KeyCreatedByAnotherProcessIsFoundWithoutRestart) {
  CK_SESSION_HANDLE s = LoggedInRw();
  EXPECT_TRUE(FindByLabel(s, "from-child").empty());
  ASSERT_EQ(InAnotherProcess({"gen-ec", "from-child"}), 0);
  auto found = FindByLabel(s, "from-child");
  ASSERT_EQ(found.size(), 2u);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  CK_OBJECT_HANDLE priv = 0, pub = 0;
  for (auto h : found) {
    auto c = GetAttr(s, h, CKA_CLASS);
    CK_OBJECT_CLASS cls;
    std::memcpy(&cls, c.data(), sizeof(cls));
    (cls == CKO_PRIVATE_KEY ? priv : pub) = h;
  }
  auto data = Bytes("two processes");
  auto sig = Sign(s, m, priv, data);
  EXPECT_EQ(Verify(s, m, pub, data, sig), CKR_OK);
  // And a deletion in another process is seen as well.
  ASSERT_EQ(InAnotherProcess({"destroy-label", "from-child"}), 0);
  EXPECT_TRUE(FindByLabel(s, "from-child").empty());
}

TEST_F(SessionTest, CorruptStoreFailsInitializeCleanly) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  for (const char* suffix : {"-wal", "-shm"}) unlink(dir.file(std::string("store.db") + suffix).c_str());
  {
    std::ofstream out(dir.file("store.db"), std::ios::binary | std::ios::trunc);
    out << std::string(8192, 'x');
  }
  EXPECT_EQ(InitWith(config_path), CKR_FUNCTION_FAILED);
  CK_ULONG n;
  EXPECT_EQ(f->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
}

}  // namespace
}  // namespace vaultp11::testing
