/* vaultp11: the module's only public header. Vendor-defined PKCS#11 constants and the names
 * of the environment variables the module reads. C and C++. */
#ifndef VAULTP11_VAULTP11_H_
#define VAULTP11_VAULTP11_H_

/* Environment: the config file used when C_Initialize's pReserved names none. */
#define VAULTP11_ENV_CONFIG "VAULTP11_CONF"
/* Environment: any value other than "" or "0" logs at debug level. */
#define VAULTP11_ENV_DEBUG "VAULTP11_DEBUG"

/* Base of vaultp11's vendor-defined attribute, mechanism and return-value numbers
 * (CKA_VENDOR_DEFINED | 0x56500000, "VP"). None is defined yet in this release. */
#define VAULTP11_VENDOR_BASE 0x56500000UL

#endif /* VAULTP11_VAULTP11_H_ */
