// The few PKCS#11 3.0 definitions the module needs that p11-kit 0.24's pkcs11.h lacks (spec
// 3.0 sections 5.2 and 5.4): CK_INTERFACE, CKF_INTERFACE_FORK_SAFE and CK_FUNCTION_LIST_3_0 with
// the 3.0 function pointer types. A header that defines them already is used as is.
#pragma once

#include <p11-kit/pkcs11.h>

#ifndef CKF_INTERFACE_FORK_SAFE

#define CKF_INTERFACE_FORK_SAFE 0x00000001UL

typedef struct CK_INTERFACE {
  CK_UTF8CHAR* pInterfaceName;
  CK_VOID_PTR pFunctionList;
  CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE* CK_INTERFACE_PTR;
typedef CK_INTERFACE_PTR* CK_INTERFACE_PTR_PTR;

typedef CK_RV (*CK_C_GetInterfaceList)(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
typedef CK_RV (*CK_C_GetInterface)(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                   CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);
typedef CK_RV (*CK_C_LoginUser)(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
                                CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen);
typedef CK_RV (*CK_C_SessionCancel)(CK_SESSION_HANDLE hSession, CK_FLAGS flags);
typedef CK_RV (*CK_C_MessageInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey);
typedef CK_RV (*CK_C_CipherMessage)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                    CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pIn,
                                    CK_ULONG ulInLen, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOutLen);
typedef CK_RV (*CK_C_CipherMessageBegin)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                         CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen);
typedef CK_RV (*CK_C_CipherMessageNext)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                        CK_BYTE_PTR pIn, CK_ULONG ulInLen, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOutLen,
                                        CK_FLAGS flags);
typedef CK_RV (*CK_C_MessageFinal)(CK_SESSION_HANDLE hSession);
typedef CK_RV (*CK_C_SignMessage)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                  CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                  CK_ULONG_PTR pulSignatureLen);
typedef CK_RV (*CK_C_MessageBegin)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen);
typedef CK_RV (*CK_C_VerifyMessage)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                    CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                    CK_ULONG ulSignatureLen);

// The 2.40 list (same members, same order) followed by the 3.0 functions.
typedef struct CK_FUNCTION_LIST_3_0 {
  CK_VERSION version;
#define VP11_FN(name, params, args) CK_C_##name C_##name;
#define VP11_NS(name, params) CK_C_##name C_##name;
#define VP11_GET_FUNCTION_LIST() CK_C_GetFunctionList C_GetFunctionList;
#include "abi/functions.inc"
#undef VP11_FN
#undef VP11_NS
#undef VP11_GET_FUNCTION_LIST
  CK_C_GetInterfaceList C_GetInterfaceList;
  CK_C_GetInterface C_GetInterface;
  CK_C_LoginUser C_LoginUser;
  CK_C_SessionCancel C_SessionCancel;
  CK_C_MessageInit C_MessageEncryptInit;
  CK_C_CipherMessage C_EncryptMessage;
  CK_C_CipherMessageBegin C_EncryptMessageBegin;
  CK_C_CipherMessageNext C_EncryptMessageNext;
  CK_C_MessageFinal C_MessageEncryptFinal;
  CK_C_MessageInit C_MessageDecryptInit;
  CK_C_CipherMessage C_DecryptMessage;
  CK_C_CipherMessageBegin C_DecryptMessageBegin;
  CK_C_CipherMessageNext C_DecryptMessageNext;
  CK_C_MessageFinal C_MessageDecryptFinal;
  CK_C_MessageInit C_MessageSignInit;
  CK_C_SignMessage C_SignMessage;
  CK_C_MessageBegin C_SignMessageBegin;
  CK_C_SignMessage C_SignMessageNext;
  CK_C_MessageFinal C_MessageSignFinal;
  CK_C_MessageInit C_MessageVerifyInit;
  CK_C_VerifyMessage C_VerifyMessage;
  CK_C_MessageBegin C_VerifyMessageBegin;
  CK_C_VerifyMessage C_VerifyMessageNext;
  CK_C_MessageFinal C_MessageVerifyFinal;
} CK_FUNCTION_LIST_3_0;

#endif  // CKF_INTERFACE_FORK_SAFE
