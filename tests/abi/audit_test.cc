// The audit log as a consumer produces it: every operation class gives exactly its event
// (success and denials), nothing secret reaches a sink, failing sinks do not break crypto, and
// events written by forked children and at exit are kept (issue: audit log).
#include <dlfcn.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "abi/pkcs11_3_0.h"
#include "audit/chain.h"
#include "fixture.h"

namespace vaultp11::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;

constexpr char kSecretValue[] = "s3cr3t-value-that-must-never-be-logged";

std::vector<Json> ReadEvents(const std::string& path) {
  std::vector<Json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) out.push_back(Json::parse(line));
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Hex(const std::vector<uint8_t>& v) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (uint8_t b : v) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

// "Operation Signature" of each event, for exact comparisons.
std::vector<std::string> Summary(const std::vector<Json>& events) {
  std::vector<std::string> out;
  for (const Json& e : events)
    out.push_back(e["operationName"].get<std::string>() + " " + e["resultSignature"].get<std::string>());
  return out;
}

class AuditTest : public AbiTest {
 protected:
  void SetUp() override {
    LoadModule();
    audit_path = dir.file("audit.log");
    config_path = WriteConfig("", "login: { delay_ms: 0 }\naudit:\n  sinks:\n    - { type: file, path: " + audit_path + " }\n");
    ASSERT_EQ(InitWith(config_path), CKR_OK);
  }

  // Finalizes (which flushes the recorder) and returns every event written so far.
  std::vector<Json> Finish() {
    if (initialized) {
      EXPECT_EQ(f->C_Finalize(nullptr), CKR_OK);
    }
    initialized = false;
    return ReadEvents(audit_path);
  }

  CK_OBJECT_HANDLE CreateSecret(CK_SESSION_HANDLE s, const std::string& label, const std::string& value) {
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_TOKEN, &t, 1},
                           {CKA_PRIVATE, &t, 1},
                           {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                           {CKA_VALUE, const_cast<char*>(value.data()), value.size()}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(f->C_CreateObject(s, tmpl, std::size(tmpl), &h), CKR_OK);
    return h;
  }

  std::string audit_path;
};

// Each call that is an operation gives one event, with the service's operation name; a
// multi-call operation (SignInit + two C_Sign calls) gives one; a search gives one however many
// C_FindObjects calls read it; calls that are no operation (sessions, slots) give none.
TEST_F(AuditTest, EveryOperationClassGivesExactlyItsEvent) {
  CK_SESSION_HANDLE s = OpenRw();
  ASSERT_EQ(Login(s, "app:wrong"), CKR_PIN_INCORRECT);
  ASSERT_EQ(Login(s), CKR_OK);
  CK_OBJECT_HANDLE pub = 0, priv = 0;
  GenEc(s, kP256, "signer", &pub, &priv);
  ASSERT_EQ(FindByLabel(s, "signer").size(), 2u);
  CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
  auto sig = Sign(s, ecdsa, priv, Bytes("hello"));
  ASSERT_EQ(Verify(s, ecdsa, pub, Bytes("hello"), sig), CKR_OK);
  ASSERT_EQ(Verify(s, ecdsa, pub, Bytes("other"), sig), CKR_SIGNATURE_INVALID);
  CK_BYTE label[32];
  CK_ATTRIBUTE get{CKA_LABEL, label, sizeof(label)};
  ASSERT_EQ(f->C_GetAttributeValue(s, priv, &get, 1), CKR_OK);
  std::string version(32, '\0');  // one more KeyGet: the events record the version
  CK_ATTRIBUTE get_version{CKA_VAULTP11_VERSION, version.data(), version.size()};
  ASSERT_EQ(f->C_GetAttributeValue(s, priv, &get_version, 1), CKR_OK);
  CK_OBJECT_HANDLE aes = GenAes(s, 32, "data-key");
  CK_MECHANISM cbc{CKM_AES_CBC_PAD, nullptr, 0};
  std::vector<uint8_t> iv(16, 7);
  cbc.pParameter = iv.data();
  cbc.ulParameterLen = iv.size();
  ASSERT_EQ(f->C_EncryptInit(s, &cbc, aes), CKR_OK);
  std::vector<uint8_t> ct(64);
  CK_ULONG ct_len = ct.size();
  auto pt = Bytes("plaintext");
  ASSERT_EQ(f->C_Encrypt(s, pt.data(), pt.size(), ct.data(), &ct_len), CKR_OK);
  ASSERT_EQ(f->C_DecryptInit(s, &cbc, aes), CKR_OK);
  std::vector<uint8_t> back(64);
  CK_ULONG back_len = back.size();
  ASSERT_EQ(f->C_Decrypt(s, ct.data(), ct_len, back.data(), &back_len), CKR_OK);
  CK_OBJECT_HANDLE secret = CreateSecret(s, "db-password", kSecretValue);
  CK_BYTE value[128];
  CK_ATTRIBUTE val{CKA_VALUE, value, sizeof(value)};
  ASSERT_EQ(f->C_GetAttributeValue(s, secret, &val, 1), CKR_OK);
  std::string relabel = "renamed";
  CK_ATTRIBUTE set{CKA_LABEL, relabel.data(), relabel.size()};
  ASSERT_EQ(f->C_SetAttributeValue(s, secret, &set, 1), CKR_OK);
  ASSERT_EQ(f->C_DestroyObject(s, secret), CKR_OK);
  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  ASSERT_EQ(f->C_CloseSession(s), CKR_OK);

  auto events = Finish();
  EXPECT_THAT(Summary(events),
              ElementsAre("Authentication Unauthorized", "Authentication OK", "KeyCreate OK", "KeyList OK", "KeySign OK",
                          "KeyVerify OK", "KeyVerify BadRequest", "KeyGet OK", "KeyGet OK", "KeyCreate OK", "KeyEncrypt OK",
                          "KeyDecrypt OK", "SecretSet OK", "SecretGet OK", "SecretUpdate OK", "SecretDelete OK",
                          "Logout OK"));
  ASSERT_EQ(events.size(), 17u);
  // The fields of one event in full.
  const Json& sign = events[4];
  EXPECT_EQ(sign["category"], "AuditEvent");
  EXPECT_EQ(sign["operationVersion"], "1.0");
  EXPECT_EQ(sign["resultType"], "Success");
  EXPECT_EQ(sign["identity"]["principal"], "app");
  EXPECT_EQ(sign["identity"]["authMethod"], "client_secret");
  EXPECT_EQ(sign["caller"]["pid"], getpid());
  EXPECT_EQ(sign["caller"]["uid"], getuid());
  EXPECT_THAT(sign["caller"]["executable"].get<std::string>(), HasSubstr("abi_tests"));
  // Every event names this machine, so merged logs of several hosts still say where it was.
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  for (const Json& e : events) EXPECT_EQ(e.value("host", ""), host) << e.dump();
  EXPECT_EQ(sign["properties"]["vault"], "payments");
  EXPECT_EQ(sign["properties"]["kind"], "key");
  EXPECT_EQ(sign["properties"]["name"], "signer");
  EXPECT_EQ(sign["properties"]["mechanism"], "CKM_ECDSA_SHA256");
  EXPECT_EQ(sign["properties"]["rv"], "CKR_OK");
  EXPECT_EQ(sign["properties"]["version"], version);
  EXPECT_EQ(events[2]["properties"]["version"], sign["properties"]["version"]);  // the KeyCreate
  EXPECT_TRUE(sign["durationMs"].is_number());
  EXPECT_GE(sign["durationMs"].get<double>(), 0.0);
  EXPECT_THAT(sign["time"].get<std::string>(), ::testing::MatchesRegex(
                                                   "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z"));
  EXPECT_EQ(events[3]["properties"]["count"], 2);
  EXPECT_EQ(events[3]["properties"]["name"], "signer");
  EXPECT_EQ(events[6]["properties"]["rv"], "CKR_SIGNATURE_INVALID");
  EXPECT_EQ(events[0]["identity"]["principal"], "app");  // the claimed name of a failed login
  EXPECT_EQ(events[0]["resultType"], "Failure");
  EXPECT_EQ(events[12]["properties"]["kind"], "secret");
  EXPECT_EQ(events[12]["properties"]["name"], "db-password");
  // Correlation ids are unique.
  std::set<std::string> ids;
  for (const Json& e : events) ids.insert(e["correlationId"].get<std::string>());
  EXPECT_EQ(ids.size(), events.size());
  // The file is one intact chain.
  auto verdict = audit::VerifyFile(audit_path);
  ASSERT_TRUE(verdict.ok());
  EXPECT_TRUE(verdict->intact) << verdict->problem;
}

// Denials are recorded as such, with the object's name, even where the caller is told the
// handle does not exist (no existence oracle for it, full detail for the auditor).
TEST_F(AuditTest, DenialsAreRecordedWithWhoAndWhat) {
  CK_SESSION_HANDLE s = OpenRw();
  ASSERT_EQ(Login(s), CKR_OK);
  CK_OBJECT_HANDLE pub = 0, priv = 0;
  GenEc(s, kP256, "payroll-signer", &pub, &priv);
  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  // Nobody logged in: the private key is not there for the caller.
  EXPECT_EQ(f->C_SignInit(s, &ecdsa, priv), CKR_KEY_HANDLE_INVALID);
  ASSERT_EQ(Login(s, kNoRolePin), CKR_OK);
  EXPECT_EQ(f->C_SignInit(s, &ecdsa, priv), CKR_KEY_HANDLE_INVALID);
  CK_OBJECT_HANDLE p2 = 0, v2 = 0;
  CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL t = CK_TRUE;
  std::string lbl = "sneaky";
  CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()}, {CKA_TOKEN, &t, 1}};
  CK_ATTRIBUTE vt[] = {{CKA_LABEL, lbl.data(), lbl.size()}, {CKA_TOKEN, &t, 1}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 2, vt, 2, &p2, &v2), CKR_ACTION_PROHIBITED);
  auto events = Finish();
  EXPECT_THAT(Summary(events), ElementsAre("Authentication OK", "KeyCreate OK", "Logout OK", "KeySign Unauthorized",
                                           "Authentication OK", "KeySign Forbidden", "KeyCreate Forbidden"));
  ASSERT_EQ(events.size(), 7u);
  EXPECT_EQ(events[3]["identity"]["principal"], "");
  EXPECT_EQ(events[3]["properties"]["name"], "payroll-signer");
  EXPECT_EQ(events[3]["properties"]["rv"], "CKR_KEY_HANDLE_INVALID");
  EXPECT_EQ(events[5]["identity"]["principal"], "norole");
  EXPECT_EQ(events[5]["properties"]["name"], "payroll-signer");
  EXPECT_EQ(events[5]["properties"]["mechanism"], "CKM_ECDSA");
  EXPECT_EQ(events[6]["properties"]["name"], "sneaky");
  EXPECT_EQ(events[6]["resultType"], "Failure");
}

// Issue 16, item 8: a caller that is refused again and again must not fill the disk. Identical
// denials within audit.coalesce_seconds are written once, then counted, and one summary event
// carries the count (audit/recorder.h); nothing is lost: the counts add up to the calls. The
// window here is longer than the test, so the summary comes from C_Finalize, not from a timer.
TEST_F(AuditTest, RepeatedDenialsAreCoalescedIntoCountedSummaries) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  audit_path = dir.file("coalesced.log");
  config_path = WriteConfig("", "login: { delay_ms: 0 }\naudit:\n  coalesce_seconds: 86400\n  sinks:\n    - { type: file, "
                                "path: " + audit_path + " }\n");
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  CK_SESSION_HANDLE s = OpenRw();
  ASSERT_EQ(Login(s), CKR_OK);
  CK_OBJECT_HANDLE pub = 0, priv = 0;
  GenEc(s, kP256, "payroll-signer", &pub, &priv);
  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  constexpr int kCalls = 10000;
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(f->C_SignInit(s, &ecdsa, priv), CKR_KEY_HANDLE_INVALID);
  // A different denial (another mechanism) is its own series; successes are never coalesced.
  CK_MECHANISM ecdsa_sha{CKM_ECDSA_SHA256, nullptr, 0};
  for (int i = 0; i < 3; ++i) ASSERT_EQ(f->C_SignInit(s, &ecdsa_sha, priv), CKR_KEY_HANDLE_INVALID);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(f->C_FindObjectsInit(s, nullptr, 0), CKR_OK);
    ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  }
  auto events = Finish();
  EXPECT_THAT(Summary(events), ElementsAre("Authentication OK", "KeyCreate OK", "Logout OK", "KeySign Unauthorized",
                                           "KeySign Unauthorized", "KeyList OK", "KeyList OK", "KeyList OK",
                                           "KeySign Unauthorized", "KeySign Unauthorized"));
  ASSERT_EQ(events.size(), 10u);
  // Each denial line stands for one call, or for repeatCount more after its series' first.
  auto calls = [&](const std::string& mechanism) {
    int64_t n = 0;
    for (const Json& e : events) {
      if (e["operationName"] != "KeySign" || e["properties"].value("mechanism", "") != mechanism) continue;
      n += e["properties"].contains("repeatCount") ? e["properties"]["repeatCount"].get<int64_t>() : 1;
    }
    return n;
  };
  EXPECT_EQ(calls("CKM_ECDSA"), kCalls);
  EXPECT_EQ(calls("CKM_ECDSA_SHA256"), 3);
  // The summaries: the first event's who and what, with the count and the span of times.
  for (const Json* e : {&events[8], &events[9]}) {
    EXPECT_EQ((*e)["properties"]["name"], "payroll-signer");
    EXPECT_EQ((*e)["properties"]["rv"], "CKR_KEY_HANDLE_INVALID");
    EXPECT_EQ((*e)["identity"]["principal"], "");
    EXPECT_EQ((*e)["caller"]["pid"], getpid());
    EXPECT_LE((*e)["properties"]["firstTime"].get<std::string>(), (*e)["properties"]["lastTime"].get<std::string>());
  }
  EXPECT_FALSE(events[3]["properties"].contains("repeatCount"));
  // Still one intact chain.
  auto verdict = audit::VerifyFile(audit_path);
  ASSERT_TRUE(verdict.ok());
  EXPECT_TRUE(verdict->intact) << verdict->problem;
}

// Issue 16, item 8: the files of a file sink stay under max_total_bytes (default 1 GiB, see
// config.h): at each rotation the oldest rotated files go; the newest rotated one, which the
// current file continues, always stays, and what is left is one intact chain.
TEST_F(AuditTest, FileSinksKeepTheirFilesUnderTheTotalCap) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  audit_path = dir.file("capped/audit.log");
  std::filesystem::create_directory(dir.file("capped"));
  config_path = WriteConfig("", "audit:\n  sinks:\n    - { type: file, path: " + audit_path +
                                    ", max_bytes: 4096, max_total_bytes: 16384 }\n");
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  CK_SESSION_HANDLE s = OpenRo();
  auto total = [&] {
    uint64_t n = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir.file("capped")))
      if (entry.path().extension() == ".log") n += entry.file_size();
    return n;
  };
  uint64_t peak = 0;
  for (int i = 0; i < 150; ++i) {
    ASSERT_EQ(f->C_FindObjectsInit(s, nullptr, 0), CKR_OK);  // one KeyList event each
    ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
    if (i % 5 == 4) {
      // Written out (a batch of five events, less than max_bytes) and measured.
      ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
      initialized = false;
      peak = std::max(peak, total());
      ASSERT_EQ(InitWith(config_path), CKR_OK);
      s = OpenRo();
    }
  }
  Finish();
  peak = std::max(peak, total());
  // The cap holds at each rotation; until the next one the current file may grow by max_bytes.
  EXPECT_LE(peak, 16384u + 4096u);
  size_t rotated = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("capped")))
    if (entry.path().filename().string().starts_with("audit-")) ++rotated;
  EXPECT_GE(rotated, 2u);
  auto verdict = audit::VerifyFile(audit_path);
  ASSERT_TRUE(verdict.ok());
  EXPECT_TRUE(verdict->intact) << verdict->problem;
  EXPECT_NE(verdict->first_prev, audit::kGenesisHash);  // older files were deleted
}

// An operation begun and never finished (its session closed) is recorded as cancelled; length
// queries and a too-small buffer do not end an operation.
TEST_F(AuditTest, UnfinishedOperationsAreRecordedAsCancelled) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub = 0, priv = 0;
  GenEc(s, kP256, "k", &pub, &priv);
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  ASSERT_EQ(f->C_SignInit(s, &ecdsa, priv), CKR_OK);
  std::vector<uint8_t> digest(32, 1), sig(4);
  CK_ULONG len = sig.size();
  ASSERT_EQ(f->C_Sign(s, digest.data(), digest.size(), sig.data(), &len), CKR_BUFFER_TOO_SMALL);
  ASSERT_EQ(f->C_CloseSession(s), CKR_OK);
  auto events = Finish();
  EXPECT_THAT(Summary(events), ElementsAre("Authentication OK", "KeyCreate OK", "KeySign Cancelled"));
}

// The text before the first ':' of a PIN that names no principal may be anything the user
// typed, a secret included ("secret:name" typed the wrong way round): the audit log and the
// store's failed-login rows carry a keyed hash of it, never the text, and the same text gives
// the same hash, so its failures still count (issue 16 item 9; README "Principals and login").
TEST_F(AuditTest, UnknownPrincipalNamesAreNeverWrittenAsText) {
  CK_SESSION_HANDLE s = OpenRo();
  const std::string typed = "secret-text-8c1f:app";
  ASSERT_EQ(Login(s, typed), CKR_PIN_INCORRECT);
  ASSERT_EQ(Login(s, typed), CKR_PIN_INCORRECT);
  CK_TOKEN_INFO ti;
  ASSERT_EQ(f->C_GetTokenInfo(0, &ti), CKR_OK);
  EXPECT_NE(ti.flags & CKF_USER_PIN_COUNT_LOW, 0u);  // counted under the hash
  // C_LoginUser: the username is the claimed name.
  CK_FUNCTION_LIST_3_0* f3 = Module30();
  ASSERT_NE(f3, nullptr);
  std::string user = "secret-text-77ad", pin = "whatever";
  EXPECT_EQ(f3->C_LoginUser(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size(),
                            reinterpret_cast<CK_UTF8CHAR_PTR>(user.data()), user.size()),
            CKR_PIN_INCORRECT);
  // A known principal is still named as itself.
  ASSERT_EQ(Login(s, "app:wrong"), CKR_PIN_INCORRECT);
  auto events = Finish();
  // Events per recorded principal, in any order (identical denials may be coalesced into an
  // event and a later summary of its repeats): the first name twice, the username once, app once.
  std::map<std::string, int> per_principal;
  for (const Json& e : events) ++per_principal[e["identity"]["principal"].get<std::string>()];
  ASSERT_EQ(per_principal.size(), 3u) << ::testing::PrintToString(per_principal);
  EXPECT_EQ(per_principal["app"], 1);
  std::vector<int> unknown_counts;
  for (const auto& [who, n] : per_principal) {
    if (who == "app") continue;
    EXPECT_THAT(who, ::testing::MatchesRegex("unknown:[0-9a-f]{32}"));
    unknown_counts.push_back(n);
  }
  EXPECT_THAT(unknown_counts, ::testing::UnorderedElementsAre(2, 1));
  // Raw bytes of the audit log and of every file of the store (database, WAL, shared memory).
  EXPECT_EQ(ReadAll(audit_path).find("secret-text"), std::string::npos);
  for (const char* suffix : {"", "-wal", "-shm", "-journal"})
    EXPECT_EQ(ReadAll(dir.file(std::string("store.db") + suffix)).find("secret-text"), std::string::npos)
        << "store.db" << suffix;
}

// Nothing secret in the sink: not the client secret, not a secret's value, not key bytes (an
// extractable key's value read by the caller, in raw and hex form).
TEST_F(AuditTest, NoSecretReachesTheSink) {
  CK_SESSION_HANDLE s = OpenRw();
  ASSERT_EQ(Login(s, "app:correct horse battery"), CKR_PIN_INCORRECT);
  ASSERT_EQ(Login(s), CKR_OK);
  CK_OBJECT_HANDLE secret = CreateSecret(s, "api-token", kSecretValue);
  CK_BYTE value[128];
  CK_ATTRIBUTE val{CKA_VALUE, value, sizeof(value)};
  ASSERT_EQ(f->C_GetAttributeValue(s, secret, &val, 1), CKR_OK);
  CK_OBJECT_HANDLE aes = GenAes(s, 32, "exportable", true, /*extractable=*/true, /*sensitive=*/false);
  auto key_bytes = GetAttr(s, aes, CKA_VALUE);
  ASSERT_EQ(key_bytes.size(), 32u);
  auto events = Finish();
  ASSERT_GE(events.size(), 5u);
  const std::string all = ReadAll(audit_path);
  EXPECT_THAT(all, Not(HasSubstr("correct horse")));
  EXPECT_THAT(all, Not(HasSubstr(kSecretValue)));
  EXPECT_THAT(all, Not(HasSubstr(Hex(key_bytes))));
  EXPECT_THAT(all, Not(HasSubstr(std::string(key_bytes.begin(), key_bytes.end()))));
}

// Another process (abi_child, started by fork + exec) has its own recorder; both append to one
// file, which stays one chain. That process forks with its audit writer alive (the module's fork
// handlers park it; the forked child, not yet initialised, records nothing), and exits without
// C_Finalize: its exit handler still writes its queued events.
TEST_F(AuditTest, ForkedChildrenAndExitWithoutFinalizeAreRecorded) {
  CK_SESSION_HANDLE s = OpenRw();
  ASSERT_EQ(Login(s), CKR_OK);
  ASSERT_EQ(RunChild({"init", "0", "open-ro", "login", "0", kNoRolePin, "fork-check", "exit"}), 0);
  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  auto events = Finish();
  std::vector<std::string> child_ops, parent_ops;
  for (const Json& e : events)
    (e["caller"]["pid"] != getpid() ? child_ops : parent_ops)
        .push_back(e["operationName"].get<std::string>() + " " +
                   e["identity"]["principal"].get<std::string>());
  EXPECT_THAT(child_ops, ElementsAre("Authentication norole"));
  EXPECT_THAT(parent_ops, ElementsAre("Authentication app", "Logout app"));
  auto verdict = audit::VerifyFile(audit_path);
  ASSERT_TRUE(verdict.ok());
  EXPECT_TRUE(verdict->intact) << verdict->problem;
}

// A bound unix datagram socket standing for the syslog daemon.
class DatagramReceiver {
 public:
  explicit DatagramReceiver(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    bound_ = bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    timeval tv{10, 0};  // a bound on a broken test, not a wait: messages are already sent
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~DatagramReceiver() { close(fd_); }
  bool bound() const { return bound_; }
  std::string Receive() {
    char buf[65536];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
};

// Several sinks at once: a file and syslog get the same events; a file sink that cannot write
// (a full disk: /dev/full) breaks no crypto call, and the other sinks are told.
TEST_F(AuditTest, SeveralSinksAndAFailingOneDoesNotBreakCrypto) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  const std::string syslog_path = dir.file("log.sock");
  DatagramReceiver syslog(syslog_path);
  ASSERT_TRUE(syslog.bound());
  config_path = WriteConfig("", "audit:\n  sinks:\n    - { type: file, path: /dev/full }\n    - { type: file, path: " +
                                    audit_path + " }\n    - { type: syslog, socket: " + syslog_path +
                                    ", facility: local3, ident: vp11test }\n");
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub = 0, priv = 0;
  GenEc(s, kP256, "still-works", &pub, &priv);
  CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
  auto sig = Sign(s, ecdsa, priv, Bytes("data"));
  EXPECT_EQ(Verify(s, ecdsa, pub, Bytes("data"), sig), CKR_OK);
  auto events = Finish();
  auto summary = Summary(events);
  // The failing sink is reported to the others once, not once per batch.
  EXPECT_EQ(std::count(summary.begin(), summary.end(), "AuditSinkFailed DeviceError"), 1);
  for (const Json& e : events) {
    if (e["operationName"] == "AuditSinkFailed") {
      EXPECT_EQ(e["properties"]["sink"], "file /dev/full");
    }
  }
  EXPECT_EQ(std::count(summary.begin(), summary.end(), "KeySign OK"), 1);
  // syslog got the crypto events too, as RFC 5424 messages carrying the JSON.
  bool saw_sign = false;
  for (int i = 0; i < 8 && !saw_sign; ++i) {
    std::string m = syslog.Receive();
    ASSERT_FALSE(m.empty());
    EXPECT_THAT(m, HasSubstr("vp11test"));
    EXPECT_THAT(m, Not(HasSubstr("correct horse")));  // the login's secret
    saw_sign = m.find("\"KeySign\"") != std::string::npos;
  }
  EXPECT_TRUE(saw_sign);
}

// A collector that goes away in the middle of a run: crypto goes on, the other sinks are told
// once, and what reached the collector before holds no credential.
TEST_F(AuditTest, ACollectorThatGoesAwayBreaksNoCryptoAndIsReported) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  const std::string sock_path = dir.file("collector.sock");
  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, sock_path.c_str(), sizeof(a.sun_path) - 1);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(listener, 4), 0);
  config_path = WriteConfig("", "audit:\n  sinks:\n    - { type: socket, socket: " + sock_path +
                                    " }\n    - { type: file, path: " + audit_path + " }\n");
  ASSERT_EQ(InitWith(config_path), CKR_OK);  // the sink connects here
  int conn = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(conn, 0);
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub = 0, priv = 0;
  GenEc(s, kP256, "collected", &pub, &priv);
  CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
  Sign(s, ecdsa, priv, Bytes("one"));
  // The writer sends within its interval: read until the signature's event arrived.
  std::string received;
  while (received.find("\"KeySign\"") == std::string::npos) {
    pollfd p{conn, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 10000), 1) << "no event reached the collector";
    char buf[4096];
    ssize_t n = read(conn, buf, sizeof(buf));
    ASSERT_GT(n, 0);
    received.append(buf, static_cast<size_t>(n));
  }
  EXPECT_THAT(received, HasSubstr("\"Authentication\""));
  EXPECT_THAT(received, Not(HasSubstr("correct horse")));
  close(conn);
  close(listener);
  unlink(sock_path.c_str());
  EXPECT_EQ(Sign(s, ecdsa, priv, Bytes("two")).size(), 64u);
  EXPECT_EQ(Sign(s, ecdsa, priv, Bytes("three")).size(), 64u);
  auto summary = Summary(Finish());
  EXPECT_EQ(std::count(summary.begin(), summary.end(), "KeySign OK"), 3);
  EXPECT_EQ(std::count(summary.begin(), summary.end(), "AuditSinkFailed DeviceError"), 1);
}

// A sink that cannot be opened fails C_Initialize when audit.required is true; otherwise the
// module starts and the other sinks record.
TEST_F(AuditTest, MisconfiguredSinkFailsInitializeOnlyWhenRequired) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  const std::string missing = dir.file("no-collector.sock");
  const std::string sinks = "  sinks:\n    - { type: socket, socket: " + missing + " }\n    - { type: file, path: " +
                            audit_path + " }\n";
  config_path = WriteConfig("", "audit:\n  required: true\n" + sinks);
  EXPECT_EQ(InitWith(config_path), CKR_FUNCTION_FAILED);
  config_path = WriteConfig("", "audit:\n  required: false\n" + sinks);
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  CK_SESSION_HANDLE s = OpenRw();
  ASSERT_EQ(Login(s), CKR_OK);
  auto events = Finish();
  EXPECT_THAT(Summary(events), ::testing::Contains("Authentication OK"));
}

// Role changes reach running processes through a config reload at the next login; each reload
// is audited with what changed, and a file that was not taken is audited as refused.
TEST_F(AuditTest, ConfigReloadsAreAuditedWithTheChanges) {
  const std::string top = "login: { delay_ms: 0 }\naudit:\n  sinks:\n    - { type: file, path: " + audit_path + " }\n";
  WriteConfig("  - { principal: norole, role: Key Vault Reader, scope: /vaults/payments }\n", top);
  CK_SESSION_HANDLE s = OpenRw();
  ASSERT_EQ(Login(s, kNoRolePin), CKR_OK);
  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  std::ofstream(config_path, std::ios::app) << "this is: [not valid\n";
  ASSERT_EQ(Login(s, kNoRolePin), CKR_OK);  // the version in use still applies
  auto events = Finish();
  EXPECT_THAT(Summary(events), ElementsAre("AuthorizationChange OK", "Authentication OK", "Logout OK",
                                           "AuthorizationChange BadRequest", "Authentication OK"));
  ASSERT_EQ(events.size(), 5u);
  const Json& change = events[0]["properties"];
  EXPECT_EQ(change["config"], config_path);
  EXPECT_THAT(change["roleAssignmentsAdded"], ElementsAre("norole | Key Vault Reader | /vaults/payments"));
  EXPECT_TRUE(change["roleAssignmentsRemoved"].empty());
  EXPECT_TRUE(change["principalsAdded"].empty());
  EXPECT_THAT(events[0]["identity"]["principal"].get<std::string>(), ::testing::StartsWith("os:"));
  EXPECT_THAT(events[3]["resultDescription"].get<std::string>(), HasSubstr("not applied"));
}

}  // namespace
}  // namespace vaultp11::testing
