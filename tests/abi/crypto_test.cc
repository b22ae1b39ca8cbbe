// Mechanisms and the operation rules of spec 5.2 (issue part 8).
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <cstring>

#include "fixture.h"

namespace vaultp11::testing {
namespace {

class CryptoTest : public AbiTest {
 protected:
  void SetUp() override {
    AbiTest::SetUp();
    s = LoggedInRw();
    GenRsa(s, 2048, "rsa", &rsa_pub, &rsa_priv, false);
    GenEc(s, kP256, "ec", &ec_pub, &ec_priv, false);
    aes = GenAes(s, 32, "aes", false);
  }
  CK_SESSION_HANDLE s = 0;
  CK_OBJECT_HANDLE rsa_pub = 0, rsa_priv = 0, ec_pub = 0, ec_priv = 0, aes = 0;

  std::vector<uint8_t> Encrypt(CK_MECHANISM m, CK_OBJECT_HANDLE k, const std::vector<uint8_t>& in) {
    EXPECT_EQ(f->C_EncryptInit(s, &m, k), CKR_OK);
    CK_ULONG len = 0;
    EXPECT_EQ(f->C_Encrypt(s, const_cast<uint8_t*>(in.data()), in.size(), nullptr, &len), CKR_OK);
    std::vector<uint8_t> out(len);
    EXPECT_EQ(f->C_Encrypt(s, const_cast<uint8_t*>(in.data()), in.size(), out.data(), &len), CKR_OK);
    out.resize(len);
    return out;
  }
  std::vector<uint8_t> Decrypt(CK_MECHANISM m, CK_OBJECT_HANDLE k, const std::vector<uint8_t>& in) {
    EXPECT_EQ(f->C_DecryptInit(s, &m, k), CKR_OK);
    CK_ULONG len = 0;
    EXPECT_EQ(f->C_Decrypt(s, const_cast<uint8_t*>(in.data()), in.size(), nullptr, &len), CKR_OK);
    std::vector<uint8_t> out(len);
    EXPECT_EQ(f->C_Decrypt(s, const_cast<uint8_t*>(in.data()), in.size(), out.data(), &len), CKR_OK);
    out.resize(len);
    return out;
  }
};

TEST_F(CryptoTest, EverySignatureMechanismSignsAndVerifies) {
  auto data = Bytes("message to sign");
  std::vector<uint8_t> hash(32);
  SHA256(data.data(), data.size(), hash.data());
  // CKM_RSA_PKCS signs a DigestInfo.
  std::vector<uint8_t> digest_info = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                      0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
  digest_info.insert(digest_info.end(), hash.begin(), hash.end());
  struct Case {
    CK_MECHANISM_TYPE mech;
    bool rsa;
    const std::vector<uint8_t>* input;
  };
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
  for (auto mt : {CKM_SHA1_RSA_PKCS, CKM_SHA224_RSA_PKCS, CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS}) {
    CK_MECHANISM m{mt, nullptr, 0};
    auto sig = Sign(s, m, rsa_priv, data);
    EXPECT_EQ(sig.size(), 256u);
    EXPECT_EQ(Verify(s, m, rsa_pub, data, sig), CKR_OK) << std::hex << mt;
  }
  {
    CK_MECHANISM m{CKM_RSA_PKCS, nullptr, 0};
    auto sig = Sign(s, m, rsa_priv, digest_info);
    EXPECT_EQ(Verify(s, m, rsa_pub, digest_info, sig), CKR_OK);
    // Same signature as CKM_SHA256_RSA_PKCS over the message (PKCS#1 v1.5 is deterministic).
    CK_MECHANISM m2{CKM_SHA256_RSA_PKCS, nullptr, 0};
    EXPECT_EQ(Sign(s, m2, rsa_priv, data), sig);
  }
  {
    CK_MECHANISM m{CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    auto sig = Sign(s, m, rsa_priv, hash);
    EXPECT_EQ(Verify(s, m, rsa_pub, hash, sig), CKR_OK);
  }
  struct {
    CK_MECHANISM_TYPE mech, hash;
    CK_RSA_PKCS_MGF_TYPE mgf;
    CK_ULONG slen;
  } pss_cases[] = {{CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, CKG_MGF1_SHA256, 32},
                   {CKM_SHA384_RSA_PKCS_PSS, CKM_SHA384, CKG_MGF1_SHA384, 48},
                   {CKM_SHA512_RSA_PKCS_PSS, CKM_SHA512, CKG_MGF1_SHA512, 64}};
  for (const auto& c : pss_cases) {
    CK_RSA_PKCS_PSS_PARAMS p{c.hash, c.mgf, c.slen};
    CK_MECHANISM m{c.mech, &p, sizeof(p)};
    auto sig = Sign(s, m, rsa_priv, data);
    EXPECT_EQ(Verify(s, m, rsa_pub, data, sig), CKR_OK) << std::hex << c.mech;
  }
  for (auto mt : {CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512}) {
    CK_MECHANISM m{mt, nullptr, 0};
    auto sig = Sign(s, m, ec_priv, data);
    EXPECT_EQ(sig.size(), 64u);  // r || s
    EXPECT_EQ(Verify(s, m, ec_pub, data, sig), CKR_OK);
    sig[5] ^= 1;
    EXPECT_EQ(Verify(s, m, ec_pub, data, sig), CKR_SIGNATURE_INVALID);
  }
  CK_MECHANISM raw{CKM_ECDSA, nullptr, 0};
  auto sig = Sign(s, raw, ec_priv, hash);
  EXPECT_EQ(Verify(s, raw, ec_pub, hash, sig), CKR_OK);
  EXPECT_EQ(Verify(s, raw, ec_pub, hash, std::vector<uint8_t>(sig.begin(), sig.end() - 1)), CKR_SIGNATURE_LEN_RANGE);
}

TEST_F(CryptoTest, MultiPartSignMatchesSinglePart) {
  CK_MECHANISM m{CKM_SHA256_RSA_PKCS, nullptr, 0};
  auto data = Bytes("part one|part two");
  auto whole = Sign(s, m, rsa_priv, data);
  ASSERT_EQ(f->C_SignInit(s, &m, rsa_priv), CKR_OK);
  ASSERT_EQ(f->C_SignUpdate(s, data.data(), 9), CKR_OK);
  ASSERT_EQ(f->C_SignUpdate(s, data.data() + 9, data.size() - 9), CKR_OK);
  CK_ULONG len = 0;
  ASSERT_EQ(f->C_SignFinal(s, nullptr, &len), CKR_OK);
  std::vector<uint8_t> sig(len);
  ASSERT_EQ(f->C_SignFinal(s, sig.data(), &len), CKR_OK);
  EXPECT_EQ(sig, whole);
  ASSERT_EQ(f->C_VerifyInit(s, &m, rsa_pub), CKR_OK);
  ASSERT_EQ(f->C_VerifyUpdate(s, data.data(), 4), CKR_OK);
  ASSERT_EQ(f->C_VerifyUpdate(s, data.data() + 4, data.size() - 4), CKR_OK);
  EXPECT_EQ(f->C_VerifyFinal(s, sig.data(), sig.size()), CKR_OK);
}

TEST_F(CryptoTest, OperationRules) {
  CK_MECHANISM m{CKM_SHA256_RSA_PKCS, nullptr, 0};
  auto data = Bytes("rules");
  // Not initialised.
  CK_ULONG len = 0;
  EXPECT_EQ(f->C_Sign(s, data.data(), data.size(), nullptr, &len), CKR_OPERATION_NOT_INITIALIZED);
  EXPECT_EQ(f->C_SignFinal(s, nullptr, &len), CKR_OPERATION_NOT_INITIALIZED);
  // Active twice.
  ASSERT_EQ(f->C_SignInit(s, &m, rsa_priv), CKR_OK);
  EXPECT_EQ(f->C_SignInit(s, &m, rsa_priv), CKR_OPERATION_ACTIVE);
  // NULL buffer: length, operation stays.
  ASSERT_EQ(f->C_Sign(s, data.data(), data.size(), nullptr, &len), CKR_OK);
  EXPECT_EQ(len, 256u);
  // Too small: CKR_BUFFER_TOO_SMALL with the length, operation stays.
  std::vector<uint8_t> sig(10);
  len = sig.size();
  EXPECT_EQ(f->C_Sign(s, data.data(), data.size(), sig.data(), &len), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(len, 256u);
  sig.resize(len);
  ASSERT_EQ(f->C_Sign(s, data.data(), data.size(), sig.data(), &len), CKR_OK);
  // Finished: a second call is not initialised.
  EXPECT_EQ(f->C_Sign(s, data.data(), data.size(), sig.data(), &len), CKR_OPERATION_NOT_INITIALIZED);
  // A single-part call after an Update is CKR_OPERATION_ACTIVE, and ends the operation (spec
  // 5.12: C_Sign always terminates it unless it returns CKR_BUFFER_TOO_SMALL or a length).
  ASSERT_EQ(f->C_SignInit(s, &m, rsa_priv), CKR_OK);
  ASSERT_EQ(f->C_SignUpdate(s, data.data(), data.size()), CKR_OK);
  EXPECT_EQ(f->C_Sign(s, data.data(), data.size(), sig.data(), &len), CKR_OPERATION_ACTIVE);
  len = sig.size();
  EXPECT_EQ(f->C_SignFinal(s, sig.data(), &len), CKR_OPERATION_NOT_INITIALIZED);
  // Any other error ends the operation: a NULL length pointer.
  ASSERT_EQ(f->C_SignInit(s, &m, rsa_priv), CKR_OK);
  EXPECT_EQ(f->C_Sign(s, data.data(), data.size(), sig.data(), nullptr), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_Sign(s, data.data(), data.size(), sig.data(), &len), CKR_OPERATION_NOT_INITIALIZED);
  // A failed verify ends it too.
  ASSERT_EQ(f->C_VerifyInit(s, &m, rsa_pub), CKR_OK);
  sig[0] ^= 0xff;
  EXPECT_EQ(f->C_Verify(s, data.data(), data.size(), sig.data(), sig.size()), CKR_SIGNATURE_INVALID);
  EXPECT_EQ(f->C_Verify(s, data.data(), data.size(), sig.data(), sig.size()), CKR_OPERATION_NOT_INITIALIZED);
  // Raw mechanisms are single-part only.
  CK_MECHANISM raw{CKM_ECDSA, nullptr, 0};
  ASSERT_EQ(f->C_SignInit(s, &raw, ec_priv), CKR_OK);
  EXPECT_EQ(f->C_SignUpdate(s, data.data(), data.size()), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_SignInit(s, nullptr, ec_priv), CKR_ARGUMENTS_BAD);
}

TEST_F(CryptoTest, KeyChecksAtInit) {
  CK_MECHANISM m{CKM_SHA256_RSA_PKCS, nullptr, 0};
  CK_OBJECT_CLASS dc = CKO_DATA;
  CK_ATTRIBUTE dt[] = {{CKA_CLASS, &dc, sizeof(dc)}};
  CK_OBJECT_HANDLE data_obj;
  ASSERT_EQ(f->C_CreateObject(s, dt, 1, &data_obj), CKR_OK);
  EXPECT_EQ(f->C_SignInit(s, &m, data_obj), CKR_KEY_HANDLE_INVALID);
  EXPECT_EQ(f->C_SignInit(s, &m, 987654), CKR_KEY_HANDLE_INVALID);
  EXPECT_EQ(f->C_SignInit(s, &m, ec_priv), CKR_KEY_TYPE_INCONSISTENT);
  CK_MECHANISM unknown{CKM_MD5_RSA_PKCS, nullptr, 0};
  EXPECT_EQ(f->C_SignInit(s, &unknown, rsa_priv), CKR_MECHANISM_INVALID);
  CK_MECHANISM enc_only{CKM_AES_CBC, nullptr, 0};
  EXPECT_EQ(f->C_SignInit(s, &enc_only, aes), CKR_MECHANISM_INVALID);
  // A public key has no CKA_SIGN: not a signing key.
  EXPECT_NE(f->C_SignInit(s, &m, rsa_pub), CKR_OK);
  // CKA_SIGN false.
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE off{CKA_SIGN, &no, 1};
  ASSERT_EQ(f->C_SetAttributeValue(s, rsa_priv, &off, 1), CKR_OK);
  EXPECT_EQ(f->C_SignInit(s, &m, rsa_priv), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CK_ATTRIBUTE enc_off{CKA_ENCRYPT, &no, 1};
  ASSERT_EQ(f->C_SetAttributeValue(s, aes, &enc_off, 1), CKR_OK);
  CK_BYTE iv[16] = {};
  CK_MECHANISM cbc{CKM_AES_CBC, iv, sizeof(iv)};
  EXPECT_EQ(f->C_EncryptInit(s, &cbc, aes), CKR_KEY_FUNCTION_NOT_PERMITTED);
  // Bad parameters.
  CK_OBJECT_HANDLE k2 = GenAes(s, 16, "k2", false);
  CK_MECHANISM short_iv{CKM_AES_CBC, iv, 8};
  EXPECT_EQ(f->C_EncryptInit(s, &short_iv, k2), CKR_MECHANISM_PARAM_INVALID);
  CK_MECHANISM no_iv{CKM_AES_CBC_PAD, nullptr, 0};
  EXPECT_EQ(f->C_EncryptInit(s, &no_iv, k2), CKR_MECHANISM_PARAM_INVALID);
  CK_RSA_PKCS_PSS_PARAMS bad_pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM pss_short{CKM_SHA256_RSA_PKCS_PSS, &bad_pss, 3};
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE on{CKA_SIGN, &yes, 1};
  ASSERT_EQ(f->C_SetAttributeValue(s, rsa_priv, &on, 1), CKR_OK);
  EXPECT_EQ(f->C_SignInit(s, &pss_short, rsa_priv), CKR_MECHANISM_PARAM_INVALID);
  CK_RSA_PKCS_PSS_PARAMS mismatch{CKM_SHA512, CKG_MGF1_SHA512, 64};
  CK_MECHANISM pss_mm{CKM_SHA256_RSA_PKCS_PSS, &mismatch, sizeof(mismatch)};
  EXPECT_EQ(f->C_SignInit(s, &pss_mm, rsa_priv), CKR_MECHANISM_PARAM_INVALID);
  // CKA_ALLOWED_MECHANISMS restricts the key.
  CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_MECHANISM_TYPE allowed[] = {CKM_ECDSA_SHA384};
  CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()}};
  CK_ATTRIBUTE vt[] = {{CKA_ALLOWED_MECHANISMS, allowed, sizeof(allowed)}};
  CK_OBJECT_HANDLE rp, rv;
  ASSERT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 1, vt, 1, &rp, &rv), CKR_OK);
  CK_MECHANISM e256{CKM_ECDSA_SHA256, nullptr, 0}, e384{CKM_ECDSA_SHA384, nullptr, 0};
  EXPECT_EQ(f->C_SignInit(s, &e256, rv), CKR_MECHANISM_INVALID);
  EXPECT_EQ(f->C_SignInit(s, &e384, rv), CKR_OK);
}

TEST_F(CryptoTest, RsaEncryptDecrypt) {
  auto msg = Bytes("secret session key material");
  CK_MECHANISM pkcs{CKM_RSA_PKCS, nullptr, 0};
  auto ct = Encrypt(pkcs, rsa_pub, msg);
  EXPECT_EQ(ct.size(), 256u);
  EXPECT_EQ(Decrypt(pkcs, rsa_priv, ct), msg);
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_MECHANISM om{CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
  ct = Encrypt(om, rsa_pub, msg);
  EXPECT_EQ(Decrypt(om, rsa_priv, ct), msg);
  // A wrong ciphertext fails and ends the operation.
  ct[3] ^= 1;
  ASSERT_EQ(f->C_DecryptInit(s, &om, rsa_priv), CKR_OK);
  CK_BYTE out[256];
  CK_ULONG len = sizeof(out);
  EXPECT_NE(f->C_Decrypt(s, ct.data(), ct.size(), out, &len), CKR_OK);
  EXPECT_EQ(f->C_Decrypt(s, ct.data(), ct.size(), out, &len), CKR_OPERATION_NOT_INITIALIZED);
}

TEST_F(CryptoTest, AesModesSingleAndMultiPart) {
  std::vector<uint8_t> msg(100);
  for (size_t i = 0; i < msg.size(); ++i) msg[i] = static_cast<uint8_t>(i);
  std::vector<uint8_t> block_msg(msg.begin(), msg.begin() + 96);
  CK_BYTE iv[16];
  for (int i = 0; i < 16; ++i) iv[i] = static_cast<CK_BYTE>(0xa0 + i);
  CK_MECHANISM ecb{CKM_AES_ECB, nullptr, 0};
  EXPECT_EQ(Decrypt(ecb, aes, Encrypt(ecb, aes, block_msg)), block_msg);
  CK_MECHANISM cbc{CKM_AES_CBC, iv, 16};
  EXPECT_EQ(Decrypt(cbc, aes, Encrypt(cbc, aes, block_msg)), block_msg);
  CK_MECHANISM pad{CKM_AES_CBC_PAD, iv, 16};
  auto ct = Encrypt(pad, aes, msg);
  EXPECT_EQ(ct.size(), 112u);
  EXPECT_EQ(Decrypt(pad, aes, ct), msg);
  CK_AES_CTR_PARAMS ctr_p{128, {}};
  std::memcpy(ctr_p.cb, iv, 16);
  CK_MECHANISM ctr{CKM_AES_CTR, &ctr_p, sizeof(ctr_p)};
  ct = Encrypt(ctr, aes, msg);
  EXPECT_EQ(ct.size(), msg.size());
  EXPECT_EQ(Decrypt(ctr, aes, ct), msg);
  CK_BYTE gcm_iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  CK_BYTE aad[] = {'h', 'd', 'r'};
  CK_GCM_PARAMS gp{gcm_iv, 12, 96, aad, sizeof(aad), 128};
  CK_MECHANISM gcm{CKM_AES_GCM, &gp, sizeof(gp)};
  ct = Encrypt(gcm, aes, msg);
  EXPECT_EQ(ct.size(), msg.size() + 16);
  EXPECT_EQ(Decrypt(gcm, aes, ct), msg);
  ct.back() ^= 1;
  ASSERT_EQ(f->C_DecryptInit(s, &gcm, aes), CKR_OK);
  std::vector<uint8_t> out(200);
  CK_ULONG len = out.size();
  EXPECT_EQ(f->C_Decrypt(s, ct.data(), ct.size(), out.data(), &len), CKR_ENCRYPTED_DATA_INVALID);
  // Multi-part CBC_PAD equals single part.
  auto single = Encrypt(pad, aes, msg);
  ASSERT_EQ(f->C_EncryptInit(s, &pad, aes), CKR_OK);
  std::vector<uint8_t> multi;
  for (size_t off = 0; off < msg.size(); off += 30) {
    size_t n = std::min<size_t>(30, msg.size() - off);
    CK_ULONG l = 0;
    ASSERT_EQ(f->C_EncryptUpdate(s, msg.data() + off, n, nullptr, &l), CKR_OK);
    std::vector<uint8_t> part(l);
    ASSERT_EQ(f->C_EncryptUpdate(s, msg.data() + off, n, part.data(), &l), CKR_OK);
    multi.insert(multi.end(), part.begin(), part.begin() + l);
  }
  CK_ULONG l = 0;
  ASSERT_EQ(f->C_EncryptFinal(s, nullptr, &l), CKR_OK);
  std::vector<uint8_t> last(l);
  ASSERT_EQ(f->C_EncryptFinal(s, last.data(), &l), CKR_OK);
  multi.insert(multi.end(), last.begin(), last.begin() + l);
  EXPECT_EQ(multi, single);
  // Single-part after an update: CKR_OPERATION_ACTIVE, and the operation is over.
  ASSERT_EQ(f->C_EncryptInit(s, &pad, aes), CKR_OK);
  l = 200;
  ASSERT_EQ(f->C_EncryptUpdate(s, msg.data(), 16, out.data(), &l), CKR_OK);
  l = 200;
  EXPECT_EQ(f->C_Encrypt(s, msg.data(), 16, out.data(), &l), CKR_OPERATION_ACTIVE);
  l = 200;
  EXPECT_EQ(f->C_EncryptFinal(s, out.data(), &l), CKR_OPERATION_NOT_INITIALIZED);
  // Too small keeps the operation and the computed output.
  ASSERT_EQ(f->C_EncryptInit(s, &pad, aes), CKR_OK);
  l = 5;
  EXPECT_EQ(f->C_Encrypt(s, msg.data(), msg.size(), out.data(), &l), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(l, 112u);
  l = out.size();
  ASSERT_EQ(f->C_Encrypt(s, msg.data(), msg.size(), out.data(), &l), CKR_OK);
  EXPECT_EQ(std::vector<uint8_t>(out.begin(), out.begin() + l), single);
  // Unaligned input for CBC without padding.
  ASSERT_EQ(f->C_EncryptInit(s, &cbc, aes), CKR_OK);
  l = out.size();
  EXPECT_EQ(f->C_Encrypt(s, msg.data(), 17, out.data(), &l), CKR_DATA_LEN_RANGE);
}

TEST_F(CryptoTest, WrapAndUnwrap) {
  CK_OBJECT_HANDLE kek = GenAes(s, 32, "kek", false);
  CK_OBJECT_HANDLE target = GenAes(s, 16, "target", false, /*extractable=*/true);
  CK_OBJECT_HANDLE locked = GenAes(s, 16, "locked", false, /*extractable=*/false);
  CK_OBJECT_CLASS sc = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &sc, sizeof(sc)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
  auto data = Bytes("0123456789abcdef");
  CK_MECHANISM ecb{CKM_AES_ECB, nullptr, 0};
  auto reference = Encrypt(ecb, target, data);
  for (CK_MECHANISM_TYPE mt : {CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD}) {
    CK_MECHANISM m{mt, nullptr, 0};
    CK_ULONG len = 0;
    ASSERT_EQ(f->C_WrapKey(s, &m, kek, target, nullptr, &len), CKR_OK);
    std::vector<uint8_t> wrapped(len);
    CK_ULONG small = 4;
    EXPECT_EQ(f->C_WrapKey(s, &m, kek, target, wrapped.data(), &small), CKR_BUFFER_TOO_SMALL);
    ASSERT_EQ(f->C_WrapKey(s, &m, kek, target, wrapped.data(), &len), CKR_OK);
    EXPECT_EQ(len, 24u);
    CK_OBJECT_HANDLE copy;
    ASSERT_EQ(f->C_UnwrapKey(s, &m, kek, wrapped.data(), len, tmpl, 5, &copy), CKR_OK);
    EXPECT_EQ(Encrypt(ecb, copy, data), reference);
    EXPECT_FALSE(GetBool(s, copy, CKA_LOCAL));
    wrapped[2] ^= 1;
    EXPECT_EQ(f->C_UnwrapKey(s, &m, kek, wrapped.data(), len, tmpl, 5, &copy), CKR_WRAPPED_KEY_INVALID);
    EXPECT_EQ(f->C_WrapKey(s, &m, kek, locked, nullptr, &len), CKR_KEY_UNEXTRACTABLE);
  }
  // RSA-OAEP wrap of an AES key.
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_MECHANISM om{CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
  CK_ULONG len = 0;
  ASSERT_EQ(f->C_WrapKey(s, &om, rsa_pub, target, nullptr, &len), CKR_OK);
  std::vector<uint8_t> wrapped(len);
  ASSERT_EQ(f->C_WrapKey(s, &om, rsa_pub, target, wrapped.data(), &len), CKR_OK);
  CK_OBJECT_HANDLE copy;
  ASSERT_EQ(f->C_UnwrapKey(s, &om, rsa_priv, wrapped.data(), len, tmpl, 5, &copy), CKR_OK);
  EXPECT_EQ(Encrypt(ecb, copy, data), reference);
  // Handle errors name the right handle.
  CK_MECHANISM kw{CKM_AES_KEY_WRAP, nullptr, 0};
  EXPECT_EQ(f->C_WrapKey(s, &kw, 4242, target, nullptr, &len), CKR_WRAPPING_KEY_HANDLE_INVALID);
  EXPECT_EQ(f->C_WrapKey(s, &kw, kek, 4242, nullptr, &len), CKR_KEY_HANDLE_INVALID);
  EXPECT_EQ(f->C_UnwrapKey(s, &kw, 4242, wrapped.data(), 24, tmpl, 5, &copy), CKR_UNWRAPPING_KEY_HANDLE_INVALID);
  EXPECT_EQ(f->C_WrapKey(s, &kw, kek, target, nullptr, nullptr), CKR_ARGUMENTS_BAD);
  // CKA_WRAP_WITH_TRUSTED needs a trusted wrapping key.
  CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG l16 = 16;
  CK_ATTRIBUTE wt[] = {{CKA_VALUE_LEN, &l16, sizeof(l16)}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_WRAP_WITH_TRUSTED, &yes, 1}};
  CK_OBJECT_HANDLE guarded;
  ASSERT_EQ(f->C_GenerateKey(s, &gen, wt, 3, &guarded), CKR_OK);
  EXPECT_EQ(f->C_WrapKey(s, &kw, kek, guarded, nullptr, &len), CKR_KEY_NOT_WRAPPABLE);
}

TEST_F(CryptoTest, PrivateKeyWrapRoundTrip) {
  CK_OBJECT_HANDLE kek = GenAes(s, 32, "kek2", false);
  CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()}, {CKA_TOKEN, &no, 1}};
  CK_ATTRIBUTE vt[] = {{CKA_EXTRACTABLE, &yes, 1}, {CKA_TOKEN, &no, 1}};
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 2, vt, 2, &pub, &priv), CKR_OK);
  CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  CK_ULONG len = 0;
  ASSERT_EQ(f->C_WrapKey(s, &kwp, kek, priv, nullptr, &len), CKR_OK);
  std::vector<uint8_t> wrapped(len);
  ASSERT_EQ(f->C_WrapKey(s, &kwp, kek, priv, wrapped.data(), &len), CKR_OK);
  CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
  CK_KEY_TYPE ec = CKK_EC;
  CK_ATTRIBUTE ut[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_KEY_TYPE, &ec, sizeof(ec)}, {CKA_SIGN, &yes, 1},
                       {CKA_TOKEN, &no, 1}};
  CK_OBJECT_HANDLE copy;
  ASSERT_EQ(f->C_UnwrapKey(s, &kwp, kek, wrapped.data(), len, ut, 4, &copy), CKR_OK);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  auto data = Bytes("unwrapped private key");
  EXPECT_EQ(Verify(s, m, pub, data, Sign(s, m, copy, data)), CKR_OK);
  EXPECT_EQ(GetAttr(s, copy, CKA_EC_POINT), GetAttr(s, pub, CKA_EC_POINT));
}

TEST_F(CryptoTest, Digests) {
  auto data = Bytes("abc");
  struct {
    CK_MECHANISM_TYPE m;
    size_t len;
  } cases[] = {{CKM_SHA_1, 20}, {CKM_SHA224, 28}, {CKM_SHA256, 32}, {CKM_SHA384, 48}, {CKM_SHA512, 64}};
  for (const auto& c : cases) {
    CK_MECHANISM m{c.m, nullptr, 0};
    ASSERT_EQ(f->C_DigestInit(s, &m), CKR_OK);
    CK_ULONG len = 0;
    ASSERT_EQ(f->C_Digest(s, data.data(), data.size(), nullptr, &len), CKR_OK);
    EXPECT_EQ(len, c.len);
    std::vector<uint8_t> out(len);
    ASSERT_EQ(f->C_Digest(s, data.data(), data.size(), out.data(), &len), CKR_OK);
    std::vector<uint8_t> want(EVP_MAX_MD_SIZE);
    unsigned int wl = 0;
    const char* names[] = {"SHA1", "SHA224", "SHA256", "SHA384", "SHA512"};
    EVP_Digest(data.data(), data.size(), want.data(), &wl, EVP_get_digestbyname(names[&c - cases]), nullptr);
    want.resize(wl);
    EXPECT_EQ(out, want);
  }
  CK_MECHANISM m{CKM_SHA256, nullptr, 0};
  ASSERT_EQ(f->C_DigestInit(s, &m), CKR_OK);
  ASSERT_EQ(f->C_DigestUpdate(s, data.data(), 1), CKR_OK);
  ASSERT_EQ(f->C_DigestUpdate(s, data.data() + 1, 2), CKR_OK);
  CK_BYTE out[32];
  CK_ULONG len = 31;
  EXPECT_EQ(f->C_DigestFinal(s, out, &len), CKR_BUFFER_TOO_SMALL);
  len = 32;
  ASSERT_EQ(f->C_DigestFinal(s, out, &len), CKR_OK);
  CK_BYTE want[32];
  SHA256(data.data(), data.size(), want);
  EXPECT_EQ(0, std::memcmp(out, want, 32));
  CK_MECHANISM bad{CKM_MD5, nullptr, 0};
  EXPECT_EQ(f->C_DigestInit(s, &bad), CKR_MECHANISM_INVALID);
}

}  // namespace
}  // namespace vaultp11::testing
