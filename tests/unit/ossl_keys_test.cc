// Tests of the OpenSSL backend's key generation, import, PKCS#8 conversion and attributes.
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <map>
#include <string>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "hex.h"
#include "matchers.h"

namespace vaultp11::ossl {
namespace {

using ::testing::ElementsAre;
using ::testing::SizeIs;

using ::vaultp11::testing::Hex;

const Bytes kP256Oid = Hex("06082A8648CE3D030107");
const Bytes kP384Oid = Hex("06052B81040022");
const Bytes kP521Oid = Hex("06052B81040023");
const Bytes kSecp256k1Oid = Hex("06052B8104000A");

struct CurveCase {
  const char* name;
  Bytes oid;
  size_t field;
};
const std::vector<CurveCase>& Curves() {
  static const std::vector<CurveCase> c = {
      {"P-256", kP256Oid, 32}, {"P-384", kP384Oid, 48}, {"P-521", kP521Oid, 66}, {"secp256k1", kSecp256k1Oid, 32}};
  return c;
}

// A library context of the tests' own, so that checks do not share state with the module's.
OSSL_LIB_CTX* TestCtx() {
  static OSSL_LIB_CTX* ctx = [] {
    OSSL_LIB_CTX* c = OSSL_LIB_CTX_new();
    OSSL_PROVIDER_load(c, "default");
    return c;
  }();
  return ctx;
}

// Decodes the key's SubjectPublicKeyInfo in the test context.
EvpPkeyPtr IndependentPublic(EVP_PKEY* key) {
  auto spki = PublicKeyInfo(key);
  if (!spki.ok()) return nullptr;
  const unsigned char* p = spki->data();
  return EvpPkeyPtr(d2i_PUBKEY_ex(nullptr, &p, static_cast<long>(spki->size()), TestCtx(), nullptr));
}

bool SamePublicKey(EVP_PKEY* a, EVP_PKEY* b) {
  auto pa = PublicKeyInfo(a);
  auto pb = PublicKeyInfo(b);
  return pa.ok() && pb.ok() && *pa == *pb;
}

class OsslKeysTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (CK_ULONG bits : {2048UL, 3072UL, 4096UL}) {
      auto k = GenerateRsa(bits, {});
      ASSERT_TRUE(k.ok()) << k.error().message;
      rsa_[bits] = *k;
    }
    for (const CurveCase& c : Curves()) {
      auto k = GenerateEc(c.oid);
      ASSERT_TRUE(k.ok()) << k.error().message;
      ec_[c.name] = *k;
    }
  }
  static void TearDownTestSuite() {
    rsa_.clear();
    ec_.clear();
  }

  static EVP_PKEY* Rsa(CK_ULONG bits) { return rsa_.at(bits).get(); }
  static EVP_PKEY* Ec(const std::string& name) { return ec_.at(name).get(); }

  static std::map<CK_ULONG, PkeyRef> rsa_;
  static std::map<std::string, PkeyRef> ec_;
};
std::map<CK_ULONG, PkeyRef> OsslKeysTest::rsa_;
std::map<std::string, PkeyRef> OsslKeysTest::ec_;

// ---- generation --------------------------------------------------------------------------

TEST_F(OsslKeysTest, GeneratedRsaKeysHaveTheRequestedSizeAndExponent65537) {
  for (CK_ULONG bits : {2048UL, 3072UL, 4096UL}) {
    SCOPED_TRACE(bits);
    EXPECT_EQ(RsaModulusBits(Rsa(bits)), bits);
    ASSERT_OK_AND_ASSIGN(Bytes n, RsaModulus(Rsa(bits)));
    EXPECT_THAT(n, SizeIs(bits / 8));
    EXPECT_NE(n[0], 0);
    ASSERT_OK_AND_ASSIGN(Bytes e, RsaPublicExponent(Rsa(bits)));
    EXPECT_THAT(e, ElementsAre(0x01, 0x00, 0x01));
  }
}

TEST_F(OsslKeysTest, RsaGenerationAcceptsAnExplicit65537WithLeadingZeros) {
  ASSERT_OK_AND_ASSIGN(PkeyRef k, GenerateRsa(2048, Hex("0000010001")));
  EXPECT_EQ(RsaModulusBits(k.get()), 2048u);
}

TEST_F(OsslKeysTest, RsaGenerationRejectsSizesOutsideTheSupportedSet) {
  for (CK_ULONG bits : {0UL, 1024UL, 2047UL, 2049UL, 8192UL, ~0UL}) {
    EXPECT_THAT(GenerateRsa(bits, {}), RvIs(CKR_KEY_SIZE_RANGE)) << bits;
  }
}

TEST_F(OsslKeysTest, RsaGenerationRejectsExponentsOtherThan65537) {
  EXPECT_THAT(GenerateRsa(2048, Hex("03")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(GenerateRsa(2048, Hex("010001 00")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(GenerateRsa(2048, Hex("00")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
}

TEST_F(OsslKeysTest, GeneratedEcKeysReportTheirCurveAndFieldSize) {
  for (const CurveCase& c : Curves()) {
    SCOPED_TRACE(c.name);
    ASSERT_OK_AND_ASSIGN(Bytes params, EcParams(Ec(c.name)));
    EXPECT_EQ(params, c.oid);
    EXPECT_EQ(EcFieldBytes(Ec(c.name)), c.field);
  }
  EXPECT_EQ(EcFieldBytes(Rsa(2048)), 0u);
}

TEST_F(OsslKeysTest, EcGenerationRejectsCurvesThatAreNotSupported) {
  EXPECT_THAT(GenerateEc(Hex("06052B81040021")), RvIs(CKR_CURVE_NOT_SUPPORTED));          // P-224
  EXPECT_THAT(GenerateEc(Hex("06092B2403030208010107")), RvIs(CKR_CURVE_NOT_SUPPORTED));  // brainpoolP256r1
  EXPECT_THAT(GenerateEc(Hex("3003020101")), RvIs(CKR_CURVE_NOT_SUPPORTED));              // explicit parameters
  EXPECT_THAT(GenerateEc(Hex("1309736563703235367231")), RvIs(CKR_CURVE_NOT_SUPPORTED)); // printable name
}

TEST_F(OsslKeysTest, EcGenerationRejectsMalformedParameters) {
  EXPECT_THAT(GenerateEc({}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(GenerateEc(Hex("06082A8648CE3D0301")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));      // truncated
  EXPECT_THAT(GenerateEc(Hex("06082A8648CE3D03010700")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));  // trailing byte
  EXPECT_THAT(GenerateEc(Hex("0400")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));                    // not an OID
  EXPECT_THAT(GenerateEc(Hex("0601FF")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));                  // bad OID encoding
}

// ---- PKCS#8 ------------------------------------------------------------------------------

TEST_F(OsslKeysTest, Pkcs8RoundTripPreservesRsaKeys) {
  for (CK_ULONG bits : {2048UL, 3072UL, 4096UL}) {
    SCOPED_TRACE(bits);
    ASSERT_OK_AND_ASSIGN(SecureBytes der, PrivateKeyToDer(Rsa(bits)));
    // Independently a PKCS#8 PrivateKeyInfo.
    const unsigned char* p = der.data();
    PKCS8_PRIV_KEY_INFO* info = d2i_PKCS8_PRIV_KEY_INFO(nullptr, &p, static_cast<long>(der.size()));
    ASSERT_NE(info, nullptr);
    PKCS8_PRIV_KEY_INFO_free(info);

    ASSERT_OK_AND_ASSIGN(PkeyRef back, PrivateKeyFromDer(der));
    EXPECT_TRUE(SamePublicKey(back.get(), Rsa(bits)));
    ASSERT_OK_AND_ASSIGN(SecureBytes d1, RsaPrivateComponent(Rsa(bits), CKA_PRIVATE_EXPONENT));
    ASSERT_OK_AND_ASSIGN(SecureBytes d2, RsaPrivateComponent(back.get(), CKA_PRIVATE_EXPONENT));
    EXPECT_EQ(d1, d2);
    ASSERT_OK_AND_ASSIGN(SecureBytes der2, PrivateKeyToDer(back.get()));
    EXPECT_EQ(der, der2);
  }
}

TEST_F(OsslKeysTest, Pkcs8RoundTripPreservesEcKeysOnEveryCurve) {
  for (const CurveCase& c : Curves()) {
    SCOPED_TRACE(c.name);
    ASSERT_OK_AND_ASSIGN(SecureBytes der, PrivateKeyToDer(Ec(c.name)));
    ASSERT_OK_AND_ASSIGN(PkeyRef back, PrivateKeyFromDer(der));
    EXPECT_TRUE(SamePublicKey(back.get(), Ec(c.name)));
    ASSERT_OK_AND_ASSIGN(Bytes params, EcParams(back.get()));
    EXPECT_EQ(params, c.oid);
    ASSERT_OK_AND_ASSIGN(SecureBytes s1, EcPrivateScalar(Ec(c.name)));
    ASSERT_OK_AND_ASSIGN(SecureBytes s2, EcPrivateScalar(back.get()));
    EXPECT_EQ(s1, s2);
  }
}

TEST_F(OsslKeysTest, PrivateKeyFromDerRejectsGarbageAndTrailingBytes) {
  EXPECT_THAT(PrivateKeyFromDer({}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(PrivateKeyFromDer(Hex("300300")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  ASSERT_OK_AND_ASSIGN(SecureBytes der, PrivateKeyToDer(Ec("P-256")));
  SecureBytes longer = der;
  longer.push_back(0);
  EXPECT_THAT(PrivateKeyFromDer(longer), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  SecureBytes shorter(der.begin(), der.end() - 1);
  EXPECT_THAT(PrivateKeyFromDer(shorter), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
}

TEST_F(OsslKeysTest, PrivateKeyFromDerRejectsKeyTypesOtherThanRsaAndEc) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(TestCtx(), "ED25519", nullptr));
  EVP_PKEY* raw = nullptr;
  ASSERT_TRUE(ctx && EVP_PKEY_keygen_init(ctx.get()) == 1 && EVP_PKEY_generate(ctx.get(), &raw) == 1);
  EvpPkeyPtr ed(raw);
  unsigned char* der = nullptr;
  int len = i2d_PrivateKey(ed.get(), &der);
  ASSERT_GT(len, 0);
  Bytes bytes(der, der + len);
  OPENSSL_free(der);
  EXPECT_THAT(PrivateKeyFromDer(bytes), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
}

TEST_F(OsslKeysTest, PrivateKeyToDerRefusesAPublicKey) {
  ASSERT_OK_AND_ASSIGN(PkeyRef pub, PublicFromPrivate(Ec("P-256")));
  EXPECT_THAT(PrivateKeyToDer(pub.get()), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  ASSERT_OK_AND_ASSIGN(PkeyRef rsa_pub, PublicFromPrivate(Rsa(2048)));
  EXPECT_THAT(PrivateKeyToDer(rsa_pub.get()), RvIs(CKR_KEY_TYPE_INCONSISTENT));
}

// ---- import ------------------------------------------------------------------------------

TEST_F(OsslKeysTest, RsaPublicImportFromComponentsGivesTheSameKey) {
  ASSERT_OK_AND_ASSIGN(Bytes n, RsaModulus(Rsa(2048)));
  ASSERT_OK_AND_ASSIGN(Bytes e, RsaPublicExponent(Rsa(2048)));
  Bytes n0 = n;
  n0.insert(n0.begin(), 0);  // a leading zero is allowed
  ASSERT_OK_AND_ASSIGN(PkeyRef pub, RsaPublicFromComponents(n0, e));
  EXPECT_TRUE(SamePublicKey(pub.get(), Rsa(2048)));
  EXPECT_EQ(RsaModulusBits(pub.get()), 2048u);
  EXPECT_FALSE(RsaPrivateComponent(pub.get(), CKA_PRIVATE_EXPONENT).ok());
}

TEST_F(OsslKeysTest, RsaPublicImportRejectsBadValues) {
  ASSERT_OK_AND_ASSIGN(Bytes n, RsaModulus(Rsa(2048)));
  Bytes even = n;
  even.back() &= 0xFE;
  EXPECT_THAT(RsaPublicFromComponents(even, Hex("010001")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  Bytes small(n.begin(), n.begin() + 64);  // 512 bits
  small.back() |= 1;
  EXPECT_THAT(RsaPublicFromComponents(small, Hex("010001")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(RsaPublicFromComponents(n, Hex("01")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(RsaPublicFromComponents(n, Hex("010000")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(RsaPublicFromComponents(n, {}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(RsaPublicFromComponents({}, Hex("010001")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(RsaPublicFromComponents(n, n), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));  // e >= n
}

RsaComponents ComponentsOf(EVP_PKEY* k) {
  RsaComponents c;
  c.n = RsaModulus(k).value();
  c.e = RsaPublicExponent(k).value();
  c.d = RsaPrivateComponent(k, CKA_PRIVATE_EXPONENT).value();
  c.p = RsaPrivateComponent(k, CKA_PRIME_1).value();
  c.q = RsaPrivateComponent(k, CKA_PRIME_2).value();
  c.dp = RsaPrivateComponent(k, CKA_EXPONENT_1).value();
  c.dq = RsaPrivateComponent(k, CKA_EXPONENT_2).value();
  c.qinv = RsaPrivateComponent(k, CKA_COEFFICIENT).value();
  return c;
}

TEST_F(OsslKeysTest, RsaPrivateImportWithCrtComponentsGivesTheSameKey) {
  RsaComponents c = ComponentsOf(Rsa(2048));
  ASSERT_OK_AND_ASSIGN(PkeyRef k, RsaPrivateFromComponents(c));
  EXPECT_TRUE(SamePublicKey(k.get(), Rsa(2048)));
  ASSERT_OK_AND_ASSIGN(SecureBytes der1, PrivateKeyToDer(k.get()));
  ASSERT_OK_AND_ASSIGN(SecureBytes der2, PrivateKeyToDer(Rsa(2048)));
  EXPECT_EQ(der1, der2);
}

TEST_F(OsslKeysTest, RsaPrivateImportWithoutCrtComponentsRecoversThePrimes) {
  for (CK_ULONG bits : {2048UL, 4096UL}) {
    SCOPED_TRACE(bits);
    RsaComponents full = ComponentsOf(Rsa(bits));
    RsaComponents c;
    c.n = full.n;
    c.e = full.e;
    c.d = full.d;
    ASSERT_OK_AND_ASSIGN(PkeyRef k, RsaPrivateFromComponents(c));
    EXPECT_TRUE(SamePublicKey(k.get(), Rsa(bits)));
    ASSERT_OK_AND_ASSIGN(SecureBytes p, RsaPrivateComponent(k.get(), CKA_PRIME_1));
    ASSERT_OK_AND_ASSIGN(SecureBytes q, RsaPrivateComponent(k.get(), CKA_PRIME_2));
    EXPECT_TRUE((p == full.p && q == full.q) || (p == full.q && q == full.p));
    // With the recovered order of the primes the full CRT set imports and matches.
    if (p == full.p) {
      ASSERT_OK_AND_ASSIGN(SecureBytes qinv, RsaPrivateComponent(k.get(), CKA_COEFFICIENT));
      EXPECT_EQ(qinv, full.qinv);
    }
    RsaComponents again = ComponentsOf(k.get());
    EXPECT_OK(RsaPrivateFromComponents(again).status());
  }
}

TEST_F(OsslKeysTest, RsaPrivateImportRejectsInconsistentComponents) {
  RsaComponents good = ComponentsOf(Rsa(2048));

  RsaComponents partial = good;
  partial.dq.clear();
  EXPECT_THAT(RsaPrivateFromComponents(partial), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));

  RsaComponents wrong_d = good;
  wrong_d.d.back() ^= 0x02;
  EXPECT_THAT(RsaPrivateFromComponents(wrong_d), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  wrong_d.p.clear(); wrong_d.q.clear(); wrong_d.dp.clear(); wrong_d.dq.clear(); wrong_d.qinv.clear();
  EXPECT_THAT(RsaPrivateFromComponents(wrong_d), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));

  RsaComponents swapped = good;
  std::swap(swapped.p, swapped.q);  // dp, dq, qinv no longer fit
  EXPECT_THAT(RsaPrivateFromComponents(swapped), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));

  RsaComponents bad_qinv = good;
  bad_qinv.qinv.back() ^= 0x01;
  EXPECT_THAT(RsaPrivateFromComponents(bad_qinv), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));

  RsaComponents other_n = good;
  other_n.n = RsaModulus(Rsa(3072)).value();
  EXPECT_THAT(RsaPrivateFromComponents(other_n), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));

  RsaComponents no_d = good;
  no_d.d.clear();
  EXPECT_THAT(RsaPrivateFromComponents(no_d), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
}

TEST_F(OsslKeysTest, EcPublicImportAcceptsTheDerWrappedAndTheRawPoint) {
  for (const CurveCase& c : Curves()) {
    SCOPED_TRACE(c.name);
    ASSERT_OK_AND_ASSIGN(Bytes point, EcPoint(Ec(c.name)));
    ASSERT_OK_AND_ASSIGN(PkeyRef from_der, EcPublicFromPoint(c.oid, point));
    EXPECT_TRUE(SamePublicKey(from_der.get(), Ec(c.name)));
    Bytes raw(point.end() - (1 + 2 * c.field), point.end());
    ASSERT_EQ(raw[0], 0x04);
    ASSERT_OK_AND_ASSIGN(PkeyRef from_raw, EcPublicFromPoint(c.oid, raw));
    EXPECT_TRUE(SamePublicKey(from_raw.get(), Ec(c.name)));
    ASSERT_OK_AND_ASSIGN(Bytes point2, EcPoint(from_raw.get()));
    EXPECT_EQ(point2, point);
  }
}

TEST_F(OsslKeysTest, EcPublicImportAcceptsACompressedPointButReportsItUncompressed) {
  ASSERT_OK_AND_ASSIGN(Bytes point, EcPoint(Ec("P-256")));
  Bytes compressed(point.begin() + 3, point.begin() + 3 + 32);
  compressed.insert(compressed.begin(), (point.back() & 1) ? 0x03 : 0x02);
  ASSERT_OK_AND_ASSIGN(PkeyRef k, EcPublicFromPoint(kP256Oid, compressed));
  ASSERT_OK_AND_ASSIGN(Bytes again, EcPoint(k.get()));
  EXPECT_EQ(again, point);
  EXPECT_TRUE(SamePublicKey(k.get(), Ec("P-256")));
}

TEST_F(OsslKeysTest, EcPublicImportRejectsPointsNotOnTheCurveAndBadEncodings) {
  ASSERT_OK_AND_ASSIGN(Bytes point, EcPoint(Ec("P-256")));
  Bytes off_curve = point;
  off_curve.back() ^= 0x01;
  EXPECT_THAT(EcPublicFromPoint(kP256Oid, off_curve), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  Bytes short_point(point.begin(), point.end() - 1);
  EXPECT_THAT(EcPublicFromPoint(kP256Oid, short_point), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(EcPublicFromPoint(kP256Oid, {}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(EcPublicFromPoint(kP256Oid, Hex("00")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  // The point of one curve with the parameters of another.
  EXPECT_THAT(EcPublicFromPoint(kP384Oid, point), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(EcPublicFromPoint(kSecp256k1Oid, point), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(EcPublicFromPoint(Hex("06052B81040021"), point), RvIs(CKR_CURVE_NOT_SUPPORTED));
}

TEST_F(OsslKeysTest, EcPrivateImportFromTheScalarDerivesThePublicPoint) {
  for (const CurveCase& c : Curves()) {
    SCOPED_TRACE(c.name);
    ASSERT_OK_AND_ASSIGN(SecureBytes d, EcPrivateScalar(Ec(c.name)));
    EXPECT_THAT(d, SizeIs(c.field));
    ASSERT_OK_AND_ASSIGN(PkeyRef k, EcPrivateFromScalar(c.oid, d));
    EXPECT_TRUE(SamePublicKey(k.get(), Ec(c.name)));
    ASSERT_OK_AND_ASSIGN(Bytes p1, EcPoint(k.get()));
    ASSERT_OK_AND_ASSIGN(Bytes p2, EcPoint(Ec(c.name)));
    EXPECT_EQ(p1, p2);
    ASSERT_OK_AND_ASSIGN(SecureBytes der, PrivateKeyToDer(k.get()));
    EXPECT_OK(PrivateKeyFromDer(der).status());
  }
}

TEST_F(OsslKeysTest, EcPrivateImportRejectsScalarsOutOfRange) {
  const Bytes order = Hex("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");  // P-256 n
  EXPECT_THAT(EcPrivateFromScalar(kP256Oid, order), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(EcPrivateFromScalar(kP256Oid, Bytes(32, 0)), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(EcPrivateFromScalar(kP256Oid, {}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(EcPrivateFromScalar(kP256Oid, Bytes(33, 0x01)), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  Bytes one(40, 0);
  one.back() = 1;  // leading zeros are fine
  EXPECT_OK(EcPrivateFromScalar(kP256Oid, one).status());
  EXPECT_THAT(EcPrivateFromScalar(Hex("06052B81040021"), one), RvIs(CKR_CURVE_NOT_SUPPORTED));
}

// ---- attributes --------------------------------------------------------------------------

TEST_F(OsslKeysTest, EcPointIsADerOctetStringOfTheUncompressedPoint) {
  struct Want {
    const char* curve;
    Bytes prefix;
    size_t size;
  };
  for (const Want& w : {Want{"P-256", Hex("044104"), 67}, Want{"P-384", Hex("046104"), 99},
                        Want{"P-521", Hex("04818504"), 136}, Want{"secp256k1", Hex("044104"), 67}}) {
    SCOPED_TRACE(w.curve);
    ASSERT_OK_AND_ASSIGN(Bytes point, EcPoint(Ec(w.curve)));
    EXPECT_THAT(point, SizeIs(w.size));
    EXPECT_TRUE(std::equal(w.prefix.begin(), w.prefix.end(), point.begin()));
  }
}

TEST_F(OsslKeysTest, PublicKeyInfoIsASubjectPublicKeyInfoOfTheSameKey) {
  for (EVP_PKEY* k : {Rsa(2048), Ec("P-256"), Ec("P-521")}) {
    EvpPkeyPtr pub = IndependentPublic(k);
    ASSERT_NE(pub, nullptr);
    EXPECT_EQ(EVP_PKEY_get_bits(pub.get()), EVP_PKEY_get_bits(k));
  }
  ASSERT_OK_AND_ASSIGN(Bytes point, EcPoint(Ec("P-256")));
  ASSERT_OK_AND_ASSIGN(Bytes spki, PublicKeyInfo(Ec("P-256")));
  // The uncompressed point is the tail of the SPKI.
  EXPECT_TRUE(std::equal(point.begin() + 2, point.end(), spki.end() - 65));
}

TEST_F(OsslKeysTest, PublicFromPrivateKeepsOnlyThePublicHalf) {
  for (EVP_PKEY* k : {Rsa(2048), Ec("P-384")}) {
    ASSERT_OK_AND_ASSIGN(PkeyRef pub, PublicFromPrivate(k));
    EXPECT_TRUE(SamePublicKey(pub.get(), k));
    EXPECT_FALSE(PrivateKeyToDer(pub.get()).ok());
  }
  ASSERT_OK_AND_ASSIGN(PkeyRef pub, PublicFromPrivate(Rsa(2048)));
  EXPECT_THAT(RsaPrivateComponent(pub.get(), CKA_PRIME_1), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  ASSERT_OK_AND_ASSIGN(PkeyRef ecpub, PublicFromPrivate(Ec("P-384")));
  EXPECT_THAT(EcPrivateScalar(ecpub.get()), RvIs(CKR_KEY_TYPE_INCONSISTENT));
}

TEST_F(OsslKeysTest, RsaPrivateComponentsAreConsistentWithTheModulus) {
  RsaComponents c = ComponentsOf(Rsa(3072));
  BignumPtr n(BN_bin2bn(c.n.data(), static_cast<int>(c.n.size()), nullptr));
  BignumPtr p(BN_bin2bn(c.p.data(), static_cast<int>(c.p.size()), nullptr));
  BignumPtr q(BN_bin2bn(c.q.data(), static_cast<int>(c.q.size()), nullptr));
  BignumPtr pq(BN_new());
  std::unique_ptr<BN_CTX, OsslDeleter<&BN_CTX_free>> ctx(BN_CTX_new());
  ASSERT_EQ(BN_mul(pq.get(), p.get(), q.get(), ctx.get()), 1);
  EXPECT_EQ(BN_cmp(pq.get(), n.get()), 0);
  EXPECT_EQ(c.p.size(), 192u);
  EXPECT_THAT(RsaPrivateComponent(Rsa(2048), CKA_MODULUS), RvIs(CKR_ATTRIBUTE_TYPE_INVALID));
}

TEST_F(OsslKeysTest, AttributeGettersRejectTheWrongKeyType) {
  EXPECT_THAT(RsaModulus(Ec("P-256")), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(RsaPublicExponent(Ec("P-256")), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_EQ(RsaModulusBits(Ec("P-256")), 0u);
  EXPECT_THAT(EcPoint(Rsa(2048)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(EcParams(Rsa(2048)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(EcPrivateScalar(Rsa(2048)), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(RsaPrivateComponent(Ec("P-256"), CKA_PRIME_1), RvIs(CKR_KEY_TYPE_INCONSISTENT));
}

TEST_F(OsslKeysTest, CallsLeaveNoOpenSslErrorsQueued) {
  ERR_clear_error();
  // Successes and failures alike must leave the thread's error queue empty.
  ASSERT_OK_AND_ASSIGN(SecureBytes der, PrivateKeyToDer(Ec("P-521")));
  EXPECT_OK(PrivateKeyFromDer(der).status());
  EXPECT_FALSE(PrivateKeyFromDer(Hex("3003020100")).ok());
  ASSERT_OK_AND_ASSIGN(Bytes point, EcPoint(Ec("P-256")));
  EXPECT_OK(EcPublicFromPoint(kP256Oid, point).status());
  point.back() ^= 1;
  EXPECT_FALSE(EcPublicFromPoint(kP256Oid, point).ok());
  RsaComponents c = ComponentsOf(Rsa(2048));
  c.d.back() ^= 2;
  EXPECT_FALSE(RsaPrivateFromComponents(c).ok());
  ASSERT_OK_AND_ASSIGN(PkeyRef pub, PublicFromPrivate(Rsa(2048)));
  EXPECT_FALSE(PrivateKeyToDer(pub.get()).ok());
  EXPECT_FALSE(RsaPrivateComponent(pub.get(), CKA_PRIME_2).ok());
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST_F(OsslKeysTest, RandomBytesFillsTheBuffer) {
  std::array<uint8_t, 32> a{}, b{};
  ASSERT_OK(RandomBytes(a));
  ASSERT_OK(RandomBytes(b));
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace vaultp11::ossl
