//! The catalogue of PKCS#11 v2.40 functions the simulator wraps: each function's config name
//! and the facts the shaper needs about it (does it run on a crypto core, does it need a logged-in
//! user, does it end an operation). Pure data: no FFI, no state.

/// One PKCS#11 v2.40 function (the 68 entries of `CK_FUNCTION_LIST`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the variant names are the PKCS#11 names without the `C_` prefix
pub enum Func {
    Initialize,
    Finalize,
    GetInfo,
    GetFunctionList,
    GetSlotList,
    GetSlotInfo,
    GetTokenInfo,
    GetMechanismList,
    GetMechanismInfo,
    InitToken,
    InitPIN,
    SetPIN,
    OpenSession,
    CloseSession,
    CloseAllSessions,
    GetSessionInfo,
    GetOperationState,
    SetOperationState,
    Login,
    Logout,
    CreateObject,
    CopyObject,
    DestroyObject,
    GetObjectSize,
    GetAttributeValue,
    SetAttributeValue,
    FindObjectsInit,
    FindObjects,
    FindObjectsFinal,
    EncryptInit,
    Encrypt,
    EncryptUpdate,
    EncryptFinal,
    DecryptInit,
    Decrypt,
    DecryptUpdate,
    DecryptFinal,
    DigestInit,
    Digest,
    DigestUpdate,
    DigestKey,
    DigestFinal,
    SignInit,
    Sign,
    SignUpdate,
    SignFinal,
    SignRecoverInit,
    SignRecover,
    VerifyInit,
    Verify,
    VerifyUpdate,
    VerifyFinal,
    VerifyRecoverInit,
    VerifyRecover,
    DigestEncryptUpdate,
    DecryptDigestUpdate,
    SignEncryptUpdate,
    DecryptVerifyUpdate,
    GenerateKey,
    GenerateKeyPair,
    WrapKey,
    UnwrapKey,
    DeriveKey,
    SeedRandom,
    GenerateRandom,
    GetFunctionStatus,
    CancelFunction,
    WaitForSlotEvent,
}

/// Every function, in `CK_FUNCTION_LIST` order.
pub const ALL: [Func; 68] = {
    use Func::*;
    [
        Initialize,
        Finalize,
        GetInfo,
        GetFunctionList,
        GetSlotList,
        GetSlotInfo,
        GetTokenInfo,
        GetMechanismList,
        GetMechanismInfo,
        InitToken,
        InitPIN,
        SetPIN,
        OpenSession,
        CloseSession,
        CloseAllSessions,
        GetSessionInfo,
        GetOperationState,
        SetOperationState,
        Login,
        Logout,
        CreateObject,
        CopyObject,
        DestroyObject,
        GetObjectSize,
        GetAttributeValue,
        SetAttributeValue,
        FindObjectsInit,
        FindObjects,
        FindObjectsFinal,
        EncryptInit,
        Encrypt,
        EncryptUpdate,
        EncryptFinal,
        DecryptInit,
        Decrypt,
        DecryptUpdate,
        DecryptFinal,
        DigestInit,
        Digest,
        DigestUpdate,
        DigestKey,
        DigestFinal,
        SignInit,
        Sign,
        SignUpdate,
        SignFinal,
        SignRecoverInit,
        SignRecover,
        VerifyInit,
        Verify,
        VerifyUpdate,
        VerifyFinal,
        VerifyRecoverInit,
        VerifyRecover,
        DigestEncryptUpdate,
        DecryptDigestUpdate,
        SignEncryptUpdate,
        DecryptVerifyUpdate,
        GenerateKey,
        GenerateKeyPair,
        WrapKey,
        UnwrapKey,
        DeriveKey,
        SeedRandom,
        GenerateRandom,
        GetFunctionStatus,
        CancelFunction,
        WaitForSlotEvent,
    ]
};

impl Func {
    /// The PKCS#11 name (`"C_Sign"`), as used in config files.
    pub fn name(self) -> &'static str {
        use Func::*;
        match self {
            Initialize => "C_Initialize",
            Finalize => "C_Finalize",
            GetInfo => "C_GetInfo",
            GetFunctionList => "C_GetFunctionList",
            GetSlotList => "C_GetSlotList",
            GetSlotInfo => "C_GetSlotInfo",
            GetTokenInfo => "C_GetTokenInfo",
            GetMechanismList => "C_GetMechanismList",
            GetMechanismInfo => "C_GetMechanismInfo",
            InitToken => "C_InitToken",
            InitPIN => "C_InitPIN",
            SetPIN => "C_SetPIN",
            OpenSession => "C_OpenSession",
            CloseSession => "C_CloseSession",
            CloseAllSessions => "C_CloseAllSessions",
            GetSessionInfo => "C_GetSessionInfo",
            GetOperationState => "C_GetOperationState",
            SetOperationState => "C_SetOperationState",
            Login => "C_Login",
            Logout => "C_Logout",
            CreateObject => "C_CreateObject",
            CopyObject => "C_CopyObject",
            DestroyObject => "C_DestroyObject",
            GetObjectSize => "C_GetObjectSize",
            GetAttributeValue => "C_GetAttributeValue",
            SetAttributeValue => "C_SetAttributeValue",
            FindObjectsInit => "C_FindObjectsInit",
            FindObjects => "C_FindObjects",
            FindObjectsFinal => "C_FindObjectsFinal",
            EncryptInit => "C_EncryptInit",
            Encrypt => "C_Encrypt",
            EncryptUpdate => "C_EncryptUpdate",
            EncryptFinal => "C_EncryptFinal",
            DecryptInit => "C_DecryptInit",
            Decrypt => "C_Decrypt",
            DecryptUpdate => "C_DecryptUpdate",
            DecryptFinal => "C_DecryptFinal",
            DigestInit => "C_DigestInit",
            Digest => "C_Digest",
            DigestUpdate => "C_DigestUpdate",
            DigestKey => "C_DigestKey",
            DigestFinal => "C_DigestFinal",
            SignInit => "C_SignInit",
            Sign => "C_Sign",
            SignUpdate => "C_SignUpdate",
            SignFinal => "C_SignFinal",
            SignRecoverInit => "C_SignRecoverInit",
            SignRecover => "C_SignRecover",
            VerifyInit => "C_VerifyInit",
            Verify => "C_Verify",
            VerifyUpdate => "C_VerifyUpdate",
            VerifyFinal => "C_VerifyFinal",
            VerifyRecoverInit => "C_VerifyRecoverInit",
            VerifyRecover => "C_VerifyRecover",
            DigestEncryptUpdate => "C_DigestEncryptUpdate",
            DecryptDigestUpdate => "C_DecryptDigestUpdate",
            SignEncryptUpdate => "C_SignEncryptUpdate",
            DecryptVerifyUpdate => "C_DecryptVerifyUpdate",
            GenerateKey => "C_GenerateKey",
            GenerateKeyPair => "C_GenerateKeyPair",
            WrapKey => "C_WrapKey",
            UnwrapKey => "C_UnwrapKey",
            DeriveKey => "C_DeriveKey",
            SeedRandom => "C_SeedRandom",
            GenerateRandom => "C_GenerateRandom",
            GetFunctionStatus => "C_GetFunctionStatus",
            CancelFunction => "C_CancelFunction",
            WaitForSlotEvent => "C_WaitForSlotEvent",
        }
    }

    /// Looks a function up by its PKCS#11 name.
    pub fn from_name(name: &str) -> Option<Func> {
        ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Index into per-function tables (position in `CK_FUNCTION_LIST`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Answered by the client library without talking to the device: never shaped (no
    /// round trip, no faults), as real network-HSM clients do.
    pub fn is_local(self) -> bool {
        use Func::*;
        matches!(
            self,
            Initialize | Finalize | GetInfo | GetFunctionList | GetFunctionStatus | CancelFunction
        )
    }

    /// Does the real work of a cryptographic operation, so it occupies one of the partition's
    /// crypto cores and counts against its ops/s budget. Set-up calls (`*Init`, find, attribute
    /// reads) only pay the network round trip plus their own configured latency.
    pub fn is_crypto(self) -> bool {
        use Func::*;
        matches!(
            self,
            Encrypt
                | EncryptUpdate
                | EncryptFinal
                | Decrypt
                | DecryptUpdate
                | DecryptFinal
                | Digest
                | DigestUpdate
                | DigestKey
                | DigestFinal
                | Sign
                | SignUpdate
                | SignFinal
                | SignRecover
                | Verify
                | VerifyUpdate
                | VerifyFinal
                | VerifyRecover
                | DigestEncryptUpdate
                | DecryptDigestUpdate
                | SignEncryptUpdate
                | DecryptVerifyUpdate
                | GenerateKey
                | GenerateKeyPair
                | WrapKey
                | UnwrapKey
                | DeriveKey
                | GenerateRandom
        )
    }

    /// Uses a private key, so a logged-out session gets `CKR_USER_NOT_LOGGED_IN`.
    pub fn needs_login(self) -> bool {
        use Func::*;
        matches!(
            self,
            SignInit
                | Sign
                | SignUpdate
                | SignFinal
                | SignRecoverInit
                | SignRecover
                | DecryptInit
                | Decrypt
                | DecryptUpdate
                | DecryptFinal
                | DecryptDigestUpdate
                | SignEncryptUpdate
                | DecryptVerifyUpdate
                | UnwrapKey
                | DeriveKey
        )
    }

    /// Starts an operation whose mechanism later calls on the session are timed by.
    pub fn is_op_init(self) -> bool {
        use Func::*;
        matches!(
            self,
            EncryptInit
                | DecryptInit
                | DigestInit
                | SignInit
                | SignRecoverInit
                | VerifyInit
                | VerifyRecoverInit
        )
    }

    /// Continues or finishes an active operation. When the simulator fails one of these, it
    /// still lets the real module end the operation (see `sim`), because PKCS#11 says a failed
    /// call ends the operation and the caller will start a new one.
    pub fn is_op_step(self) -> bool {
        use Func::*;
        matches!(
            self,
            Encrypt
                | EncryptUpdate
                | EncryptFinal
                | Decrypt
                | DecryptUpdate
                | DecryptFinal
                | Digest
                | DigestUpdate
                | DigestKey
                | DigestFinal
                | Sign
                | SignUpdate
                | SignFinal
                | SignRecover
                | Verify
                | VerifyUpdate
                | VerifyFinal
                | VerifyRecover
        )
    }

    /// An update step that leaves the operation open: after failing one, the simulator calls
    /// this `*Final` on the real module to close it.
    pub fn final_for_update(self) -> Option<Func> {
        use Func::*;
        match self {
            EncryptUpdate => Some(EncryptFinal),
            DecryptUpdate => Some(DecryptFinal),
            DigestUpdate | DigestKey => Some(DigestFinal),
            SignUpdate => Some(SignFinal),
            VerifyUpdate => Some(VerifyFinal),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_indices_follow_list_order() {
        for (i, f) in ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert_eq!(Func::from_name(f.name()), Some(*f));
            assert!(f.name().starts_with("C_"));
        }
        assert_eq!(Func::from_name("C_Nope"), None);
    }

    #[test]
    fn crypto_ops_that_need_login_are_sign_and_decrypt_families() {
        assert!(Func::Sign.is_crypto() && Func::Sign.needs_login());
        assert!(Func::Verify.is_crypto() && !Func::Verify.needs_login());
        assert!(!Func::SignInit.is_crypto() && Func::SignInit.needs_login());
        assert!(!Func::OpenSession.is_crypto());
        assert_eq!(Func::SignUpdate.final_for_update(), Some(Func::SignFinal));
    }
}
