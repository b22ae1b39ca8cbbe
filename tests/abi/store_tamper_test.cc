// Issue 16 item 6: attributes edited in the store file by another program (no master key) are
// refused, never used. Each test makes objects through the module, finalizes it, edits the
// SQLite file directly as an attacker with write access to it would (attributes are stored as
// AttributeMap::Serialize writes them: 8-byte little-endian type, 4-byte little-endian length,
// value), initializes again and shows the object is refused (CKR_DEVICE_ERROR, or not found)
// and its value never readable. README "Store" says what is authenticated.
#include <sqlite3.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "fixture.h"

namespace vaultp11::testing {
namespace {

using Blob = std::vector<uint8_t>;

// Sets the CK_BBOOL attribute `type` in a serialized attribute map; false when it is not there.
bool SetBool(Blob& attrs, CK_ATTRIBUTE_TYPE type, CK_BBOOL value) {
  size_t pos = 0;
  while (attrs.size() - pos >= 12) {
    uint64_t t = 0;
    uint32_t len = 0;
    for (int i = 0; i < 8; ++i) t |= static_cast<uint64_t>(attrs[pos + i]) << (8 * i);
    for (int i = 0; i < 4; ++i) len |= static_cast<uint32_t>(attrs[pos + 8 + i]) << (8 * i);
    pos += 12;
    if (attrs.size() - pos < len) return false;
    if (t == type && len == 1) {
      attrs[pos] = value;
      return true;
    }
    pos += len;
  }
  return false;
}

class StoreTamperTest : public AbiTest {
 protected:
  void SetUp() override {
    AbiTest::SetUp();
    // The same deployment, logging to a file this test reads.
    std::ifstream in(config_path);
    std::string conf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string plain = "log: { level: error }";
    const size_t at = conf.find(plain);
    ASSERT_NE(at, std::string::npos);
    conf.replace(at, plain.size(),
                 "log: { level: error, sink: \"file:" + dir.file("module.log") + "\" }");
    logged_config_ = dir.file("logged.yaml");
    std::ofstream(logged_config_) << conf;
  }

  void Finalize() {
    ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
    initialized = false;
  }

  // id and attributes of the objects rows with this label and class.
  struct Row {
    int64_t id = 0;
    Blob attributes;
  };
  std::vector<Row> Rows(const std::string& label, CK_OBJECT_CLASS cls) {
    std::vector<Row> out;
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(dir.file("store.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr),
              SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(
        sqlite3_prepare_v2(db, "SELECT id, attributes FROM objects WHERE label = ? AND class = ?",
                           -1, &st, nullptr),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, label.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, static_cast<sqlite3_int64>(cls));
    while (sqlite3_step(st) == SQLITE_ROW) {
      const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(st, 1));
      out.push_back(Row{sqlite3_column_int64(st, 0), Blob(p, p + sqlite3_column_bytes(st, 1))});
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  }
  void WriteAttributes(int64_t id, const Blob& attrs) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(dir.file("store.db").c_str(), &db, SQLITE_OPEN_READWRITE, nullptr),
              SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(
        sqlite3_prepare_v2(db, "UPDATE objects SET attributes = ? WHERE id = ?", -1, &st, nullptr),
        SQLITE_OK);
    sqlite3_bind_blob(st, 1, attrs.data(), static_cast<int>(attrs.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, id);
    EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
    EXPECT_EQ(sqlite3_changes(db), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
  }

  // A search as a consumer does it; the first failing call's CK_RV, and what it found.
  struct Search {
    CK_RV rv = CKR_OK;
    std::vector<CK_OBJECT_HANDLE> found;
  };
  Search Find(CK_SESSION_HANDLE s, const std::string& label) {
    Search out;
    CK_ATTRIBUTE t = {CKA_LABEL, const_cast<char*>(label.data()), label.size()};
    out.rv = f->C_FindObjectsInit(s, label.empty() ? nullptr : &t, label.empty() ? 0 : 1);
    if (out.rv != CKR_OK) return out;
    CK_OBJECT_HANDLE h[16];
    CK_ULONG n = 0;
    out.rv = f->C_FindObjects(s, h, 16, &n);
    if (out.rv == CKR_OK) out.found.assign(h, h + n);
    f->C_FindObjectsFinal(s);
    return out;
  }
  // CKA_VALUE of `h`, when the module hands it out.
  std::optional<Blob> Value(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h) {
    CK_ATTRIBUTE a = {CKA_VALUE, nullptr, 0};
    if (f->C_GetAttributeValue(s, h, &a, 1) != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
      return std::nullopt;
    Blob v(a.ulValueLen);
    a.pValue = v.data();
    if (f->C_GetAttributeValue(s, h, &a, 1) != CKR_OK) return std::nullopt;
    v.resize(a.ulValueLen);
    return v;
  }
  // The search is refused (CKR_DEVICE_ERROR) or finds nothing, and nothing it finds gives a value.
  void ExpectRefused(CK_SESSION_HANDLE s, const std::string& label) {
    SCOPED_TRACE(label.empty() ? "(every object)" : label);
    Search r = Find(s, label);
    EXPECT_TRUE(r.rv == CKR_DEVICE_ERROR || (r.rv == CKR_OK && r.found.empty()))
        << "rv " << r.rv << ", " << r.found.size() << " found";
    for (CK_OBJECT_HANDLE h : r.found)
      EXPECT_FALSE(Value(s, h).has_value()) << "value of object " << h << " read";
  }
  // The module's log names the refused row.
  void ExpectLogged(int64_t id) {
    std::ifstream in(dir.file("module.log"));
    std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(log.find("object " + std::to_string(id) + " of vault 'payments'"), std::string::npos)
        << log;
    EXPECT_NE(log.find("failed authentication"), std::string::npos) << log;
  }

  std::string logged_config_;
};

TEST_F(StoreTamperTest, FlippedSensitiveAndExtractableDoNotExposeANonExtractableKey) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE key = GenAes(s, 32, "nx-key");
  GenAes(s, 32, "untouched");
  EXPECT_FALSE(Value(s, key).has_value());
  Finalize();

  auto rows = Rows("nx-key", CKO_SECRET_KEY);
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_TRUE(SetBool(rows[0].attributes, CKA_SENSITIVE, CK_FALSE));
  ASSERT_TRUE(SetBool(rows[0].attributes, CKA_EXTRACTABLE, CK_TRUE));
  WriteAttributes(rows[0].id, rows[0].attributes);

  ASSERT_EQ(InitWith(logged_config_), CKR_OK);
  s = LoggedInRw();
  ExpectRefused(s, "nx-key");
  ExpectRefused(s, "");
  // Objects of untouched items are still served.
  Search other = Find(s, "untouched");
  EXPECT_EQ(other.rv, CKR_OK);
  EXPECT_EQ(other.found.size(), 1u);
  Finalize();
  ExpectLogged(rows[0].id);
}

TEST_F(StoreTamperTest, FlippedPrivateDoesNotExposeADataObjectWithoutLogin) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_CLASS dc = CKO_DATA;
  CK_BBOOL t = CK_TRUE;
  std::string label = "db-password", value = "s3cr3t value";
  CK_ATTRIBUTE dt[] = {{CKA_CLASS, &dc, sizeof(dc)},
                       {CKA_TOKEN, &t, 1},
                       {CKA_PRIVATE, &t, 1},
                       {CKA_LABEL, label.data(), label.size()},
                       {CKA_VALUE, value.data(), value.size()}};
  CK_OBJECT_HANDLE h;
  ASSERT_EQ(f->C_CreateObject(s, dt, 5, &h), CKR_OK);
  Finalize();

  auto rows = Rows(label, CKO_DATA);
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_TRUE(SetBool(rows[0].attributes, CKA_PRIVATE, CK_FALSE));
  WriteAttributes(rows[0].id, rows[0].attributes);

  ASSERT_EQ(InitWith(logged_config_), CKR_OK);
  CK_SESSION_HANDLE pub = OpenRo();  // no login: only public objects
  ExpectRefused(pub, label);
  ExpectRefused(pub, "");
  CK_SESSION_HANDLE in = LoggedInRw();
  ExpectRefused(in, label);
  Finalize();
  ExpectLogged(rows[0].id);
}

// Each row's attributes are valid ones, of another row: the MAC binds them to their row.
TEST_F(StoreTamperTest, SwappedAttributeBlobsAreRefused) {
  CK_SESSION_HANDLE s = LoggedInRw();
  GenAes(s, 32, "nx-key");
  CK_OBJECT_HANDLE open =
      GenAes(s, 32, "open-key", true, /*extractable=*/true, /*sensitive=*/false);
  auto open_value = Value(s, open);
  ASSERT_TRUE(open_value.has_value());
  Finalize();

  auto nx = Rows("nx-key", CKO_SECRET_KEY), op = Rows("open-key", CKO_SECRET_KEY);
  ASSERT_EQ(nx.size(), 1u);
  ASSERT_EQ(op.size(), 1u);
  WriteAttributes(nx[0].id, op[0].attributes);
  WriteAttributes(op[0].id, nx[0].attributes);

  ASSERT_EQ(InitWith(logged_config_), CKR_OK);
  s = LoggedInRw();
  for (const std::string label : {"nx-key", "open-key", ""}) ExpectRefused(s, label);
  Finalize();
  ExpectLogged(nx[0].id);
}

}  // namespace
}  // namespace vaultp11::testing
