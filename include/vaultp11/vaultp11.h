/* vaultp11: the module's only public header. Vendor-defined PKCS#11 constants and the names
 * of the environment variables the module reads. C and C++. */
#ifndef VAULTP11_VAULTP11_H_
#define VAULTP11_VAULTP11_H_

/* Environment: the config file used when C_Initialize's pReserved names none. */
#define VAULTP11_ENV_CONFIG "VAULTP11_CONF"
/* Environment: any value other than "" or "0" logs at debug level. */
#define VAULTP11_ENV_DEBUG "VAULTP11_DEBUG"

/* Base of vaultp11's vendor-defined numbers ("VP"), added to CKA_VENDOR_DEFINED. */
#define VAULTP11_VENDOR_BASE 0x56500000UL

/* CKA_VAULTP11_PROTECTION (CK_ULONG) on keys: where the key material lives. In a key
 * generation template (either half of a pair) it chooses the protection; without it the
 * vault's default_protection applies. A standard vault, or a premium vault without an HSM,
 * refuses VAULTP11_PROTECTION_HSM with CKR_ATTRIBUTE_VALUE_INVALID. Readable on every key. */
#define CKA_VAULTP11_PROTECTION (0x80000000UL | VAULTP11_VENDOR_BASE | 0x01UL)
#define VAULTP11_PROTECTION_SOFTWARE 1UL /* in-process OpenSSL, encrypted at rest */
#define VAULTP11_PROTECTION_HSM 2UL      /* generated and used inside the vault's HSM */

/* CKA_VAULTP11_HSM_KEY_ID (byte array, read-only) on HSM-protected keys: the CKA_ID of the
 * key's objects inside the HSM token (16 random bytes), to find them with the HSM's tools. */
#define CKA_VAULTP11_HSM_KEY_ID (0x80000000UL | VAULTP11_VENDOR_BASE | 0x02UL)

/* ---- Life cycle of keys and secrets -------------------------------------------------------
 * The four attributes below live on every key object (CKO_PRIVATE_KEY, CKO_PUBLIC_KEY,
 * CKO_SECRET_KEY) and every secret (CKO_DATA). They may be given in the templates of
 * C_GenerateKeyPair, C_GenerateKey, C_CreateObject and C_UnwrapKey and changed with
 * C_SetAttributeValue (which needs the update permission, set on secrets, like every change:
 * else CKR_ACTION_PROHIBITED). Each object of a key pair carries its own values: a template
 * for one half applies to that half only, and an operation checks the object it uses (set
 * them on both halves to treat the pair as one).
 * On secrets they are informational: stored and returned, never enforced. */

/* CKA_VAULTP11_ENABLED (CK_BBOOL, default CK_TRUE): a disabled key refuses every operation
 * (sign, verify, encrypt, decrypt, wrap, unwrap) with CKR_KEY_FUNCTION_NOT_PERMITTED. */
#define CKA_VAULTP11_ENABLED (0x80000000UL | VAULTP11_VENDOR_BASE | 0x03UL)

/* CKA_VAULTP11_NOT_BEFORE and CKA_VAULTP11_EXPIRES (CK_ULONG, default 0): the key's validity
 * window to the second, as Unix time (seconds since 1970-01-01T00:00:00Z, UTC, no leap
 * seconds); 0 means not set. The value is the platform's CK_ULONG (64 bits on the LP64
 * platforms vaultp11 supports); the largest value accepted is 253402300799
 * (9999-12-31T23:59:59Z), a larger one is CKR_ATTRIBUTE_VALUE_INVALID. Outside the window
 * (now < NOT_BEFORE, or now > EXPIRES: both ends are inside; checked when an operation starts,
 * C_SignInit, C_EncryptInit, C_WrapKey) a key refuses sign, encrypt and wrap with
 * CKR_KEY_FUNCTION_NOT_PERMITTED but still verifies, decrypts and unwraps (old data stays
 * readable). NOT_BEFORE > EXPIRES (both set) is CKR_TEMPLATE_INCONSISTENT.
 *
 * On keys they stay consistent with the standard CKA_START_DATE / CKA_END_DATE (CK_DATE, day
 * precision, UTC):
 *   CKA_START_DATE = the UTC day of NOT_BEFORE;  a start date alone sets NOT_BEFORE to that
 *                    day's 00:00:00Z;
 *   CKA_END_DATE   = the UTC day of EXPIRES;     an end date alone sets EXPIRES to that day's
 *                    23:59:59Z (the key is usable through its whole end day).
 * Setting one form sets the other; an empty CK_DATE (length 0, or "00000000") and 0 clear
 * both (a start date of 19700101 constrains nothing and reads back empty). A date written
 * with C_SetAttributeValue that equals the day already stored keeps the exact second. Giving
 * both forms in one template, they must agree (the date is the UTC day of the seconds, or
 * both are cleared), else CKR_TEMPLATE_INCONSISTENT. Dates must be real calendar days from
 * 1970 to 9999, else CKR_ATTRIBUTE_VALUE_INVALID. Secrets (CKO_DATA) have no CK_DATE
 * attributes, only these two. */
#define CKA_VAULTP11_NOT_BEFORE (0x80000000UL | VAULTP11_VENDOR_BASE | 0x04UL)
#define CKA_VAULTP11_EXPIRES (0x80000000UL | VAULTP11_VENDOR_BASE | 0x05UL)

/* CKA_VAULTP11_TAGS (byte array, default "{}") on keys and secrets: the object's tags, as a
 * UTF-8 JSON object whose members are all strings: {"env":"prod","owner":"payments"}. At most
 * 15 tags; a name has 1 to 256 characters, a value 0 to 256 (Unicode code points); names are
 * unique. Anything else (not JSON, not an object, a non-string value, duplicate names, invalid
 * UTF-8, too many or too long) is CKR_ATTRIBUTE_VALUE_INVALID. An empty value clears the tags.
 * The tags are stored and returned in compact form with the names sorted (so a template for
 * C_FindObjectsInit matches whatever spacing and order it uses). */
#define CKA_VAULTP11_TAGS (0x80000000UL | VAULTP11_VENDOR_BASE | 0x06UL)
#define VAULTP11_MAX_TAGS 15
#define VAULTP11_MAX_TAG_CHARS 256

/* ---- Names and versions --------------------------------------------------------------------
 * A token object's CKA_LABEL is the name of an item of the vault (a key, a secret, a
 * certificate); every item has versions. The objects of one version share the label, the
 * version id and, on keys and certificates, the CKA_ID; a version holds at most one object of
 * each class (a private key, its public key, its certificate). Objects with an empty label are
 * not items (no version) and session objects are never versioned.
 *
 * C_FindObjectsInit: a template with CKA_LABEL (or none) finds only the current version of
 * each item, so pkcs11:object=NAME gives one object per class. A template with CKA_ID or
 * CKA_VAULTP11_VERSION finds older versions too. Handles of older versions stay valid, and
 * older versions stay usable (verify, decrypt, unwrap; and sign, unless disabled or expired).
 *
 * Creating a token object (C_CreateObject, C_GenerateKey, C_GenerateKeyPair, C_UnwrapKey,
 * C_CopyObject) with a label in use:
 *   - with CKA_VAULTP11_NEW_VERSION = CK_TRUE in the template (either template of a pair), the
 *     objects become the item's new current version;
 *   - without it, they join the current version when it has their CKA_ID and none of their
 *     classes (a certificate or a public key put beside its private key); otherwise
 *     CKR_ATTRIBUTE_VALUE_INVALID, nothing created.
 * The same rule holds across processes sharing the store. Relabelling with
 * C_SetAttributeValue follows it too (without the new-version choice).
 *
 * CKA_ID scheme: a key or certificate created without CKA_ID (or with an empty one) gets the
 * 16 bytes of its version id, so every version has its own short, stable id
 * (pkcs11:id=%..., 16 bytes). A CKA_ID given in the template is kept; it must not be the
 * CKA_ID of another version of the same item (CKR_ATTRIBUTE_VALUE_INVALID). */

/* CKA_VAULTP11_VERSION (UTF-8 string, read-only) on every token object with a label: the
 * version id, 32 lowercase hex digits; empty on other objects. */
#define CKA_VAULTP11_VERSION (0x80000000UL | VAULTP11_VENDOR_BASE | 0x07UL)

/* CKA_VAULTP11_NEW_VERSION (CK_BBOOL, creation templates only, never stored): CK_TRUE makes
 * the new object(s) a new version of the item named by CKA_LABEL (or the first one). */
#define CKA_VAULTP11_NEW_VERSION (0x80000000UL | VAULTP11_VENDOR_BASE | 0x08UL)

/* ---- Secrets -------------------------------------------------------------------------------
 * A secret is a CKO_DATA token object: CKA_LABEL its name, CKA_VALUE its value (at most
 * VAULTP11_MAX_SECRET_BYTES bytes, else CKR_ATTRIBUTE_VALUE_INVALID), and its content type. */
#define VAULTP11_MAX_SECRET_BYTES 25000

/* CKA_VAULTP11_CONTENT_TYPE (UTF-8 string, default empty) on CKO_DATA: the secret's content
 * type (e.g. "text/plain", "application/x-pem-file"), at most 255 characters of printable
 * ASCII, else CKR_ATTRIBUTE_VALUE_INVALID. */
#define CKA_VAULTP11_CONTENT_TYPE (0x80000000UL | VAULTP11_VENDOR_BASE | 0x09UL)
#define VAULTP11_MAX_CONTENT_TYPE_CHARS 255

#endif /* VAULTP11_VAULTP11_H_ */
