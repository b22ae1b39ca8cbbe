// Names and versions through the function list (vaultp11.h "Names and versions"): a label in
// use is refused unless a new version is asked for; pkcs11:object=NAME finds the current
// version only; older versions stay usable and are found by CKA_ID and CKA_VAULTP11_VERSION;
// the CKA_ID scheme; another process's new version is seen without restart; secrets' limits.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "fixture.h"
#include "store/store.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::testing {
namespace {

class VersionsTest : public AbiTest {
 protected:
  void SetUp() override {
    AbiTest::SetUp();
    s = LoggedInRw();
  }

  std::vector<CK_OBJECT_HANDLE> Find(std::vector<CK_ATTRIBUTE> t) {
    EXPECT_EQ(f->C_FindObjectsInit(s, t.data(), t.size()), CKR_OK);
    std::vector<CK_OBJECT_HANDLE> out(64);
    CK_ULONG n = 0;
    EXPECT_EQ(f->C_FindObjects(s, out.data(), out.size(), &n), CKR_OK);
    EXPECT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
    out.resize(n);
    return out;
  }
  std::vector<CK_OBJECT_HANDLE> FindPrivate(const std::string& label) {
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    return Find({{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, const_cast<char*>(label.data()), label.size()}});
  }
  std::string Version(CK_OBJECT_HANDLE o) {
    auto v = GetAttr(s, o, CKA_VAULTP11_VERSION);
    return std::string(v.begin(), v.end());
  }
  CK_RV CreateData(const std::string& label, const std::string& value, bool new_version, CK_OBJECT_HANDLE* h,
                   const std::string& content_type = "") {
    CK_OBJECT_CLASS data = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    std::vector<CK_ATTRIBUTE> t = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1},
                                   {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                                   {CKA_VALUE, const_cast<char*>(value.data()), value.size()}};
    if (new_version) t.push_back({CKA_VAULTP11_NEW_VERSION, &yes, 1});
    if (!content_type.empty())
      t.push_back({CKA_VAULTP11_CONTENT_TYPE, const_cast<char*>(content_type.data()), content_type.size()});
    return f->C_CreateObject(s, t.data(), t.size(), h);
  }
  CK_RV GenEcRv(const std::string& label, const std::vector<uint8_t>& id, bool new_version, CK_OBJECT_HANDLE* pub,
                CK_OBJECT_HANDLE* priv) {
    CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_BBOOL t = CK_TRUE;
    std::vector<CK_ATTRIBUTE> pt = {{CKA_TOKEN, &t, 1}, {CKA_VERIFY, &t, 1},
                                    {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                                    {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    std::vector<CK_ATTRIBUTE> vt = {{CKA_TOKEN, &t, 1}, {CKA_PRIVATE, &t, 1}, {CKA_SIGN, &t, 1},
                                    {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    if (!id.empty()) {
      pt.push_back({CKA_ID, const_cast<uint8_t*>(id.data()), id.size()});
      vt.push_back({CKA_ID, const_cast<uint8_t*>(id.data()), id.size()});
    }
    if (new_version) pt.push_back({CKA_VAULTP11_NEW_VERSION, &t, 1});  // either template may ask
    return f->C_GenerateKeyPair(s, &mech, pt.data(), pt.size(), vt.data(), vt.size(), pub, priv);
  }
  // Another application on the same store adds a new version of item `label` (an EC key pair);
  // its exit status (0: done).
  int NewVersionInAnotherProcess(const std::string& label) {
    return InAnotherProcess({"gen-ec-version", label});
  }
  size_t CountAll() { return Find({}).size(); }

  CK_SESSION_HANDLE s = 0;
  const CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
};

bool IsVersionId(const std::string& v) {
  if (v.size() != 32) return false;
  for (char c : v)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::vector<uint8_t> BytesOfHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

TEST_F(VersionsTest, ALabelInUseIsRefusedUnlessANewVersionIsAskedFor) {
  CK_OBJECT_HANDLE pub1, priv1, pub2, priv2;
  ASSERT_EQ(GenEcRv("signer", {}, false, &pub1, &priv1), CKR_OK);
  const size_t before = CountAll();
  EXPECT_EQ(GenEcRv("signer", {}, false, &pub2, &priv2), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(CountAll(), before) << "a refused pair left an object behind";
  ASSERT_EQ(GenEcRv("signer", {}, true, &pub2, &priv2), CKR_OK);
  EXPECT_EQ(CountAll(), before) << "the older version must not be listed by an empty template";

  const std::string v1 = Version(priv1), v2 = Version(priv2);
  EXPECT_TRUE(IsVersionId(v1)) << v1;
  EXPECT_TRUE(IsVersionId(v2)) << v2;
  EXPECT_NE(v1, v2);
  EXPECT_EQ(Version(pub1), v1);
  EXPECT_EQ(Version(pub2), v2);
  // CKA_ID scheme: no CKA_ID given, so each version's id is its version's 16 bytes, on both halves.
  EXPECT_EQ(GetAttr(s, priv1, CKA_ID), BytesOfHex(v1));
  EXPECT_EQ(GetAttr(s, pub1, CKA_ID), BytesOfHex(v1));
  EXPECT_EQ(GetAttr(s, priv2, CKA_ID), BytesOfHex(v2));
  // The version attribute is the token's to set.
  std::string forged(32, 'a');
  CK_ATTRIBUTE set[] = {{CKA_VAULTP11_VERSION, forged.data(), forged.size()}};
  EXPECT_EQ(f->C_SetAttributeValue(s, priv2, set, 1), CKR_ATTRIBUTE_READ_ONLY);
}

TEST_F(VersionsTest, TheLabelFindsTheCurrentVersionAndOlderOnesByIdOrVersion) {
  CK_OBJECT_HANDLE pub1, priv1, pub2, priv2, pub3, priv3;
  ASSERT_EQ(GenEcRv("rot", {}, false, &pub1, &priv1), CKR_OK);
  ASSERT_EQ(GenEcRv("rot", {}, true, &pub2, &priv2), CKR_OK);
  ASSERT_EQ(GenEcRv("rot", {}, true, &pub3, &priv3), CKR_OK);
  EXPECT_EQ(FindPrivate("rot"), std::vector<CK_OBJECT_HANDLE>{priv3});
  EXPECT_EQ(FindByLabel(s, "rot"), (std::vector<CK_OBJECT_HANDLE>{std::min(pub3, priv3), std::max(pub3, priv3)}));

  auto id1 = GetAttr(s, priv1, CKA_ID);
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  EXPECT_EQ(Find({{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, id1.data(), id1.size()}}), std::vector<CK_OBJECT_HANDLE>{priv1});
  std::string v2 = Version(priv2), label = "rot";
  EXPECT_EQ(Find({{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label.data(), label.size()},
                  {CKA_VAULTP11_VERSION, v2.data(), v2.size()}}),
            std::vector<CK_OBJECT_HANDLE>{priv2});

  // Destroying the current version makes the one before it current.
  ASSERT_EQ(f->C_DestroyObject(s, priv3), CKR_OK);
  ASSERT_EQ(f->C_DestroyObject(s, pub3), CKR_OK);
  EXPECT_EQ(FindPrivate("rot"), std::vector<CK_OBJECT_HANDLE>{priv2});
}

TEST_F(VersionsTest, OlderVersionsStayUsable) {
  CK_OBJECT_HANDLE pub1, priv1, pub2, priv2;
  ASSERT_EQ(GenEcRv("sig", {}, false, &pub1, &priv1), CKR_OK);
  const auto msg = Bytes("signed before the rotation");
  const auto old_sig = Sign(s, ecdsa, priv1, msg);
  ASSERT_FALSE(old_sig.empty());
  ASSERT_EQ(GenEcRv("sig", {}, true, &pub2, &priv2), CKR_OK);
  // New signatures come from the current version; the old public key still verifies old ones.
  auto current = FindPrivate("sig");
  ASSERT_EQ(current.size(), 1u);
  const auto new_sig = Sign(s, ecdsa, current[0], msg);
  EXPECT_EQ(Verify(s, ecdsa, pub2, msg, new_sig), CKR_OK);
  EXPECT_EQ(Verify(s, ecdsa, pub2, msg, old_sig), CKR_SIGNATURE_INVALID);
  EXPECT_EQ(Verify(s, ecdsa, pub1, msg, old_sig), CKR_OK);

  // AES: ciphertext of version 1 decrypts with version 1 after version 2 exists.
  CK_OBJECT_HANDLE k1 = GenAes(s, 32, "data-key");
  CK_BYTE iv[16] = {1, 2, 3};
  CK_MECHANISM cbc{CKM_AES_CBC_PAD, iv, sizeof(iv)};
  std::vector<uint8_t> plain = Bytes("encrypted under version 1"), ct(64);
  CK_ULONG n = ct.size();
  ASSERT_EQ(f->C_EncryptInit(s, &cbc, k1), CKR_OK);
  ASSERT_EQ(f->C_Encrypt(s, plain.data(), plain.size(), ct.data(), &n), CKR_OK);
  ct.resize(n);
  CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
  CK_BBOOL yes = CK_TRUE;
  CK_ULONG len = 32;
  std::string label = "data-key";
  CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_ENCRYPT, &yes, 1},
                      {CKA_DECRYPT, &yes, 1}, {CKA_LABEL, label.data(), label.size()}};
  CK_OBJECT_HANDLE k2;
  EXPECT_EQ(f->C_GenerateKey(s, &gen, t, 5, &k2), CKR_ATTRIBUTE_VALUE_INVALID);
  CK_ATTRIBUTE tv[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_ENCRYPT, &yes, 1},
                       {CKA_DECRYPT, &yes, 1}, {CKA_LABEL, label.data(), label.size()},
                       {CKA_VAULTP11_NEW_VERSION, &yes, 1}};
  ASSERT_EQ(f->C_GenerateKey(s, &gen, tv, 6, &k2), CKR_OK);
  auto id1 = GetAttr(s, k1, CKA_ID);
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
  auto by_id = Find({{CKA_CLASS, &secret, sizeof(secret)}, {CKA_ID, id1.data(), id1.size()}});
  ASSERT_EQ(by_id, std::vector<CK_OBJECT_HANDLE>{k1});
  std::vector<uint8_t> out(64);
  n = out.size();
  ASSERT_EQ(f->C_DecryptInit(s, &cbc, by_id[0]), CKR_OK);
  ASSERT_EQ(f->C_Decrypt(s, ct.data(), ct.size(), out.data(), &n), CKR_OK);
  out.resize(n);
  EXPECT_EQ(out, plain);
}

TEST_F(VersionsTest, AGivenCkaIdIsKeptAndMustDifferBetweenVersions) {
  CK_OBJECT_HANDLE pub, priv, pub2, priv2;
  const std::vector<uint8_t> id = {0x01}, id2 = {0x02};
  ASSERT_EQ(GenEcRv("given", id, false, &pub, &priv), CKR_OK);
  EXPECT_EQ(GetAttr(s, priv, CKA_ID), id);
  EXPECT_EQ(GenEcRv("given", id, true, &pub2, &priv2), CKR_ATTRIBUTE_VALUE_INVALID);
  ASSERT_EQ(GenEcRv("given", id2, true, &pub2, &priv2), CKR_OK);
  EXPECT_EQ(GetAttr(s, priv2, CKA_ID), id2);
  // Nor may a CKA_ID change make two versions share one.
  CK_ATTRIBUTE set[] = {{CKA_ID, const_cast<uint8_t*>(id.data()), id.size()}};
  EXPECT_EQ(f->C_SetAttributeValue(s, priv2, set, 1), CKR_ATTRIBUTE_VALUE_INVALID);
}

TEST_F(VersionsTest, AnObjectJoinsTheCurrentVersionOnlyWithItsIdAndAFreeClass) {
  // A public key put beside its private key (as pkcs11-tool writes them) joins the version.
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenEcRv("pair", {0x07}, false, &pub, &priv), CKR_OK);
  auto point = GetAttr(s, pub, CKA_EC_POINT);
  ASSERT_EQ(f->C_DestroyObject(s, pub), CKR_OK);
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  CK_KEY_TYPE ec = CKK_EC;
  CK_BBOOL yes = CK_TRUE;
  std::string label = "pair";
  std::vector<uint8_t> id = {0x07}, other = {0x08};
  auto tmpl = [&](std::vector<uint8_t>& with_id) {
    return std::vector<CK_ATTRIBUTE>{{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &ec, sizeof(ec)},
                                     {CKA_TOKEN, &yes, 1}, {CKA_LABEL, label.data(), label.size()},
                                     {CKA_ID, with_id.data(), with_id.size()},
                                     {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                                     {CKA_EC_POINT, point.data(), point.size()}};
  };
  CK_OBJECT_HANDLE h;
  auto bad = tmpl(other);
  EXPECT_EQ(f->C_CreateObject(s, bad.data(), bad.size(), &h), CKR_ATTRIBUTE_VALUE_INVALID);
  auto good = tmpl(id);
  ASSERT_EQ(f->C_CreateObject(s, good.data(), good.size(), &h), CKR_OK);
  EXPECT_EQ(Version(h), Version(priv));
  // A second public key of the same version is refused: one object per class.
  CK_OBJECT_HANDLE h2;
  EXPECT_EQ(f->C_CreateObject(s, good.data(), good.size(), &h2), CKR_ATTRIBUTE_VALUE_INVALID);
  // Relabelling follows the same rule: an unnamed key cannot take a name in use...
  CK_OBJECT_HANDLE upub, upriv;
  ASSERT_EQ(GenEcRv("", {0x09}, false, &upub, &upriv), CKR_OK);
  EXPECT_EQ(Version(upriv), "");
  CK_ATTRIBUTE relabel[] = {{CKA_LABEL, label.data(), label.size()}};
  EXPECT_EQ(f->C_SetAttributeValue(s, upriv, relabel, 1), CKR_ATTRIBUTE_VALUE_INVALID);
  // ... but a free one makes it an item with a version.
  std::string fresh = "named-later";
  CK_ATTRIBUTE name_it[] = {{CKA_LABEL, fresh.data(), fresh.size()}};
  ASSERT_EQ(f->C_SetAttributeValue(s, upriv, name_it, 1), CKR_OK);
  EXPECT_TRUE(IsVersionId(Version(upriv)));
  ASSERT_EQ(f->C_SetAttributeValue(s, upub, name_it, 1), CKR_OK);  // its public half joins
  EXPECT_EQ(Version(upub), Version(upriv));
}

TEST_F(VersionsTest, SecretsHaveVersionsAndLimits) {
  CK_OBJECT_HANDLE a, b, c;
  ASSERT_EQ(CreateData("db-password", "first", false, &a, "text/plain"), CKR_OK);
  EXPECT_EQ(CreateData("db-password", "second", false, &b), CKR_ATTRIBUTE_VALUE_INVALID);
  ASSERT_EQ(CreateData("db-password", "second", true, &b, "text/plain"), CKR_OK);
  CK_OBJECT_CLASS data = CKO_DATA;
  std::string label = "db-password";
  auto found = Find({{CKA_CLASS, &data, sizeof(data)}, {CKA_LABEL, label.data(), label.size()}});
  ASSERT_EQ(found, std::vector<CK_OBJECT_HANDLE>{b});
  EXPECT_EQ(GetAttr(s, b, CKA_VALUE), Bytes("second"));
  EXPECT_EQ(GetAttr(s, b, CKA_VAULTP11_CONTENT_TYPE), Bytes("text/plain"));
  std::string v1 = Version(a);
  auto old = Find({{CKA_CLASS, &data, sizeof(data)}, {CKA_LABEL, label.data(), label.size()},
                   {CKA_VAULTP11_VERSION, v1.data(), v1.size()}});
  ASSERT_EQ(old, std::vector<CK_OBJECT_HANDLE>{a});
  EXPECT_EQ(GetAttr(s, a, CKA_VALUE), Bytes("first"));
  // One namespace per vault: a key cannot take a secret's name.
  CK_OBJECT_HANDLE pub, priv;
  EXPECT_EQ(GenEcRv("db-password", {}, false, &pub, &priv), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(GenEcRv("db-password", {}, true, &pub, &priv), CKR_ATTRIBUTE_VALUE_INVALID);
  ASSERT_EQ(GenEcRv("a-key", {}, false, &pub, &priv), CKR_OK);
  EXPECT_EQ(CreateData("a-key", "v", true, &c), CKR_ATTRIBUTE_VALUE_INVALID);

  EXPECT_EQ(CreateData("big", std::string(VAULTP11_MAX_SECRET_BYTES, 'x'), false, &c), CKR_OK);
  EXPECT_EQ(CreateData("too-big", std::string(VAULTP11_MAX_SECRET_BYTES + 1, 'x'), false, &c),
            CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(CreateData("ct", "v", false, &c, std::string(VAULTP11_MAX_CONTENT_TYPE_CHARS + 1, 'a')),
            CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(CreateData("ct", "v", false, &c, "text/plain\n"), CKR_ATTRIBUTE_VALUE_INVALID);
  ASSERT_EQ(CreateData("ct", "v", false, &c, std::string(VAULTP11_MAX_CONTENT_TYPE_CHARS, 'a')), CKR_OK);
  std::string big(VAULTP11_MAX_SECRET_BYTES + 1, 'y');
  CK_ATTRIBUTE set[] = {{CKA_VAULTP11_CONTENT_TYPE, big.data(), big.size()}};
  EXPECT_EQ(f->C_SetAttributeValue(s, c, set, 1), CKR_ATTRIBUTE_VALUE_INVALID);
}

TEST_F(VersionsTest, ARunningProcessSeesAnotherProcesssNewVersion) {
  CK_OBJECT_HANDLE pub1, priv1;
  ASSERT_EQ(GenEcRv("shared", {}, false, &pub1, &priv1), CKR_OK);
  ASSERT_EQ(FindPrivate("shared"), std::vector<CK_OBJECT_HANDLE>{priv1});
  const std::string v1 = Version(priv1);
  // Another application on the same store adds version 2.
  ASSERT_EQ(NewVersionInAnotherProcess("shared"), 0);
  auto now = FindPrivate("shared");
  ASSERT_EQ(now.size(), 1u);
  EXPECT_NE(now[0], priv1);
  EXPECT_NE(Version(now[0]), v1);
  // The old handle still signs and its public key still verifies.
  const auto msg = Bytes("m");
  EXPECT_EQ(Verify(s, ecdsa, pub1, msg, Sign(s, ecdsa, priv1, msg)), CKR_OK);
}

// Objects are read from the store on demand after C_Initialize (by label, by CKA_ID, or all):
// whichever search comes first, each search answers as if every object had been read.
TEST_F(VersionsTest, SearchesAfterARestartAnswerAsIfEverythingWereRead) {
  CK_OBJECT_HANDLE pub1, priv1, pub2, priv2, pub3, priv3;
  const std::vector<uint8_t> id1 = {0xa1, 0x01}, id2 = {0xa1, 0x02};
  ASSERT_EQ(GenEcRv("lazy", id1, false, &pub1, &priv1), CKR_OK);
  ASSERT_EQ(GenEcRv("lazy", id2, true, &pub2, &priv2), CKR_OK);
  ASSERT_EQ(GenEcRv("other", {}, false, &pub3, &priv3), CKR_OK);
  const std::string v1 = Version(priv1), v2 = Version(priv2);
  CK_OBJECT_HANDLE data;
  ASSERT_EQ(CreateData("note", "n1", false, &data), CKR_OK);
  ASSERT_EQ(CreateData("note", "n2", true, &data), CKR_OK);
  const size_t all = CountAll();
  ASSERT_EQ(all, 5u);  // lazy v2 (2), other (2), note v2: older versions are left out
  auto restart = [&] {
    ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
    ASSERT_EQ(InitWith(config_path), CKR_OK);
    s = LoggedInRw();
  };
  CK_OBJECT_CLASS priv_cls = CKO_PRIVATE_KEY;
  // 1. First search by the old version's CKA_ID: that version (both halves); then by label:
  //    the current version only, though the old one was read first.
  restart();
  auto by_id = Find({{CKA_ID, const_cast<uint8_t*>(id1.data()), id1.size()}});
  ASSERT_EQ(by_id.size(), 2u);
  for (auto h : by_id) EXPECT_EQ(Version(h), v1);
  auto current = FindPrivate("lazy");
  ASSERT_EQ(current.size(), 1u);
  EXPECT_EQ(Version(current[0]), v2);
  // The handle found by CKA_ID is the same object when found again.
  CK_ATTRIBUTE t1[] = {{CKA_CLASS, &priv_cls, sizeof(priv_cls)}, {CKA_ID, const_cast<uint8_t*>(id1.data()), id1.size()}};
  auto old_priv = Find({t1[0], t1[1]});
  ASSERT_EQ(old_priv.size(), 1u);
  EXPECT_EQ(std::count(by_id.begin(), by_id.end(), old_priv[0]), 1);
  // Objects read so far count once when all are read.
  EXPECT_EQ(CountAll(), all);
  // 2. First search by class only: every item's current private key, nothing twice.
  restart();
  auto privs = Find({{CKA_CLASS, &priv_cls, sizeof(priv_cls)}});
  EXPECT_EQ(privs.size(), 2u);
  std::set<std::string> versions;
  for (auto h : privs) versions.insert(Version(h));
  EXPECT_TRUE(versions.count(v2));
  EXPECT_FALSE(versions.count(v1));
  EXPECT_EQ(FindPrivate("lazy").size(), 1u);
  EXPECT_EQ(CountAll(), all);
  // 3. A label searched first, then everything: the label's handles stay the same.
  restart();
  auto first = FindPrivate("other");
  ASSERT_EQ(first.size(), 1u);
  auto everything = Find({});
  EXPECT_EQ(everything.size(), all);
  EXPECT_EQ(std::count(everything.begin(), everything.end(), first[0]), 1);
  const auto msg = Bytes("read on demand");
  auto other_pub = Find({{CKA_LABEL, const_cast<char*>("other"), 5}});
  ASSERT_EQ(other_pub.size(), 2u);
  CK_OBJECT_HANDLE pub = other_pub[0] == first[0] ? other_pub[1] : other_pub[0];
  EXPECT_EQ(Verify(s, ecdsa, pub, msg, Sign(s, ecdsa, first[0], msg)), CKR_OK);
}

// A process that has read only some labels still sees another process's changes to the rest
// when it searches for them, and its own reads never bring back what another process deleted.
TEST_F(VersionsTest, OnDemandReadsSeeOtherProcessesChanges) {
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenEcRv("seen", {}, false, &pub, &priv), CKR_OK);
  ASSERT_EQ(GenEcRv("unseen", {}, false, &pub, &priv), CKR_OK);
  ASSERT_EQ(GenEcRv("gone", {}, false, &pub, &priv), CKR_OK);
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  s = LoggedInRw();
  ASSERT_EQ(FindPrivate("seen").size(), 1u);  // only this label is read
  const std::string seen_v1 = Version(FindPrivate("seen")[0]);
  // Another application: new versions of "seen" and "unseen", "gone" deleted.
  ASSERT_EQ(InAnotherProcess({"gen-ec-version", "seen", "gen-ec-version", "unseen", "destroy-label", "gone"}), 0);
  auto seen = FindPrivate("seen");
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_NE(Version(seen[0]), seen_v1);
  auto unseen = FindPrivate("unseen");
  ASSERT_EQ(unseen.size(), 1u);
  CK_OBJECT_CLASS priv_cls = CKO_PRIVATE_KEY;
  EXPECT_EQ(Find({{CKA_CLASS, &priv_cls, sizeof(priv_cls)}}).size(), 2u);  // seen, unseen
  EXPECT_TRUE(FindByLabel(s, "gone").empty());
  EXPECT_EQ(CountAll(), 4u);
}

// An old version read first by its CKA_ID, then a new version from another process: a search
// by label finds the new one only; by CKA_ID, every version with that id, oldest first.
TEST_F(VersionsTest, AVersionReadByIdThenAnotherProcesssVersionLeavesTheLabelCurrent) {
  CK_OBJECT_HANDLE pub, priv;
  const std::vector<uint8_t> id1 = {0xb1, 0x01};
  ASSERT_EQ(GenEcRv("byid", id1, false, &pub, &priv), CKR_OK);
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  s = LoggedInRw();
  auto old = Find({{CKA_ID, const_cast<uint8_t*>(id1.data()), id1.size()}});
  ASSERT_EQ(old.size(), 2u);
  const std::string v1 = Version(old[0]);
  ASSERT_EQ(NewVersionInAnotherProcess("byid"), 0);
  auto current = FindPrivate("byid");
  ASSERT_EQ(current.size(), 1u);
  EXPECT_NE(Version(current[0]), v1);
  // The old version by label and version id: both its objects.
  auto all = Find({{CKA_LABEL, const_cast<char*>("byid"), 4}, {CKA_VAULTP11_VERSION, const_cast<char*>(v1.data()), v1.size()}});
  ASSERT_EQ(all.size(), 2u);
  for (auto h : all) EXPECT_EQ(Version(h), v1);
}

// An X.509 certificate (DER) for CN=`cn` and the public key `spki` (SubjectPublicKeyInfo DER),
// issued by CN=`cn` with a fresh P-256 key, serial 4242.
std::vector<uint8_t> SelfSignedDer(const std::string& cn, const std::vector<uint8_t>& spki) {
  const unsigned char* in = spki.data();
  EVP_PKEY* subject = d2i_PUBKEY(nullptr, &in, static_cast<long>(spki.size()));
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, subject);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_sign(x, key, EVP_sha256());
  int n = i2d_X509(x, nullptr);
  std::vector<uint8_t> der(n > 0 ? n : 0);
  unsigned char* p = der.data();
  i2d_X509(x, &p);
  X509_free(x);
  EVP_PKEY_free(key);
  EVP_PKEY_free(subject);
  return der;
}

TEST_F(VersionsTest, CertificatesJoinTheirKeysVersionAndCarryTheirFields) {
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenEcRv("tls", {0x0c}, false, &pub, &priv), CKR_OK);
  auto der = SelfSignedDer("tls.example", GetAttr(s, pub, CKA_PUBLIC_KEY_INFO));
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_CERTIFICATE_TYPE x509 = CKC_X_509;
  CK_BBOOL yes = CK_TRUE;
  std::string label = "tls";
  std::vector<uint8_t> id = {0x0c};
  auto tmpl = [&](std::vector<uint8_t>& value) {
    return std::vector<CK_ATTRIBUTE>{{CKA_CLASS, &cls, sizeof(cls)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
                                     {CKA_TOKEN, &yes, 1}, {CKA_LABEL, label.data(), label.size()},
                                     {CKA_ID, id.data(), id.size()}, {CKA_VALUE, value.data(), value.size()}};
  };
  CK_OBJECT_HANDLE cert;
  auto t = tmpl(der);
  ASSERT_EQ(f->C_CreateObject(s, t.data(), t.size(), &cert), CKR_OK);
  EXPECT_EQ(Version(cert), Version(priv));
  EXPECT_EQ(GetAttr(s, cert, CKA_VALUE), der);
  // Subject, issuer and serial number come from the certificate (DER Name, DER INTEGER 4242).
  const auto subject = GetAttr(s, cert, CKA_SUBJECT);
  EXPECT_EQ(subject, GetAttr(s, cert, CKA_ISSUER));
  ASSERT_GT(subject.size(), 11u);
  EXPECT_EQ(std::string(subject.end() - 11, subject.end()), "tls.example");
  EXPECT_EQ(GetAttr(s, cert, CKA_SERIAL_NUMBER), (std::vector<uint8_t>{0x02, 0x02, 0x10, 0x92}));
  EXPECT_EQ(GetAttr(s, cert, CKA_CHECK_VALUE).size(), 3u);
  EXPECT_FALSE(GetBool(s, cert, CKA_PRIVATE));
  CK_OBJECT_CLASS want = CKO_CERTIFICATE;
  EXPECT_EQ(Find({{CKA_CLASS, &want, sizeof(want)}, {CKA_LABEL, label.data(), label.size()}}),
            std::vector<CK_OBJECT_HANDLE>{cert});
  // Not one DER certificate, another type, CKA_TRUSTED: refused.
  std::vector<uint8_t> junk = der;
  junk.push_back(0);
  std::string other = "other";
  label = other;
  auto bad = tmpl(junk);
  EXPECT_EQ(f->C_CreateObject(s, bad.data(), bad.size(), &cert), CKR_ATTRIBUTE_VALUE_INVALID);
  CK_CERTIFICATE_TYPE wtls = CKC_WTLS;
  auto wrong_type = tmpl(der);
  wrong_type[1] = {CKA_CERTIFICATE_TYPE, &wtls, sizeof(wtls)};
  EXPECT_EQ(f->C_CreateObject(s, wrong_type.data(), wrong_type.size(), &cert), CKR_ATTRIBUTE_VALUE_INVALID);
  auto trusted = tmpl(der);
  trusted.push_back({CKA_TRUSTED, &yes, 1});
  EXPECT_EQ(f->C_CreateObject(s, trusted.data(), trusted.size(), &cert), CKR_ATTRIBUTE_READ_ONLY);
  // The certificate's value cannot change: a new certificate is a new version.
  CK_ATTRIBUTE set[] = {{CKA_VALUE, der.data(), der.size()}};
  auto found = Find({{CKA_CLASS, &want, sizeof(want)}, {CKA_ID, id.data(), id.size()}});
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(f->C_SetAttributeValue(s, found[0], set, 1), CKR_ATTRIBUTE_READ_ONLY);
}

// Soft-delete (vault "archive", slot 1): C_DestroyObject moves the item, every version, to the
// deleted state; the name stays taken; recovery (by another program on the store) brings all
// versions back to running applications; purge protection holds purges until retention ends.
class SoftDeleteTest : public VersionsTest {
 protected:
  void SetUp() override {
    LoadModule();
    config_path = WriteConfig("  - { principal: app, role: Key Vault Administrator, scope: /vaults/archive }\n", "",
                              "{ name: archive, soft_delete: { retention_days: 7, purge_protection: true } }");
    ASSERT_EQ(InitWith(config_path), CKR_OK);
    s = LoggedInRw(1);
  }
  std::unique_ptr<store::Store> OpenStore() {
    auto st = store::Store::Open(dir.file("store.db"), dir.file("store.db.masterkey"), false);
    EXPECT_TRUE(st.ok()) << st.error().message;
    return st.ok() ? std::move(st).value() : nullptr;
  }
};

TEST_F(SoftDeleteTest, DestroyMovesEveryVersionToDeletedAndRecoverBringsThemBack) {
  CK_OBJECT_HANDLE pub1, priv1, pub2, priv2;
  ASSERT_EQ(GenEcRv("gone", {}, false, &pub1, &priv1), CKR_OK);
  const auto msg = Bytes("signed by version 1");
  const auto sig = Sign(s, ecdsa, priv1, msg);
  ASSERT_EQ(GenEcRv("gone", {}, true, &pub2, &priv2), CKR_OK);
  const auto id1 = GetAttr(s, priv1, CKA_ID);
  const std::string v2 = Version(priv2);

  ASSERT_EQ(f->C_DestroyObject(s, priv2), CKR_OK);
  EXPECT_TRUE(FindByLabel(s, "gone").empty());
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  auto by_id = [&](const std::vector<uint8_t>& id) {
    return Find({{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, const_cast<uint8_t*>(id.data()), id.size()}});
  };
  EXPECT_TRUE(by_id(id1).empty()) << "an older version outlived the delete";
  CK_ATTRIBUTE label{CKA_LABEL, nullptr, 0};
  EXPECT_EQ(f->C_GetAttributeValue(s, pub1, &label, 1), CKR_OBJECT_HANDLE_INVALID);
  // The name stays taken while the item is deleted.
  CK_OBJECT_HANDLE p, v;
  EXPECT_EQ(GenEcRv("gone", {}, false, &p, &v), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(GenEcRv("gone", {}, true, &p, &v), CKR_ATTRIBUTE_VALUE_INVALID);

  auto st = OpenStore();
  ASSERT_NE(st, nullptr);
  auto deleted = st->DeletedItems("archive");
  ASSERT_TRUE(deleted.ok());
  ASSERT_EQ(deleted->size(), 1u);
  EXPECT_EQ((*deleted)[0].name, "gone");
  EXPECT_EQ((*deleted)[0].objects.size(), 4u);
  EXPECT_GE((*deleted)[0].purge_after - (*deleted)[0].deleted, 7 * 86400);
  // Purge protection: not before retention ends, and nothing changed.
  EXPECT_EQ(st->PurgeItem("archive", "gone", (*deleted)[0].deleted + 3600, true).rv(), CKR_ACTION_PROHIBITED);

  ASSERT_TRUE(st->RecoverItem("archive", "gone").ok());
  auto current = FindPrivate("gone");
  ASSERT_EQ(current.size(), 1u);
  EXPECT_EQ(Version(current[0]), v2);
  auto old_pub = by_id(id1);
  ASSERT_EQ(old_pub.size(), 1u);
  EXPECT_EQ(Verify(s, ecdsa, old_pub[0], msg, sig), CKR_OK);

  // Deleted again and purged once retention is over: the name is free.
  ASSERT_EQ(f->C_DestroyObject(s, current[0]), CKR_OK);
  deleted = st->DeletedItems("archive");
  ASSERT_TRUE(deleted.ok() && deleted->size() == 1);
  auto purged = st->PurgeItem("archive", "gone", (*deleted)[0].purge_after, true);
  ASSERT_TRUE(purged.ok()) << purged.error().message;
  EXPECT_EQ(purged->size(), 4u);
  EXPECT_EQ(GenEcRv("gone", {}, false, &p, &v), CKR_OK);
}

TEST_F(SoftDeleteTest, AnItemWithAnUndestroyableObjectIsNotDeleted) {
  CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  std::string label = "keep";
  CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &yes, 1}, {CKA_DESTROYABLE, &no, 1},
                       {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                       {CKA_LABEL, label.data(), label.size()}};
  CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1},
                       {CKA_LABEL, label.data(), label.size()}};
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(f->C_GenerateKeyPair(s, &mech, pt, 4, vt, 4, &pub, &priv), CKR_OK);
  // The private key is destroyable, but deleting it would take the public key along.
  EXPECT_EQ(f->C_DestroyObject(s, priv), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(FindByLabel(s, "keep").size(), 2u);
}

TEST_F(SoftDeleteTest, WithoutSoftDeleteDestroyIsImmediate) {
  CK_SESSION_HANDLE s0 = LoggedInRw(0);  // payments: no soft_delete
  std::swap(s, s0);
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenEcRv("now", {}, false, &pub, &priv), CKR_OK);
  ASSERT_EQ(f->C_DestroyObject(s, priv), CKR_OK);
  EXPECT_EQ(FindByLabel(s, "now"), std::vector<CK_OBJECT_HANDLE>{pub}) << "only the object destroyed goes";
  auto st = OpenStore();
  ASSERT_NE(st, nullptr);
  auto deleted = st->DeletedItems("payments");
  ASSERT_TRUE(deleted.ok());
  EXPECT_TRUE(deleted->empty());
  std::swap(s, s0);
}

}  // namespace
}  // namespace vaultp11::testing
