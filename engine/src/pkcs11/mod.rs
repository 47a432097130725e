//! PKCS#11 backend. (Placeholder.)
