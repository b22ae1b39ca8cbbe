// Tests of the OpenSSL backend's operations: known-answer vectors, round trips, independent
// verification with plain OpenSSL (in a library context of the test's own) and error codes.
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "hex.h"
#include "matchers.h"

namespace vaultp11::ossl {
namespace {

using ::testing::IsEmpty;
using ::testing::SizeIs;

using ::vaultp11::testing::Hex;

template <typename A, typename B>
bool SameBytes(const A& a, const B& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

Bytes Pattern(size_t n, uint8_t seed = 1) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 31 + (i >> 3));
  return b;
}

OSSL_LIB_CTX* TestCtx() {
  static OSSL_LIB_CTX* ctx = [] {
    OSSL_LIB_CTX* c = OSSL_LIB_CTX_new();
    OSSL_PROVIDER_load(c, "default");
    return c;
  }();
  return ctx;
}

EvpPkeyPtr IndependentPublic(EVP_PKEY* key) {
  auto spki = PublicKeyInfo(key);
  if (!spki.ok()) return nullptr;
  const unsigned char* p = spki->data();
  return EvpPkeyPtr(d2i_PUBKEY_ex(nullptr, &p, static_cast<long>(spki->size()), TestCtx(), nullptr));
}

EvpPkeyPtr IndependentPrivate(EVP_PKEY* key) {
  auto der = PrivateKeyToDer(key);
  if (!der.ok()) return nullptr;
  const unsigned char* p = der->data();
  return EvpPkeyPtr(d2i_AutoPrivateKey_ex(nullptr, &p, static_cast<long>(der->size()), TestCtx(), nullptr));
}

CK_MECHANISM Mech(CK_MECHANISM_TYPE t, void* param = nullptr, CK_ULONG len = 0) {
  return CK_MECHANISM{t, param, len};
}

// Each key's prepared signature contexts, as the module's key material keeps them: every test
// signs and verifies through them (the first use of a setting prepares it, later ones reuse it).
std::shared_ptr<PreparedContexts> PreparedOf(const PkeyRef& k) {
  static std::mutex mu;
  static std::map<EVP_PKEY*, std::pair<PkeyRef, std::shared_ptr<PreparedContexts>>> all;
  std::lock_guard<std::mutex> l(mu);
  auto& e = all[k.get()];
  if (!e.second) e = {k, std::make_shared<PreparedContexts>()};
  return e.second;
}
KeyRef Private(const PkeyRef& k, CK_KEY_TYPE t) { return KeyRef{t, CKO_PRIVATE_KEY, k, nullptr, PreparedOf(k)}; }
KeyRef Public(const PkeyRef& k, CK_KEY_TYPE t) { return KeyRef{t, CKO_PUBLIC_KEY, k, nullptr, PreparedOf(k)}; }
KeyRef Aes(const Bytes& key) {
  return KeyRef{CKK_AES, CKO_SECRET_KEY, nullptr, std::make_shared<const SecureBytes>(key.begin(), key.end())};
}

const Bytes kP256Oid = Hex("06082A8648CE3D030107");
const Bytes kP384Oid = Hex("06052B81040022");
const Bytes kP521Oid = Hex("06052B81040023");
const Bytes kSecp256k1Oid = Hex("06052B8104000A");

const char* MdName(CK_MECHANISM_TYPE hash) {
  switch (hash) {
    case CKM_SHA_1: return "SHA1";
    case CKM_SHA224: return "SHA224";
    case CKM_SHA256: return "SHA256";
    case CKM_SHA384: return "SHA384";
    case CKM_SHA512: return "SHA512";
  }
  return nullptr;
}

Bytes Digest(CK_MECHANISM_TYPE hash, std::span<const uint8_t> data) {
  EVP_MD* md = EVP_MD_fetch(TestCtx(), MdName(hash), nullptr);
  Bytes out(EVP_MD_get_size(md));
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &n, md, nullptr);
  EVP_MD_free(md);
  return out;
}

// ---- independent verification ------------------------------------------------------------

// RSA PKCS#1 v1.5 or PSS over `data` hashed with `hash` (0: data is already the input).
bool RsaVerifies(EVP_PKEY* key, CK_MECHANISM_TYPE hash, std::span<const uint8_t> tbs, std::span<const uint8_t> sig,
                 bool pss = false, CK_MECHANISM_TYPE mgf_hash = 0, int salt = 0) {
  EvpPkeyPtr pub = IndependentPublic(key);
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(TestCtx(), pub.get(), nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1) return false;
  if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) != 1) return false;
  EVP_MD* md = hash ? EVP_MD_fetch(TestCtx(), MdName(hash), nullptr) : nullptr;
  EVP_MD* mgf = mgf_hash ? EVP_MD_fetch(TestCtx(), MdName(mgf_hash), nullptr) : nullptr;
  bool ok = (md == nullptr || EVP_PKEY_CTX_set_signature_md(ctx.get(), md) == 1) &&
            (!pss || (EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), mgf) == 1 &&
                      EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), salt) == 1)) &&
            EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), tbs.data(), tbs.size()) == 1;
  EVP_MD_free(md);
  EVP_MD_free(mgf);
  return ok;
}

// Recovers the PKCS#1 v1.5 type 1 payload of a raw CKM_RSA_PKCS signature.
Bytes RsaRecover(EVP_PKEY* key, std::span<const uint8_t> sig) {
  EvpPkeyPtr pub = IndependentPublic(key);
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(TestCtx(), pub.get(), nullptr));
  Bytes out(sig.size());
  size_t len = out.size();
  if (!ctx || EVP_PKEY_verify_recover_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) != 1 ||
      EVP_PKEY_verify_recover(ctx.get(), out.data(), &len, sig.data(), sig.size()) != 1)
    return {};
  out.resize(len);
  return out;
}

// ECDSA r||s over a hash, converted to DER with OpenSSL's own ECDSA_SIG.
bool EcdsaVerifies(EVP_PKEY* key, std::span<const uint8_t> hash, std::span<const uint8_t> rs) {
  size_t f = rs.size() / 2;
  ECDSA_SIG* sig = ECDSA_SIG_new();
  ECDSA_SIG_set0(sig, BN_bin2bn(rs.data(), static_cast<int>(f), nullptr),
                 BN_bin2bn(rs.data() + f, static_cast<int>(f), nullptr));
  unsigned char* der = nullptr;
  int der_len = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  EvpPkeyPtr pub = IndependentPublic(key);
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(TestCtx(), pub.get(), nullptr));
  bool ok = ctx && EVP_PKEY_verify_init(ctx.get()) == 1 &&
            EVP_PKEY_verify(ctx.get(), der, static_cast<size_t>(der_len), hash.data(), hash.size()) == 1;
  OPENSSL_free(der);
  return ok;
}

class OsslOpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (CK_ULONG bits : {2048UL, 3072UL, 4096UL}) {
      auto k = GenerateRsa(bits, {});
      ASSERT_TRUE(k.ok()) << k.error().message;
      rsa_[bits] = *k;
      auto pub = PublicFromPrivate(k->get());
      ASSERT_TRUE(pub.ok());
      rsa_pub_[bits] = *pub;
    }
    for (const auto& [name, oid] : std::vector<std::pair<std::string, Bytes>>{
             {"P-256", kP256Oid}, {"P-384", kP384Oid}, {"P-521", kP521Oid}, {"secp256k1", kSecp256k1Oid}}) {
      auto k = GenerateEc(oid);
      ASSERT_TRUE(k.ok()) << k.error().message;
      ec_[name] = *k;
      auto pub = PublicFromPrivate(k->get());
      ASSERT_TRUE(pub.ok());
      ec_pub_[name] = *pub;
    }
  }
  static void TearDownTestSuite() {
    rsa_.clear();
    rsa_pub_.clear();
    ec_.clear();
    ec_pub_.clear();
  }

  static KeyRef RsaPriv(CK_ULONG bits = 2048) { return Private(rsa_.at(bits), CKK_RSA); }
  static KeyRef RsaPub(CK_ULONG bits = 2048) { return Public(rsa_pub_.at(bits), CKK_RSA); }
  static KeyRef EcPriv(const std::string& c) { return Private(ec_.at(c), CKK_EC); }
  static KeyRef EcPub(const std::string& c) { return Public(ec_pub_.at(c), CKK_EC); }

  static Result<Bytes> SignOnce(const KeyRef& k, CK_MECHANISM m, std::span<const uint8_t> data) {
    auto op = NewSignOp(k, m);
    if (!op.ok()) return op.error();
    return (*op)->Sign(data);
  }
  static Status VerifyOnce(const KeyRef& k, CK_MECHANISM m, std::span<const uint8_t> data,
                           std::span<const uint8_t> sig) {
    auto op = NewVerifyOp(k, m);
    if (!op.ok()) return op.error();
    return (*op)->Verify(data, sig);
  }
  static Result<SecureBytes> Encrypt(const KeyRef& k, CK_MECHANISM m, std::span<const uint8_t> data) {
    auto op = NewEncryptOp(k, m);
    if (!op.ok()) return op.error();
    return (*op)->OneShot(data);
  }
  static Result<SecureBytes> Decrypt(const KeyRef& k, CK_MECHANISM m, std::span<const uint8_t> data) {
    auto op = NewDecryptOp(k, m);
    if (!op.ok()) return op.error();
    return (*op)->OneShot(data);
  }
  // Multi-part through Update with the given chunk sizes (cycled), then Final; also checks that
  // MaxOutput predicts every Update and bounds Final.
  static Result<SecureBytes> MultiPart(Result<std::unique_ptr<CipherOp>> op_or, std::span<const uint8_t> data,
                                       std::vector<size_t> chunks) {
    if (!op_or.ok()) return op_or.error();
    CipherOp& op = **op_or;
    SecureBytes out;
    size_t pos = 0, i = 0;
    while (pos < data.size()) {
      size_t n = std::min(chunks[i++ % chunks.size()], data.size() - pos);
      size_t predicted = op.MaxOutput(n, false);
      auto part = op.Update(data.subspan(pos, n));
      if (!part.ok()) return part;
      EXPECT_EQ(part->size(), predicted);
      out.insert(out.end(), part->begin(), part->end());
      pos += n;
    }
    size_t bound = op.MaxOutput(0, true);
    auto fin = op.Final();
    if (!fin.ok()) return fin;
    EXPECT_LE(fin->size(), bound);
    out.insert(out.end(), fin->begin(), fin->end());
    return out;
  }

  static std::map<CK_ULONG, PkeyRef> rsa_, rsa_pub_;
  static std::map<std::string, PkeyRef> ec_, ec_pub_;
};
std::map<CK_ULONG, PkeyRef> OsslOpsTest::rsa_;
std::map<CK_ULONG, PkeyRef> OsslOpsTest::rsa_pub_;
std::map<std::string, PkeyRef> OsslOpsTest::ec_;
std::map<std::string, PkeyRef> OsslOpsTest::ec_pub_;

// ---- digest ------------------------------------------------------------------------------

TEST_F(OsslOpsTest, Sha256OfAbcMatchesTheFips180Vector) {
  ASSERT_OK_AND_ASSIGN(auto op, NewDigestOp(Mech(CKM_SHA256)));
  EXPECT_EQ(op->Length(), 32u);
  ASSERT_OK(op->Update(ToBytes(std::string_view("abc"))));
  ASSERT_OK_AND_ASSIGN(Bytes h, op->Final());
  EXPECT_EQ(h, Hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
}

TEST_F(OsslOpsTest, EveryDigestMatchesOpenSslAcrossManyUpdates) {
  Bytes data = Pattern(1000);
  for (CK_MECHANISM_TYPE m : {CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512}) {
    SCOPED_TRACE(m);
    ASSERT_OK_AND_ASSIGN(auto op, NewDigestOp(Mech(m)));
    for (size_t pos = 0; pos < data.size(); pos += 77)
      ASSERT_OK(op->Update(std::span(data).subspan(pos, std::min<size_t>(77, data.size() - pos))));
    ASSERT_OK_AND_ASSIGN(Bytes h, op->Final());
    EXPECT_EQ(h, Digest(m, data));
    EXPECT_EQ(op->Length(), h.size());
    EXPECT_THAT(op->Final(), RvIs(CKR_OPERATION_NOT_INITIALIZED));
  }
}

TEST_F(OsslOpsTest, DigestRejectsOtherMechanismsAndParameters) {
  EXPECT_THAT(NewDigestOp(Mech(CKM_SHA256_RSA_PKCS)), RvIs(CKR_MECHANISM_INVALID));
  EXPECT_THAT(NewDigestOp(Mech(CKM_MD5)), RvIs(CKR_MECHANISM_INVALID));
  uint8_t junk[4] = {};
  EXPECT_THAT(NewDigestOp(Mech(CKM_SHA256, junk, sizeof(junk))), RvIs(CKR_MECHANISM_PARAM_INVALID));
}

// ---- AES known answers -------------------------------------------------------------------

const Bytes kAes128Key = Hex("2b7e151628aed2a6abf7158809cf4f3c");
const Bytes kSp800Plain = Hex(
    "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710");

TEST_F(OsslOpsTest, AesEcbMatchesSp80038aF11) {
  const Bytes ct = Hex(
      "3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf"
      "43b1cd7f598ece23881b00e3ed030688 7b0c785e27e8ad3f8223207104725dd4");
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kAes128Key), Mech(CKM_AES_ECB), kSp800Plain));
  EXPECT_TRUE(SameBytes(enc, ct));
  ASSERT_OK_AND_ASSIGN(SecureBytes dec, Decrypt(Aes(kAes128Key), Mech(CKM_AES_ECB), ct));
  EXPECT_TRUE(SameBytes(dec, kSp800Plain));
}

TEST_F(OsslOpsTest, AesCbcMatchesSp80038aF21) {
  Bytes iv = Hex("000102030405060708090a0b0c0d0e0f");
  const Bytes ct = Hex(
      "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2"
      "73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7");
  auto m = Mech(CKM_AES_CBC, iv.data(), iv.size());
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kAes128Key), m, kSp800Plain));
  EXPECT_TRUE(SameBytes(enc, ct));
  ASSERT_OK_AND_ASSIGN(SecureBytes dec, Decrypt(Aes(kAes128Key), m, ct));
  EXPECT_TRUE(SameBytes(dec, kSp800Plain));
  ASSERT_OK_AND_ASSIGN(SecureBytes parts, MultiPart(NewEncryptOp(Aes(kAes128Key), m), kSp800Plain, {5, 16, 1, 30}));
  EXPECT_TRUE(SameBytes(parts, ct));
}

TEST_F(OsslOpsTest, AesCtrMatchesSp80038aF51) {
  CK_AES_CTR_PARAMS p{};
  p.ulCounterBits = 128;
  Bytes cb = Hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
  std::memcpy(p.cb, cb.data(), 16);
  const Bytes ct = Hex(
      "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff"
      "5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee");
  auto m = Mech(CKM_AES_CTR, &p, sizeof(p));
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kAes128Key), m, kSp800Plain));
  EXPECT_TRUE(SameBytes(enc, ct));
  ASSERT_OK_AND_ASSIGN(SecureBytes dec, Decrypt(Aes(kAes128Key), m, ct));
  EXPECT_TRUE(SameBytes(dec, kSp800Plain));
  ASSERT_OK_AND_ASSIGN(SecureBytes parts, MultiPart(NewDecryptOp(Aes(kAes128Key), m), ct, {3, 17, 40}));
  EXPECT_TRUE(SameBytes(parts, kSp800Plain));
  // The counter field ff fe fd fc ... with 32 counter bits has room for 4 blocks exactly.
  p.ulCounterBits = 32;
  EXPECT_OK(Encrypt(Aes(kAes128Key), m, kSp800Plain).status());
}

TEST_F(OsslOpsTest, AesCtrRefusesToWrapTheCounterField) {
  CK_AES_CTR_PARAMS p{};
  Bytes cb = Hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
  std::memcpy(p.cb, cb.data(), 16);
  p.ulCounterBits = 8;  // counter 0xff: one block left
  auto m = Mech(CKM_AES_CTR, &p, sizeof(p));
  EXPECT_OK(Encrypt(Aes(kAes128Key), m, Pattern(16)).status());
  EXPECT_THAT(Encrypt(Aes(kAes128Key), m, Pattern(17)), RvIs(CKR_DATA_LEN_RANGE));
  EXPECT_THAT(Decrypt(Aes(kAes128Key), m, Pattern(17)), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
  ASSERT_OK_AND_ASSIGN(auto op, NewEncryptOp(Aes(kAes128Key), m));
  ASSERT_OK(op->Update(Pattern(10)).status());
  EXPECT_THAT(op->Update(Pattern(10)), RvIs(CKR_DATA_LEN_RANGE));
}

TEST_F(OsslOpsTest, AesCtrRejectsCounterBitsOutsideOneTo128) {
  CK_AES_CTR_PARAMS p{};
  for (CK_ULONG bits : {0UL, 129UL, ~0UL}) {
    p.ulCounterBits = bits;
    EXPECT_THAT(NewEncryptOp(Aes(kAes128Key), Mech(CKM_AES_CTR, &p, sizeof(p))), RvIs(CKR_MECHANISM_PARAM_INVALID));
  }
  p.ulCounterBits = 1;
  EXPECT_OK(NewEncryptOp(Aes(kAes128Key), Mech(CKM_AES_CTR, &p, sizeof(p))).status());
  EXPECT_THAT(NewEncryptOp(Aes(kAes128Key), Mech(CKM_AES_CTR, &p, sizeof(p) - 1)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewEncryptOp(Aes(kAes128Key), Mech(CKM_AES_CTR)), RvIs(CKR_MECHANISM_PARAM_INVALID));
}

// The GCM spec's (McGrew & Viega) test cases 3, 4 and 6 for AES-128.
const Bytes kGcmKey = Hex("feffe9928665731c6d6a8f9467308308");
const Bytes kGcmPlain = Hex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255");
const Bytes kGcmIv = Hex("cafebabefacedbaddecaf888");
const Bytes kGcmAad = Hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");

CK_GCM_PARAMS Gcm(const Bytes& iv, const Bytes& aad, CK_ULONG tag_bits = 128) {
  CK_GCM_PARAMS p{};
  p.pIv = const_cast<uint8_t*>(iv.data());
  p.ulIvLen = iv.size();
  p.ulIvBits = iv.size() * 8;
  p.pAAD = aad.empty() ? nullptr : const_cast<uint8_t*>(aad.data());
  p.ulAADLen = aad.size();
  p.ulTagBits = tag_bits;
  return p;
}

TEST_F(OsslOpsTest, AesGcmMatchesTestCase3) {
  CK_GCM_PARAMS p = Gcm(kGcmIv, {});
  auto m = Mech(CKM_AES_GCM, &p, sizeof(p));
  const Bytes want = Hex(
      "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
      "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
      "4d5c2af327cd64a62cf35abd2ba6fab4");
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kGcmKey), m, kGcmPlain));
  EXPECT_TRUE(SameBytes(enc, want));
  ASSERT_OK_AND_ASSIGN(SecureBytes dec, Decrypt(Aes(kGcmKey), m, want));
  EXPECT_TRUE(SameBytes(dec, kGcmPlain));
}

TEST_F(OsslOpsTest, AesGcmMatchesTestCase4WithAad) {
  Bytes plain(kGcmPlain.begin(), kGcmPlain.begin() + 60);
  CK_GCM_PARAMS p = Gcm(kGcmIv, kGcmAad);
  auto m = Mech(CKM_AES_GCM, &p, sizeof(p));
  const Bytes want = Hex(
      "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
      "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
      "5bc94fbc3221a5db94fae95ae7121a47");
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kGcmKey), m, plain));
  EXPECT_TRUE(SameBytes(enc, want));
  ASSERT_OK_AND_ASSIGN(SecureBytes parts, MultiPart(NewEncryptOp(Aes(kGcmKey), m), plain, {7, 13}));
  EXPECT_TRUE(SameBytes(parts, want));
  ASSERT_OK_AND_ASSIGN(SecureBytes dec, MultiPart(NewDecryptOp(Aes(kGcmKey), m), want, {1, 50}));
  EXPECT_TRUE(SameBytes(dec, plain));
}

TEST_F(OsslOpsTest, AesGcmMatchesTestCase6WithA60ByteIv) {
  Bytes plain(kGcmPlain.begin(), kGcmPlain.begin() + 60);
  Bytes iv = Hex(
      "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728"
      "c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b");
  CK_GCM_PARAMS p = Gcm(iv, kGcmAad);
  auto m = Mech(CKM_AES_GCM, &p, sizeof(p));
  const Bytes want = Hex(
      "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7"
      "01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5"
      "619cc5aefffe0bfa462af43c1699d050");
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kGcmKey), m, plain));
  EXPECT_TRUE(SameBytes(enc, want));
}

TEST_F(OsslOpsTest, AesGcmAcceptsTheV240ParameterLayoutWithoutIvBits) {
  struct {
    CK_BYTE_PTR pIv;
    CK_ULONG ulIvLen;
    CK_BYTE_PTR pAAD;
    CK_ULONG ulAADLen;
    CK_ULONG ulTagBits;
  } p{const_cast<uint8_t*>(kGcmIv.data()), kGcmIv.size(), nullptr, 0, 128};
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kGcmKey), Mech(CKM_AES_GCM, &p, sizeof(p)), kGcmPlain));
  EXPECT_EQ(Bytes(enc.end() - 16, enc.end()), Hex("4d5c2af327cd64a62cf35abd2ba6fab4"));
}

TEST_F(OsslOpsTest, AesGcmDecryptRejectsATamperedTagOrCiphertext) {
  CK_GCM_PARAMS p = Gcm(kGcmIv, kGcmAad, 96);
  auto m = Mech(CKM_AES_GCM, &p, sizeof(p));
  ASSERT_OK_AND_ASSIGN(SecureBytes enc, Encrypt(Aes(kGcmKey), m, kGcmPlain));
  EXPECT_THAT(enc, SizeIs(64 + 12));
  ASSERT_OK_AND_ASSIGN(SecureBytes ok, Decrypt(Aes(kGcmKey), m, enc));
  EXPECT_TRUE(SameBytes(ok, kGcmPlain));

  SecureBytes bad_tag = enc;
  bad_tag.back() ^= 0x80;
  EXPECT_THAT(Decrypt(Aes(kGcmKey), m, bad_tag), RvIs(CKR_ENCRYPTED_DATA_INVALID));
  SecureBytes bad_ct = enc;
  bad_ct[3] ^= 0x01;
  EXPECT_THAT(Decrypt(Aes(kGcmKey), m, bad_ct), RvIs(CKR_ENCRYPTED_DATA_INVALID));
  Bytes other_aad = kGcmAad;
  other_aad[0] ^= 1;
  CK_GCM_PARAMS p2 = Gcm(kGcmIv, other_aad, 96);
  EXPECT_THAT(Decrypt(Aes(kGcmKey), Mech(CKM_AES_GCM, &p2, sizeof(p2)), enc), RvIs(CKR_ENCRYPTED_DATA_INVALID));
  EXPECT_THAT(Decrypt(Aes(kGcmKey), m, Bytes(11)), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
  // Multi-part decrypt also fails at Final, having released nothing.
  ASSERT_OK_AND_ASSIGN(auto op, NewDecryptOp(Aes(kGcmKey), m));
  ASSERT_OK_AND_ASSIGN(SecureBytes part, op->Update(bad_tag));
  EXPECT_THAT(part, IsEmpty());
  EXPECT_EQ(op->MaxOutput(0, false), 0u);
  EXPECT_EQ(op->MaxOutput(0, true), 64u);
  EXPECT_THAT(op->Final(), RvIs(CKR_ENCRYPTED_DATA_INVALID));
}

TEST_F(OsslOpsTest, AesGcmRejectsBadParameters) {
  Bytes iv12(12, 1), iv257(257, 1), iv256(256, 1);
  auto try_params = [&](CK_GCM_PARAMS p) { return NewEncryptOp(Aes(kGcmKey), Mech(CKM_AES_GCM, &p, sizeof(p))); };
  EXPECT_THAT(try_params(Gcm(Bytes(), {})), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params(Gcm(iv257, {})), RvIs(CKR_MECHANISM_PARAM_INVALID));
  for (CK_ULONG tag : {0UL, 64UL, 95UL, 100UL, 136UL})
    EXPECT_THAT(try_params(Gcm(iv12, {}, tag)), RvIs(CKR_MECHANISM_PARAM_INVALID)) << tag;
  for (CK_ULONG tag : {96UL, 104UL, 112UL, 120UL, 128UL}) EXPECT_OK(try_params(Gcm(iv12, {}, tag)).status());
  CK_GCM_PARAMS null_aad = Gcm(iv12, {});
  null_aad.ulAADLen = 5;
  EXPECT_THAT(try_params(null_aad), RvIs(CKR_MECHANISM_PARAM_INVALID));
  CK_GCM_PARAMS null_iv = Gcm(iv12, {});
  null_iv.pIv = nullptr;
  EXPECT_THAT(try_params(null_iv), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewEncryptOp(Aes(kGcmKey), Mech(CKM_AES_GCM)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  CK_GCM_PARAMS p = Gcm(iv12, {});
  EXPECT_THAT(NewEncryptOp(Aes(kGcmKey), Mech(CKM_AES_GCM, &p, 8)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  // OpenSSL 3 caps GCM IVs at 128 bytes: longer ones are refused, not mis-processed.
  auto r = try_params(Gcm(iv256, {}));
  if (!r.ok()) {
    EXPECT_THAT(r, RvIs(CKR_MECHANISM_PARAM_INVALID));
  }
  EXPECT_OK(try_params(Gcm(Bytes(128, 2), {})).status());
}

// ---- AES modes: padding, lengths, multi-part ---------------------------------------------

TEST_F(OsslOpsTest, AesCbcPadRoundTripsEveryLengthAndMultiPartEqualsOneShot) {
  Bytes iv = Pattern(16, 9);
  auto m = Mech(CKM_AES_CBC_PAD, iv.data(), iv.size());
  for (size_t len = 0; len <= 50; ++len) {
    SCOPED_TRACE(len);
    Bytes data = Pattern(len);
    ASSERT_OK_AND_ASSIGN(auto sizer, NewEncryptOp(Aes(kAes128Key), m));
    size_t predicted = sizer->MaxOutput(len, true);
    ASSERT_OK_AND_ASSIGN(SecureBytes one, Encrypt(Aes(kAes128Key), m, data));
    EXPECT_EQ(one.size(), (len / 16 + 1) * 16);
    EXPECT_EQ(one.size(), predicted);
    for (std::vector<size_t> chunks : {std::vector<size_t>{1}, {15, 2}, {16}, {17, 31}}) {
      ASSERT_OK_AND_ASSIGN(SecureBytes enc, MultiPart(NewEncryptOp(Aes(kAes128Key), m), data, chunks));
      EXPECT_EQ(enc, one);
      ASSERT_OK_AND_ASSIGN(SecureBytes dec, MultiPart(NewDecryptOp(Aes(kAes128Key), m), one, chunks));
      EXPECT_TRUE(SameBytes(dec, data));
    }
    ASSERT_OK_AND_ASSIGN(SecureBytes dec, Decrypt(Aes(kAes128Key), m, one));
    EXPECT_TRUE(SameBytes(dec, data));
  }
}

TEST_F(OsslOpsTest, AesMultiPartEqualsOneShotInEveryMode) {
  Bytes iv = Pattern(16, 3);
  CK_AES_CTR_PARAMS ctr{};
  ctr.ulCounterBits = 64;
  std::memcpy(ctr.cb, iv.data(), 16);
  CK_GCM_PARAMS gcm = Gcm(kGcmIv, kGcmAad);
  Bytes data = Pattern(16 * 40);
  for (Bytes key : {Pattern(16, 5), Pattern(24, 6), Pattern(32, 7)}) {
    for (CK_MECHANISM m : {Mech(CKM_AES_ECB), Mech(CKM_AES_CBC, iv.data(), 16), Mech(CKM_AES_CBC_PAD, iv.data(), 16),
                           Mech(CKM_AES_CTR, &ctr, sizeof(ctr)), Mech(CKM_AES_GCM, &gcm, sizeof(gcm))}) {
      SCOPED_TRACE(::testing::Message() << "key " << key.size() << " mech " << m.mechanism);
      ASSERT_OK_AND_ASSIGN(SecureBytes one, Encrypt(Aes(key), m, data));
      ASSERT_OK_AND_ASSIGN(SecureBytes parts, MultiPart(NewEncryptOp(Aes(key), m), data, {1, 15, 16, 33, 100}));
      EXPECT_EQ(parts, one);
      ASSERT_OK_AND_ASSIGN(SecureBytes back, MultiPart(NewDecryptOp(Aes(key), m), one, {7, 64}));
      EXPECT_TRUE(SameBytes(back, data));
      ASSERT_OK_AND_ASSIGN(SecureBytes back1, Decrypt(Aes(key), m, one));
      EXPECT_TRUE(SameBytes(back1, data));
    }
  }
}

TEST_F(OsslOpsTest, AesCbcPadDecryptRejectsBadPadding) {
  Bytes iv = Pattern(16, 2);
  // A last plaintext block ending in 0x00 (and one ending in 0x11) is never valid padding.
  for (uint8_t last : {0x00, 0x11}) {
    Bytes block = Pattern(32);
    block.back() = last;
    ASSERT_OK_AND_ASSIGN(SecureBytes ct, Encrypt(Aes(kAes128Key), Mech(CKM_AES_CBC, iv.data(), 16), block));
    EXPECT_THAT(Decrypt(Aes(kAes128Key), Mech(CKM_AES_CBC_PAD, iv.data(), 16), ct), RvIs(CKR_ENCRYPTED_DATA_INVALID));
  }
  auto m = Mech(CKM_AES_CBC_PAD, iv.data(), 16);
  EXPECT_THAT(Decrypt(Aes(kAes128Key), m, Bytes(20)), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
  EXPECT_THAT(Decrypt(Aes(kAes128Key), m, Bytes()), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
}

TEST_F(OsslOpsTest, AesEcbAndCbcRejectPartialBlocks) {
  Bytes iv(16, 0);
  for (CK_MECHANISM m : {Mech(CKM_AES_ECB), Mech(CKM_AES_CBC, iv.data(), 16)}) {
    EXPECT_THAT(Encrypt(Aes(kAes128Key), m, Pattern(15)), RvIs(CKR_DATA_LEN_RANGE));
    EXPECT_THAT(Decrypt(Aes(kAes128Key), m, Pattern(33)), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
    ASSERT_OK_AND_ASSIGN(auto op, NewEncryptOp(Aes(kAes128Key), m));
    ASSERT_OK_AND_ASSIGN(SecureBytes part, op->Update(Pattern(20)));
    EXPECT_THAT(part, SizeIs(16));
    EXPECT_THAT(op->Final(), RvIs(CKR_DATA_LEN_RANGE));
    EXPECT_THAT(op->Update(Pattern(12)), RvIs(CKR_OPERATION_NOT_INITIALIZED));  // unusable after failing
    ASSERT_OK_AND_ASSIGN(SecureBytes empty, Encrypt(Aes(kAes128Key), m, Bytes()));
    EXPECT_THAT(empty, IsEmpty());
  }
}

TEST_F(OsslOpsTest, AesRejectsBadIvLengthsAndKeySizes) {
  Bytes iv(32, 0);
  for (CK_MECHANISM_TYPE t : {CKM_AES_CBC, CKM_AES_CBC_PAD}) {
    for (CK_ULONG len : {0UL, 8UL, 15UL, 17UL, 32UL})
      EXPECT_THAT(NewEncryptOp(Aes(kAes128Key), Mech(t, iv.data(), len)), RvIs(CKR_MECHANISM_PARAM_INVALID)) << len;
    EXPECT_THAT(NewDecryptOp(Aes(kAes128Key), Mech(t, nullptr, 16)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  }
  for (size_t n : {0u, 8u, 15u, 17u, 20u, 64u})
    EXPECT_THAT(NewEncryptOp(Aes(Bytes(n, 1)), Mech(CKM_AES_ECB)), RvIs(CKR_KEY_SIZE_RANGE)) << n;
}

TEST_F(OsslOpsTest, MechanismsRefuseKeysOfTheWrongType) {
  Bytes iv(16, 0);
  EXPECT_THAT(NewEncryptOp(RsaPub(), Mech(CKM_AES_CBC, iv.data(), 16)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewEncryptOp(Aes(kAes128Key), Mech(CKM_RSA_PKCS)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewEncryptOp(EcPub("P-256"), Mech(CKM_RSA_PKCS)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewSignOp(EcPriv("P-256"), Mech(CKM_SHA256_RSA_PKCS)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewSignOp(RsaPriv(), Mech(CKM_ECDSA)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewSignOp(Aes(kAes128Key), Mech(CKM_ECDSA)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewVerifyOp(RsaPub(), Mech(CKM_ECDSA_SHA256)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  // Key class: signing needs the private key, RSA encryption the public one, decryption the private one.
  EXPECT_THAT(NewSignOp(RsaPub(), Mech(CKM_SHA256_RSA_PKCS)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewSignOp(EcPub("P-256"), Mech(CKM_ECDSA)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewEncryptOp(RsaPriv(), Mech(CKM_RSA_PKCS)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(NewDecryptOp(RsaPub(), Mech(CKM_RSA_PKCS)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  // Verification also works with the private key object.
  EXPECT_OK(NewVerifyOp(RsaPriv(), Mech(CKM_SHA256_RSA_PKCS)).status());
  // A key_type that contradicts the EVP_PKEY.
  EXPECT_THAT(NewSignOp(Private(ec_.at("P-256"), CKK_RSA), Mech(CKM_SHA256_RSA_PKCS)),
              RvIs(CKR_KEY_TYPE_INCONSISTENT));
}

TEST_F(OsslOpsTest, MechanismsWithoutParametersRefuseOne) {
  uint8_t junk[8] = {};
  EXPECT_THAT(NewSignOp(RsaPriv(), Mech(CKM_RSA_PKCS, junk, 8)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewSignOp(RsaPriv(), Mech(CKM_SHA256_RSA_PKCS, junk, 8)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewVerifyOp(EcPub("P-256"), Mech(CKM_ECDSA, junk, 8)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewEncryptOp(RsaPub(), Mech(CKM_RSA_PKCS, junk, 8)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewEncryptOp(Aes(kAes128Key), Mech(CKM_AES_ECB, junk, 8)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(Wrap(RsaPub(), Mech(CKM_RSA_PKCS, junk, 8), Pattern(16)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  // A stray pointer with length 0 is no parameter.
  EXPECT_OK(NewSignOp(RsaPriv(), Mech(CKM_SHA256_RSA_PKCS, junk, 0)).status());
}

TEST_F(OsslOpsTest, UnknownMechanismsAreMechanismInvalid) {
  EXPECT_THAT(NewSignOp(RsaPriv(), Mech(CKM_MD5_RSA_PKCS)), RvIs(CKR_MECHANISM_INVALID));
  EXPECT_THAT(NewSignOp(Aes(kAes128Key), Mech(CKM_AES_ECB)), RvIs(CKR_MECHANISM_INVALID));
  EXPECT_THAT(NewVerifyOp(RsaPub(), Mech(CKM_SHA256)), RvIs(CKR_MECHANISM_INVALID));
  EXPECT_THAT(NewEncryptOp(Aes(kAes128Key), Mech(CKM_AES_KEY_WRAP)), RvIs(CKR_MECHANISM_INVALID));
  EXPECT_THAT(NewDecryptOp(RsaPriv(), Mech(CKM_RSA_X_509)), RvIs(CKR_MECHANISM_INVALID));
  EXPECT_THAT(Wrap(Aes(kAes128Key), Mech(CKM_AES_ECB), Pattern(16)), RvIs(CKR_MECHANISM_INVALID));
  EXPECT_THAT(Unwrap(Aes(kAes128Key), Mech(CKM_AES_CBC_PAD), Pattern(16)), RvIs(CKR_MECHANISM_INVALID));
}

// ---- RSA signatures ----------------------------------------------------------------------

struct HashedRsa {
  CK_MECHANISM_TYPE mech, hash;
};
const std::vector<HashedRsa> kPkcs1Mechs = {{CKM_SHA1_RSA_PKCS, CKM_SHA_1},
                                            {CKM_SHA224_RSA_PKCS, CKM_SHA224},
                                            {CKM_SHA256_RSA_PKCS, CKM_SHA256},
                                            {CKM_SHA384_RSA_PKCS, CKM_SHA384},
                                            {CKM_SHA512_RSA_PKCS, CKM_SHA512}};
const std::vector<HashedRsa> kPssMechs = {{CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256},
                                          {CKM_SHA384_RSA_PKCS_PSS, CKM_SHA384},
                                          {CKM_SHA512_RSA_PKCS_PSS, CKM_SHA512}};

CK_RSA_PKCS_MGF_TYPE MgfFor(CK_MECHANISM_TYPE hash) {
  switch (hash) {
    case CKM_SHA_1: return CKG_MGF1_SHA1;
    case CKM_SHA224: return CKG_MGF1_SHA224;
    case CKM_SHA256: return CKG_MGF1_SHA256;
    case CKM_SHA384: return CKG_MGF1_SHA384;
    default: return CKG_MGF1_SHA512;
  }
}

TEST_F(OsslOpsTest, RsaPkcs1SignaturesWithEveryHashVerifyIndependently) {
  Bytes data = Pattern(333);
  for (const HashedRsa& h : kPkcs1Mechs) {
    SCOPED_TRACE(h.mech);
    ASSERT_OK_AND_ASSIGN(auto op, NewSignOp(RsaPriv(), Mech(h.mech)));
    EXPECT_TRUE(op->SupportsMultiPart());
    EXPECT_EQ(op->SignatureLength(), 256u);
    ASSERT_OK_AND_ASSIGN(Bytes sig, op->Sign(data));
    EXPECT_THAT(sig, SizeIs(256));
    EXPECT_TRUE(RsaVerifies(rsa_.at(2048).get(), h.hash, Digest(h.hash, data), sig));
    EXPECT_OK(VerifyOnce(RsaPub(), Mech(h.mech), data, sig));
    // PKCS#1 v1.5 is deterministic: multi-part gives the same signature.
    ASSERT_OK_AND_ASSIGN(auto mp, NewSignOp(RsaPriv(), Mech(h.mech)));
    ASSERT_OK(mp->Update(std::span(data).first(100)));
    ASSERT_OK(mp->Update(std::span(data).subspan(100)));
    ASSERT_OK_AND_ASSIGN(Bytes sig2, mp->Final());
    EXPECT_EQ(sig2, sig);
    ASSERT_OK_AND_ASSIGN(auto vp, NewVerifyOp(RsaPub(), Mech(h.mech)));
    ASSERT_OK(vp->Update(std::span(data).first(1)));
    ASSERT_OK(vp->Update(std::span(data).subspan(1)));
    EXPECT_OK(vp->Final(sig));
  }
}

TEST_F(OsslOpsTest, RawRsaPkcsSignsTheDigestInfoWithType1Padding) {
  const Bytes prefix = Hex("3031300d060960864801650304020105000420");
  Bytes digest_info = prefix;
  Bytes h = Digest(CKM_SHA256, Pattern(10));
  digest_info.insert(digest_info.end(), h.begin(), h.end());
  ASSERT_OK_AND_ASSIGN(auto op, NewSignOp(RsaPriv(), Mech(CKM_RSA_PKCS)));
  EXPECT_FALSE(op->SupportsMultiPart());
  ASSERT_OK_AND_ASSIGN(Bytes sig, op->Sign(digest_info));
  EXPECT_EQ(RsaRecover(rsa_.at(2048).get(), sig), digest_info);
  // It is exactly the CKM_SHA256_RSA_PKCS signature of the same data.
  ASSERT_OK_AND_ASSIGN(Bytes sig2, SignOnce(RsaPriv(), Mech(CKM_SHA256_RSA_PKCS), Pattern(10)));
  EXPECT_EQ(sig, sig2);
  EXPECT_OK(VerifyOnce(RsaPub(), Mech(CKM_RSA_PKCS), digest_info, sig));
  Bytes other = digest_info;
  other.back() ^= 1;
  EXPECT_THAT(VerifyOnce(RsaPub(), Mech(CKM_RSA_PKCS), other, sig), RvIs(CKR_SIGNATURE_INVALID));
}

TEST_F(OsslOpsTest, RawRsaPkcsAcceptsUpToKMinus11Bytes) {
  EXPECT_OK(SignOnce(RsaPriv(), Mech(CKM_RSA_PKCS), Pattern(256 - 11)).status());
  EXPECT_THAT(SignOnce(RsaPriv(), Mech(CKM_RSA_PKCS), Pattern(256 - 10)), RvIs(CKR_DATA_LEN_RANGE));
  EXPECT_THAT(VerifyOnce(RsaPub(), Mech(CKM_RSA_PKCS), Pattern(300), Bytes(256)), RvIs(CKR_DATA_LEN_RANGE));
  ASSERT_OK_AND_ASSIGN(auto op, NewSignOp(RsaPriv(), Mech(CKM_RSA_PKCS)));
  EXPECT_THAT(op->Update(Pattern(4)), RvIs(CKR_FUNCTION_NOT_SUPPORTED));
}

TEST_F(OsslOpsTest, RsaPssSignaturesVerifyIndependently) {
  Bytes data = Pattern(1000);
  for (const HashedRsa& h : kPssMechs) {
    SCOPED_TRACE(h.mech);
    for (CK_ULONG salt : {0UL, 20UL, static_cast<CK_ULONG>(Digest(h.hash, data).size())}) {
      CK_RSA_PKCS_PSS_PARAMS p{h.hash, MgfFor(h.hash), salt};
      ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(RsaPriv(), Mech(h.mech, &p, sizeof(p)), data));
      EXPECT_TRUE(RsaVerifies(rsa_.at(2048).get(), h.hash, Digest(h.hash, data), sig, true, h.hash,
                              static_cast<int>(salt)));
      EXPECT_OK(VerifyOnce(RsaPub(), Mech(h.mech, &p, sizeof(p)), data, sig));
      // The verifier insists on the stated salt length.
      CK_RSA_PKCS_PSS_PARAMS other = p;
      other.sLen = salt + 1;
      EXPECT_THAT(VerifyOnce(RsaPub(), Mech(h.mech, &other, sizeof(other)), data, sig), RvIs(CKR_SIGNATURE_INVALID));
    }
  }
}

// Prepared contexts: signatures made through a key's prepared contexts, by threads at once and
// with settings changing between calls, all verify (independently) under their own setting.
TEST_F(OsslOpsTest, PreparedContextsServeThreadsAndKeepSettingsApart) {
  const Bytes data = Pattern(300);
  const KeyRef ec = EcPriv("P-256"), rsa = RsaPriv();
  auto work = [&](int seed, std::atomic<int>* bad) {
    for (int i = 0; i < 40; ++i) {
      const Bytes hash = Digest(CKM_SHA256, Pattern(32, static_cast<uint8_t>(seed + i)));
      auto sig = SignOnce(ec, Mech(CKM_ECDSA), hash);
      if (!sig.ok() || !EcdsaVerifies(ec_.at("P-256").get(), hash, *sig)) ++*bad;
      const CK_ULONG salt = static_cast<CK_ULONG>(i % 3) * 16;
      CK_RSA_PKCS_PSS_PARAMS p{CKM_SHA256, CKG_MGF1_SHA256, salt};
      auto pss = SignOnce(rsa, Mech(CKM_SHA256_RSA_PKCS_PSS, &p, sizeof(p)), data);
      if (!pss.ok() || !RsaVerifies(rsa_.at(2048).get(), CKM_SHA256, Digest(CKM_SHA256, data), *pss, true, CKM_SHA256,
                                    static_cast<int>(salt)))
        ++*bad;
      if (!pss.ok() || !VerifyOnce(RsaPub(), Mech(CKM_SHA256_RSA_PKCS_PSS, &p, sizeof(p)), data, *pss).ok()) ++*bad;
      auto pkcs = SignOnce(rsa, Mech(CKM_SHA256_RSA_PKCS), data);
      if (!pkcs.ok() || !RsaVerifies(rsa_.at(2048).get(), CKM_SHA256, Digest(CKM_SHA256, data), *pkcs)) ++*bad;
    }
  };
  std::atomic<int> bad{0};
  std::thread a(work, 1, &bad), b(work, 101, &bad);
  a.join();
  b.join();
  EXPECT_EQ(bad.load(), 0);
  // A signature under one salt length does not verify under another, though both settings'
  // contexts are prepared now.
  CK_RSA_PKCS_PSS_PARAMS p16{CKM_SHA256, CKG_MGF1_SHA256, 16}, p32{CKM_SHA256, CKG_MGF1_SHA256, 32};
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(rsa, Mech(CKM_SHA256_RSA_PKCS_PSS, &p16, sizeof(p16)), data));
  EXPECT_OK(VerifyOnce(RsaPub(), Mech(CKM_SHA256_RSA_PKCS_PSS, &p16, sizeof(p16)), data, sig));
  EXPECT_THAT(VerifyOnce(RsaPub(), Mech(CKM_SHA256_RSA_PKCS_PSS, &p32, sizeof(p32)), data, sig),
              RvIs(CKR_SIGNATURE_INVALID));
}

// More settings than a key keeps prepared, ECDSA with and without a hash, sign and verify
// with one private key, and a key without prepared contexts: every signature verifies under its
// own setting only.
TEST_F(OsslOpsTest, PreparedContextsBeyondTheirLimitAndWithoutThem) {
  const Bytes data = Pattern(200);
  const KeyRef rsa = Private(rsa_.at(2048), CKK_RSA);
  KeyRef bare = rsa;
  bare.prepared = nullptr;
  for (int round = 0; round < 2; ++round) {
    for (CK_ULONG salt = 0; salt < 12; ++salt) {  // 12 PSS settings: more than are kept
      SCOPED_TRACE(salt);
      CK_RSA_PKCS_PSS_PARAMS p{CKM_SHA256, CKG_MGF1_SHA256, salt}, q{CKM_SHA256, CKG_MGF1_SHA256, salt + 1};
      for (const KeyRef& k : {rsa, bare}) {
        ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(k, Mech(CKM_SHA256_RSA_PKCS_PSS, &p, sizeof(p)), data));
        EXPECT_TRUE(RsaVerifies(rsa_.at(2048).get(), CKM_SHA256, Digest(CKM_SHA256, data), sig, true, CKM_SHA256,
                                static_cast<int>(salt)));
        EXPECT_OK(VerifyOnce(k, Mech(CKM_SHA256_RSA_PKCS_PSS, &p, sizeof(p)), data, sig));  // the private key verifies
        EXPECT_THAT(VerifyOnce(k, Mech(CKM_SHA256_RSA_PKCS_PSS, &q, sizeof(q)), data, sig),
                    RvIs(CKR_SIGNATURE_INVALID));
      }
    }
    // Raw and hashed PKCS#1 v1.5 on the same key: each signs what it should.
    ASSERT_OK_AND_ASSIGN(Bytes hashed, SignOnce(rsa, Mech(CKM_SHA384_RSA_PKCS), data));
    EXPECT_TRUE(RsaVerifies(rsa_.at(2048).get(), CKM_SHA384, Digest(CKM_SHA384, data), hashed));
    EXPECT_THAT(VerifyOnce(rsa, Mech(CKM_SHA256_RSA_PKCS), data, hashed), RvIs(CKR_SIGNATURE_INVALID));
  }
  // ECDSA with and without a hash share the key's one prepared ECDSA context.
  const KeyRef ec = EcPriv("P-384");
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(Bytes s1, SignOnce(ec, Mech(CKM_ECDSA_SHA256), data));
    EXPECT_TRUE(EcdsaVerifies(ec_.at("P-384").get(), Digest(CKM_SHA256, data), s1));
    const Bytes h = Digest(CKM_SHA384, data);
    ASSERT_OK_AND_ASSIGN(Bytes s2, SignOnce(ec, Mech(CKM_ECDSA), h));
    EXPECT_TRUE(EcdsaVerifies(ec_.at("P-384").get(), h, s2));
    EXPECT_OK(VerifyOnce(EcPub("P-384"), Mech(CKM_ECDSA_SHA256), data, s1));
    EXPECT_THAT(VerifyOnce(EcPub("P-384"), Mech(CKM_ECDSA_SHA384), data, s1), RvIs(CKR_SIGNATURE_INVALID));
  }
}

TEST_F(OsslOpsTest, RawRsaPssSignsAHashOfExactlyTheHashLength) {
  for (CK_MECHANISM_TYPE hash : {CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512}) {
    SCOPED_TRACE(hash);
    Bytes digest = Digest(hash, Pattern(5));
    // A different MGF1 hash than the message hash is allowed.
    CK_RSA_PKCS_PSS_PARAMS p{hash, CKG_MGF1_SHA256, 32};
    auto m = Mech(CKM_RSA_PKCS_PSS, &p, sizeof(p));
    ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(RsaPriv(), m, digest));
    EXPECT_TRUE(RsaVerifies(rsa_.at(2048).get(), hash, digest, sig, true, CKM_SHA256, 32));
    EXPECT_OK(VerifyOnce(RsaPub(), m, digest, sig));
    Bytes longer = digest;
    longer.push_back(0);
    EXPECT_THAT(SignOnce(RsaPriv(), m, longer), RvIs(CKR_DATA_LEN_RANGE));
    EXPECT_THAT(SignOnce(RsaPriv(), m, std::span(digest).first(digest.size() - 1)), RvIs(CKR_DATA_LEN_RANGE));
  }
}

TEST_F(OsslOpsTest, RsaPssRejectsBadParameters) {
  CK_RSA_PKCS_PSS_PARAMS good{CKM_SHA256, CKG_MGF1_SHA256, 32};
  auto try_params = [&](CK_MECHANISM_TYPE mech, CK_RSA_PKCS_PSS_PARAMS p) {
    return NewSignOp(RsaPriv(), Mech(mech, &p, sizeof(p)));
  };
  EXPECT_OK(try_params(CKM_SHA256_RSA_PKCS_PSS, good).status());
  EXPECT_THAT(NewSignOp(RsaPriv(), Mech(CKM_RSA_PKCS_PSS)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewSignOp(RsaPriv(), Mech(CKM_RSA_PKCS_PSS, &good, sizeof(good) - 1)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(NewVerifyOp(RsaPub(), Mech(CKM_RSA_PKCS_PSS, nullptr, sizeof(good))), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params(CKM_RSA_PKCS_PSS, {CKM_MD5, CKG_MGF1_SHA256, 32}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params(CKM_RSA_PKCS_PSS, {CKM_SHA256, 0x99, 32}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params(CKM_SHA384_RSA_PKCS_PSS, good), RvIs(CKR_MECHANISM_PARAM_INVALID));  // hash mismatch
  // emLen 256 - hLen 32 - 2 = 222 is the largest salt for a 2048-bit key.
  EXPECT_OK(try_params(CKM_SHA256_RSA_PKCS_PSS, {CKM_SHA256, CKG_MGF1_SHA256, 222}).status());
  EXPECT_THAT(try_params(CKM_SHA256_RSA_PKCS_PSS, {CKM_SHA256, CKG_MGF1_SHA256, 223}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params(CKM_SHA256_RSA_PKCS_PSS, {CKM_SHA256, CKG_MGF1_SHA256, ~0UL}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  CK_RSA_PKCS_PSS_PARAMS max{CKM_SHA256, CKG_MGF1_SHA256, 222};
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(RsaPriv(), Mech(CKM_SHA256_RSA_PKCS_PSS, &max, sizeof(max)), Pattern(3)));
  EXPECT_OK(VerifyOnce(RsaPub(), Mech(CKM_SHA256_RSA_PKCS_PSS, &max, sizeof(max)), Pattern(3), sig));
}

TEST_F(OsslOpsTest, RsaVerifyRejectsModifiedSignaturesAndWrongLengths) {
  Bytes data = Pattern(64);
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
  for (CK_MECHANISM m : {Mech(CKM_SHA256_RSA_PKCS), Mech(CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss))}) {
    SCOPED_TRACE(m.mechanism);
    ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(RsaPriv(), m, data));
    Bytes bad = sig;
    bad[100] ^= 0x04;
    EXPECT_THAT(VerifyOnce(RsaPub(), m, data, bad), RvIs(CKR_SIGNATURE_INVALID));
    Bytes other_data = data;
    other_data[0] ^= 1;
    EXPECT_THAT(VerifyOnce(RsaPub(), m, other_data, sig), RvIs(CKR_SIGNATURE_INVALID));
    EXPECT_THAT(VerifyOnce(RsaPub(), m, data, std::span(sig).first(255)), RvIs(CKR_SIGNATURE_LEN_RANGE));
    Bytes longer = sig;
    longer.push_back(0);
    EXPECT_THAT(VerifyOnce(RsaPub(), m, data, longer), RvIs(CKR_SIGNATURE_LEN_RANGE));
    EXPECT_THAT(VerifyOnce(RsaPub(), m, data, Bytes(256, 0xFF)), RvIs(CKR_SIGNATURE_INVALID));  // >= n
  }
}

TEST_F(OsslOpsTest, LargerRsaKeysSignVerifyAndDecrypt) {
  for (CK_ULONG bits : {3072UL, 4096UL}) {
    SCOPED_TRACE(bits);
    Bytes data = Pattern(100);
    ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(RsaPriv(bits), Mech(CKM_SHA384_RSA_PKCS), data));
    EXPECT_THAT(sig, SizeIs(bits / 8));
    EXPECT_TRUE(RsaVerifies(rsa_.at(bits).get(), CKM_SHA384, Digest(CKM_SHA384, data), sig));
    CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA512, CKG_MGF1_SHA512, 64};
    ASSERT_OK_AND_ASSIGN(Bytes psig, SignOnce(RsaPriv(bits), Mech(CKM_SHA512_RSA_PKCS_PSS, &pss, sizeof(pss)), data));
    EXPECT_OK(VerifyOnce(RsaPub(bits), Mech(CKM_SHA512_RSA_PKCS_PSS, &pss, sizeof(pss)), data, psig));
    CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
    auto m = Mech(CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep));
    ASSERT_OK_AND_ASSIGN(SecureBytes ct, Encrypt(RsaPub(bits), m, data));
    ASSERT_OK_AND_ASSIGN(SecureBytes pt, Decrypt(RsaPriv(bits), m, ct));
    EXPECT_TRUE(SameBytes(pt, data));
  }
}

// ---- ECDSA -------------------------------------------------------------------------------

TEST_F(OsslOpsTest, EcdsaSignaturesAreRAndSPaddedToTheFieldSize) {
  struct C {
    const char* curve;
    size_t len;
  };
  for (C c : {C{"P-256", 64}, C{"P-384", 96}, C{"P-521", 132}, C{"secp256k1", 64}}) {
    SCOPED_TRACE(c.curve);
    Bytes hash = Digest(CKM_SHA256, Pattern(7));
    ASSERT_OK_AND_ASSIGN(auto op, NewSignOp(EcPriv(c.curve), Mech(CKM_ECDSA)));
    EXPECT_EQ(op->SignatureLength(), c.len);
    EXPECT_FALSE(op->SupportsMultiPart());
    ASSERT_OK_AND_ASSIGN(Bytes sig, op->Sign(hash));
    EXPECT_THAT(sig, SizeIs(c.len));
    EXPECT_TRUE(EcdsaVerifies(ec_.at(c.curve).get(), hash, sig));
    EXPECT_OK(VerifyOnce(EcPub(c.curve), Mech(CKM_ECDSA), hash, sig));
  }
}

TEST_F(OsslOpsTest, EcdsaWithHashingVerifiesIndependently) {
  Bytes data = Pattern(500);
  struct M {
    CK_MECHANISM_TYPE mech, hash;
  };
  for (M m : {M{CKM_ECDSA_SHA256, CKM_SHA256}, M{CKM_ECDSA_SHA384, CKM_SHA384}, M{CKM_ECDSA_SHA512, CKM_SHA512}}) {
    for (const char* curve : {"P-256", "P-384", "P-521"}) {
      SCOPED_TRACE(::testing::Message() << curve << " " << m.mech);
      ASSERT_OK_AND_ASSIGN(auto op, NewSignOp(EcPriv(curve), Mech(m.mech)));
      EXPECT_TRUE(op->SupportsMultiPart());
      ASSERT_OK(op->Update(std::span(data).first(250)));
      ASSERT_OK(op->Update(std::span(data).subspan(250)));
      ASSERT_OK_AND_ASSIGN(Bytes sig, op->Final());
      EXPECT_TRUE(EcdsaVerifies(ec_.at(curve).get(), Digest(m.hash, data), sig));
      EXPECT_OK(VerifyOnce(EcPub(curve), Mech(m.mech), data, sig));
    }
  }
}

TEST_F(OsslOpsTest, EcdsaOverAHashLongerThanTheOrderUsesItsLeftmostBits) {
  Bytes hash = Digest(CKM_SHA512, Pattern(9));
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(EcPriv("P-256"), Mech(CKM_ECDSA), hash));
  EXPECT_TRUE(EcdsaVerifies(ec_.at("P-256").get(), hash, sig));
  EXPECT_TRUE(EcdsaVerifies(ec_.at("P-256").get(), std::span(hash).first(32), sig));
  EXPECT_THAT(SignOnce(EcPriv("P-256"), Mech(CKM_ECDSA), Bytes()), RvIs(CKR_DATA_LEN_RANGE));
}

TEST_F(OsslOpsTest, EcdsaSignaturesWithShortRAndSRoundTrip) {
  // Over many signatures r or s often has leading zero bytes (always for P-521's top byte).
  for (const char* curve : {"P-256", "P-521"}) {
    SCOPED_TRACE(curve);
    for (int i = 0; i < 200; ++i) {
      Bytes hash = Digest(CKM_SHA256, Pattern(4, static_cast<uint8_t>(i)));
      ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(EcPriv(curve), Mech(CKM_ECDSA), hash));
      ASSERT_OK(VerifyOnce(EcPub(curve), Mech(CKM_ECDSA), hash, sig));
    }
  }
}

TEST_F(OsslOpsTest, EcdsaVerifyRejectsModifiedSignaturesAndWrongLengths) {
  Bytes data = Pattern(40);
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(EcPriv("P-384"), Mech(CKM_ECDSA_SHA384), data));
  for (size_t i : {0u, 47u, 48u, 95u}) {
    Bytes bad = sig;
    bad[i] ^= 0x01;
    EXPECT_THAT(VerifyOnce(EcPub("P-384"), Mech(CKM_ECDSA_SHA384), data, bad), RvIs(CKR_SIGNATURE_INVALID)) << i;
  }
  EXPECT_THAT(VerifyOnce(EcPub("P-384"), Mech(CKM_ECDSA_SHA384), data, Bytes(96, 0)), RvIs(CKR_SIGNATURE_INVALID));
  EXPECT_THAT(VerifyOnce(EcPub("P-384"), Mech(CKM_ECDSA_SHA384), data, Bytes(96, 0xFF)), RvIs(CKR_SIGNATURE_INVALID));
  EXPECT_THAT(VerifyOnce(EcPub("P-384"), Mech(CKM_ECDSA_SHA384), data, std::span(sig).first(95)),
              RvIs(CKR_SIGNATURE_LEN_RANGE));
  EXPECT_THAT(VerifyOnce(EcPub("P-384"), Mech(CKM_ECDSA_SHA384), data, Bytes(104)), RvIs(CKR_SIGNATURE_LEN_RANGE));
  // A signature from another curve's key.
  ASSERT_OK_AND_ASSIGN(Bytes sig256, SignOnce(EcPriv("secp256k1"), Mech(CKM_ECDSA_SHA256), data));
  EXPECT_THAT(VerifyOnce(EcPub("P-256"), Mech(CKM_ECDSA_SHA256), data, sig256), RvIs(CKR_SIGNATURE_INVALID));
}

TEST_F(OsslOpsTest, FinishedOperationsRefuseFurtherCalls) {
  ASSERT_OK_AND_ASSIGN(auto op, NewSignOp(EcPriv("P-256"), Mech(CKM_ECDSA_SHA256)));
  ASSERT_OK(op->Sign(Pattern(3)).status());
  EXPECT_THAT(op->Sign(Pattern(3)), RvIs(CKR_OPERATION_NOT_INITIALIZED));
  EXPECT_THAT(op->Update(Pattern(3)), RvIs(CKR_OPERATION_NOT_INITIALIZED));
  ASSERT_OK_AND_ASSIGN(auto enc, NewEncryptOp(Aes(kAes128Key), Mech(CKM_AES_ECB)));
  ASSERT_OK(enc->OneShot(Pattern(16)).status());
  EXPECT_THAT(enc->Final(), RvIs(CKR_OPERATION_NOT_INITIALIZED));
}

TEST_F(OsslOpsTest, CallsLeaveNoOpenSslErrorsQueued) {
  ERR_clear_error();
  Bytes data = Pattern(32);
  ASSERT_OK_AND_ASSIGN(Bytes sig, SignOnce(EcPriv("P-256"), Mech(CKM_ECDSA_SHA256), data));
  sig[0] ^= 1;
  EXPECT_FALSE(VerifyOnce(EcPub("P-256"), Mech(CKM_ECDSA_SHA256), data, sig).ok());
  ASSERT_OK_AND_ASSIGN(Bytes rsig, SignOnce(RsaPriv(), Mech(CKM_SHA256_RSA_PKCS), data));
  rsig[0] ^= 1;
  EXPECT_FALSE(VerifyOnce(RsaPub(), Mech(CKM_SHA256_RSA_PKCS), data, rsig).ok());
  EXPECT_FALSE(Decrypt(RsaPriv(), Mech(CKM_RSA_PKCS), Bytes(256, 7)).ok());
  CK_GCM_PARAMS p = Gcm(kGcmIv, {});
  EXPECT_FALSE(Decrypt(Aes(kGcmKey), Mech(CKM_AES_GCM, &p, sizeof(p)), Bytes(40)).ok());
  p.ulIvLen = 200;  // beyond OpenSSL's GCM IV limit
  EXPECT_FALSE(Decrypt(Aes(kGcmKey), Mech(CKM_AES_GCM, &p, sizeof(p)), Bytes(40)).ok());
  Bytes iv(16, 0);
  Bytes block = Pattern(16);
  block.back() = 0;  // never valid padding
  ASSERT_OK_AND_ASSIGN(SecureBytes ct, Encrypt(Aes(kAes128Key), Mech(CKM_AES_CBC, iv.data(), 16), block));
  EXPECT_FALSE(Decrypt(Aes(kAes128Key), Mech(CKM_AES_CBC_PAD, iv.data(), 16), ct).ok());
  EXPECT_FALSE(Unwrap(Aes(kAes128Key), Mech(CKM_AES_KEY_WRAP), Bytes(24)).ok());
  EXPECT_FALSE(Unwrap(Aes(kAes128Key), Mech(CKM_AES_KEY_WRAP_PAD), Bytes(24)).ok());
  EXPECT_EQ(ERR_peek_error(), 0u);
}

// ---- RSA encryption ----------------------------------------------------------------------

TEST_F(OsslOpsTest, RsaOaepRoundTripsWithEveryHashAndALabel) {
  Bytes label = ToBytes(std::string_view("vaultp11 label"));
  for (CK_MECHANISM_TYPE hash : {CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512}) {
    for (bool with_label : {false, true}) {
      SCOPED_TRACE(::testing::Message() << hash << " label " << with_label);
      CK_RSA_PKCS_OAEP_PARAMS p{hash, MgfFor(hash), CKZ_DATA_SPECIFIED, with_label ? label.data() : nullptr,
                                with_label ? label.size() : 0};
      auto m = Mech(CKM_RSA_PKCS_OAEP, &p, sizeof(p));
      size_t max = 256 - 2 * Digest(hash, {}).size() - 2;
      Bytes data = Pattern(max);
      ASSERT_OK_AND_ASSIGN(auto op, NewEncryptOp(RsaPub(), m));
      EXPECT_FALSE(op->SupportsMultiPart());
      EXPECT_EQ(op->MaxOutput(max, true), 256u);
      ASSERT_OK_AND_ASSIGN(SecureBytes ct, op->OneShot(data));
      EXPECT_THAT(ct, SizeIs(256));
      ASSERT_OK_AND_ASSIGN(SecureBytes pt, Decrypt(RsaPriv(), m, ct));
      EXPECT_TRUE(SameBytes(pt, data));
      EXPECT_THAT(Encrypt(RsaPub(), m, Pattern(max + 1)), RvIs(CKR_DATA_LEN_RANGE));
    }
  }
}

TEST_F(OsslOpsTest, RsaOaepCiphertextDecryptsIndependentlyWithTheLabel) {
  Bytes label = ToBytes(std::string_view("L"));
  CK_RSA_PKCS_OAEP_PARAMS p{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, label.data(), label.size()};
  Bytes data = Pattern(32);
  ASSERT_OK_AND_ASSIGN(SecureBytes ct, Encrypt(RsaPub(), Mech(CKM_RSA_PKCS_OAEP, &p, sizeof(p)), data));
  EvpPkeyPtr priv = IndependentPrivate(rsa_.at(2048).get());
  ASSERT_NE(priv, nullptr);
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(TestCtx(), priv.get(), nullptr));
  EVP_MD* md = EVP_MD_fetch(TestCtx(), "SHA256", nullptr);
  ASSERT_EQ(EVP_PKEY_decrypt_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), md), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), md), 1);
  void* l = OPENSSL_memdup(label.data(), label.size());
  ASSERT_EQ(EVP_PKEY_CTX_set0_rsa_oaep_label(ctx.get(), l, static_cast<int>(label.size())), 1);
  Bytes out(256);
  size_t len = out.size();
  ASSERT_EQ(EVP_PKEY_decrypt(ctx.get(), out.data(), &len, ct.data(), ct.size()), 1);
  out.resize(len);
  EXPECT_EQ(out, data);
  EVP_MD_free(md);
  // A different label fails.
  Bytes other = ToBytes(std::string_view("M"));
  CK_RSA_PKCS_OAEP_PARAMS q{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, other.data(), other.size()};
  EXPECT_THAT(Decrypt(RsaPriv(), Mech(CKM_RSA_PKCS_OAEP, &q, sizeof(q)), ct), RvIs(CKR_ENCRYPTED_DATA_INVALID));
}

TEST_F(OsslOpsTest, RsaPkcsEncryptionRoundTripsUpToKMinus11) {
  ASSERT_OK_AND_ASSIGN(SecureBytes ct, Encrypt(RsaPub(), Mech(CKM_RSA_PKCS), Pattern(245)));
  ASSERT_OK_AND_ASSIGN(SecureBytes pt, Decrypt(RsaPriv(), Mech(CKM_RSA_PKCS), ct));
  EXPECT_TRUE(SameBytes(pt, Pattern(245)));
  EXPECT_THAT(Encrypt(RsaPub(), Mech(CKM_RSA_PKCS), Pattern(246)), RvIs(CKR_DATA_LEN_RANGE));
  ASSERT_OK_AND_ASSIGN(auto op, NewDecryptOp(RsaPriv(), Mech(CKM_RSA_PKCS)));
  EXPECT_GE(op->MaxOutput(256, true), 245u);
  EXPECT_THAT(op->Update(ct), RvIs(CKR_FUNCTION_NOT_SUPPORTED));
}

TEST_F(OsslOpsTest, RsaDecryptRejectsWrongLengthsAndTamperedCiphertext) {
  CK_RSA_PKCS_OAEP_PARAMS p{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
  auto m = Mech(CKM_RSA_PKCS_OAEP, &p, sizeof(p));
  ASSERT_OK_AND_ASSIGN(SecureBytes ct, Encrypt(RsaPub(), m, Pattern(20)));
  SecureBytes bad = ct;
  bad[10] ^= 1;
  EXPECT_THAT(Decrypt(RsaPriv(), m, bad), RvIs(CKR_ENCRYPTED_DATA_INVALID));
  EXPECT_THAT(Decrypt(RsaPriv(), m, std::span(ct).first(255)), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
  EXPECT_THAT(Decrypt(RsaPriv(), m, Bytes(257)), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
  EXPECT_THAT(Decrypt(RsaPriv(), m, Bytes()), RvIs(CKR_ENCRYPTED_DATA_LEN_RANGE));
}

TEST_F(OsslOpsTest, RsaOaepRejectsBadParameters) {
  Bytes label(4, 1);
  auto try_params = [&](CK_RSA_PKCS_OAEP_PARAMS p) { return NewEncryptOp(RsaPub(), Mech(CKM_RSA_PKCS_OAEP, &p, sizeof(p))); };
  EXPECT_OK(try_params({CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0}).status());
  EXPECT_THAT(NewEncryptOp(RsaPub(), Mech(CKM_RSA_PKCS_OAEP)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  CK_RSA_PKCS_OAEP_PARAMS good{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
  EXPECT_THAT(NewDecryptOp(RsaPriv(), Mech(CKM_RSA_PKCS_OAEP, &good, sizeof(good) - 8)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params({CKM_MD5, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params({CKM_SHA256, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params({CKM_SHA256, 0x77, CKZ_DATA_SPECIFIED, nullptr, 0}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params({CKM_SHA256, CKG_MGF1_SHA256, 2, nullptr, 0}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params({CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 4}), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(try_params({CKM_SHA256, CKG_MGF1_SHA256, 0, label.data(), label.size()}), RvIs(CKR_MECHANISM_PARAM_INVALID));
}

// ---- wrap / unwrap -----------------------------------------------------------------------

TEST_F(OsslOpsTest, AesKeyWrapMatchesRfc3394Section41) {
  Bytes kek = Hex("000102030405060708090A0B0C0D0E0F");
  Bytes key = Hex("00112233445566778899AABBCCDDEEFF");
  Bytes want = Hex("1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5");
  ASSERT_OK_AND_ASSIGN(Bytes wrapped, Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP), key));
  EXPECT_EQ(wrapped, want);
  ASSERT_OK_AND_ASSIGN(SecureBytes back, Unwrap(Aes(kek), Mech(CKM_AES_KEY_WRAP), wrapped));
  EXPECT_TRUE(SameBytes(back, key));
  // The default IV given explicitly is the same thing.
  Bytes iv = Hex("A6A6A6A6A6A6A6A6");
  ASSERT_OK_AND_ASSIGN(Bytes wrapped2, Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP, iv.data(), 8), key));
  EXPECT_EQ(wrapped2, want);
}

TEST_F(OsslOpsTest, AesKeyWrapPadMatchesRfc5649Section6) {
  Bytes kek = Hex("5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8");
  struct V {
    Bytes key, wrapped;
  };
  for (const V& v : {V{Hex("c37b7e6492584340 bed1220780894115 5068f738"),
                       Hex("138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a")},
                     V{Hex("466f7250617369"), Hex("afbeb0f07dfbf541 9200f2ccb50bb24f")}}) {
    ASSERT_OK_AND_ASSIGN(Bytes wrapped, Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP_PAD), v.key));
    EXPECT_EQ(wrapped, v.wrapped);
    ASSERT_OK_AND_ASSIGN(SecureBytes back, Unwrap(Aes(kek), Mech(CKM_AES_KEY_WRAP_PAD), v.wrapped));
    EXPECT_TRUE(SameBytes(back, v.key));
  }
}

TEST_F(OsslOpsTest, AesKeyWrapPadRoundTripsAPrivateKeyDer) {
  ASSERT_OK_AND_ASSIGN(SecureBytes der, PrivateKeyToDer(ec_.at("P-521").get()));
  Bytes kek = Pattern(32, 4);
  ASSERT_OK_AND_ASSIGN(Bytes wrapped, Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP_PAD), der));
  ASSERT_OK_AND_ASSIGN(SecureBytes back, Unwrap(Aes(kek), Mech(CKM_AES_KEY_WRAP_PAD), wrapped));
  EXPECT_EQ(back, der);
  ASSERT_OK_AND_ASSIGN(PkeyRef k, PrivateKeyFromDer(back));
  EXPECT_EQ(EcFieldBytes(k.get()), 66u);
}

TEST_F(OsslOpsTest, AesUnwrapRejectsTamperedDataAndBadLengths) {
  Bytes kek = Pattern(16, 8);
  for (CK_MECHANISM_TYPE t : {CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD}) {
    SCOPED_TRACE(t);
    ASSERT_OK_AND_ASSIGN(Bytes wrapped, Wrap(Aes(kek), Mech(t), Pattern(32)));
    for (size_t i : {size_t{0}, size_t{8}, wrapped.size() - 1}) {
      Bytes bad = wrapped;
      bad[i] ^= 0x10;
      EXPECT_THAT(Unwrap(Aes(kek), Mech(t), bad), RvIs(CKR_WRAPPED_KEY_INVALID)) << i;
    }
    EXPECT_THAT(Unwrap(Aes(Pattern(16, 9)), Mech(t), wrapped), RvIs(CKR_WRAPPED_KEY_INVALID));
    EXPECT_THAT(Unwrap(Aes(kek), Mech(t), std::span(wrapped).first(wrapped.size() - 1)),
                RvIs(CKR_WRAPPED_KEY_LEN_RANGE));
    EXPECT_THAT(Unwrap(Aes(kek), Mech(t), Bytes(8)), RvIs(CKR_WRAPPED_KEY_LEN_RANGE));
    EXPECT_THAT(Unwrap(Aes(kek), Mech(t), Bytes()), RvIs(CKR_WRAPPED_KEY_LEN_RANGE));
  }
  EXPECT_THAT(Unwrap(Aes(kek), Mech(CKM_AES_KEY_WRAP), Bytes(16)), RvIs(CKR_WRAPPED_KEY_LEN_RANGE));
}

TEST_F(OsslOpsTest, AesKeyWrapChecksKeyLengthsAndParameters) {
  Bytes kek = Pattern(24, 8);
  EXPECT_THAT(Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP), Pattern(12)), RvIs(CKR_KEY_SIZE_RANGE));
  EXPECT_THAT(Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP), Pattern(8)), RvIs(CKR_KEY_SIZE_RANGE));
  EXPECT_THAT(Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP_PAD), Bytes()), RvIs(CKR_KEY_SIZE_RANGE));
  EXPECT_OK(Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP_PAD), Pattern(1)).status());
  EXPECT_THAT(Wrap(Aes(Pattern(20)), Mech(CKM_AES_KEY_WRAP), Pattern(16)), RvIs(CKR_WRAPPING_KEY_SIZE_RANGE));
  EXPECT_THAT(Unwrap(Aes(Pattern(20)), Mech(CKM_AES_KEY_WRAP), Pattern(24)), RvIs(CKR_UNWRAPPING_KEY_SIZE_RANGE));
  Bytes iv(8, 1);
  EXPECT_THAT(Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP, iv.data(), 4), Pattern(16)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP_PAD, iv.data(), 8), Pattern(16)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  EXPECT_THAT(Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP, nullptr, 8), Pattern(16)), RvIs(CKR_MECHANISM_PARAM_INVALID));
  // A custom IV is used on both sides and must match.
  ASSERT_OK_AND_ASSIGN(Bytes w, Wrap(Aes(kek), Mech(CKM_AES_KEY_WRAP, iv.data(), 8), Pattern(16)));
  EXPECT_OK(Unwrap(Aes(kek), Mech(CKM_AES_KEY_WRAP, iv.data(), 8), w).status());
  EXPECT_THAT(Unwrap(Aes(kek), Mech(CKM_AES_KEY_WRAP), w), RvIs(CKR_WRAPPED_KEY_INVALID));
  EXPECT_THAT(Wrap(RsaPub(), Mech(CKM_AES_KEY_WRAP), Pattern(16)), RvIs(CKR_WRAPPING_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(Unwrap(RsaPriv(), Mech(CKM_AES_KEY_WRAP), Pattern(24)), RvIs(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT));
}

TEST_F(OsslOpsTest, RsaWrapRoundTripsAnAesKey) {
  Bytes aes_key = Pattern(32, 11);
  CK_RSA_PKCS_OAEP_PARAMS p{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
  for (CK_MECHANISM m : {Mech(CKM_RSA_PKCS_OAEP, &p, sizeof(p)), Mech(CKM_RSA_PKCS)}) {
    SCOPED_TRACE(m.mechanism);
    ASSERT_OK_AND_ASSIGN(Bytes wrapped, Wrap(RsaPub(), m, aes_key));
    EXPECT_THAT(wrapped, SizeIs(256));
    ASSERT_OK_AND_ASSIGN(SecureBytes back, Unwrap(RsaPriv(), m, wrapped));
    EXPECT_TRUE(SameBytes(back, aes_key));
    EXPECT_THAT(Unwrap(RsaPriv(), m, std::span(wrapped).first(200)), RvIs(CKR_WRAPPED_KEY_LEN_RANGE));
    EXPECT_THAT(Wrap(RsaPub(), m, Pattern(250)), RvIs(CKR_KEY_SIZE_RANGE));
    EXPECT_THAT(Wrap(RsaPriv(), m, aes_key), RvIs(CKR_WRAPPING_KEY_TYPE_INCONSISTENT));
    EXPECT_THAT(Unwrap(RsaPub(), m, wrapped), RvIs(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT));
    EXPECT_THAT(Wrap(Aes(aes_key), m, aes_key), RvIs(CKR_WRAPPING_KEY_TYPE_INCONSISTENT));
  }
  ASSERT_OK_AND_ASSIGN(Bytes wrapped, Wrap(RsaPub(), Mech(CKM_RSA_PKCS_OAEP, &p, sizeof(p)), aes_key));
  wrapped[5] ^= 0x20;
  EXPECT_THAT(Unwrap(RsaPriv(), Mech(CKM_RSA_PKCS_OAEP, &p, sizeof(p)), wrapped), RvIs(CKR_WRAPPED_KEY_INVALID));
  CK_RSA_PKCS_OAEP_PARAMS bad{CKM_SHA256, CKG_MGF1_SHA512, CKZ_DATA_SPECIFIED, nullptr, 0};
  EXPECT_THAT(Wrap(RsaPub(), Mech(CKM_RSA_PKCS_OAEP, &bad, sizeof(bad)), aes_key), RvIs(CKR_MECHANISM_PARAM_INVALID));
}

}  // namespace
}  // namespace vaultp11::ossl
