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

#endif /* VAULTP11_VAULTP11_H_ */
