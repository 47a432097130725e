//! Vendor behaviour modes (`"behaviour"` in the config), observed through cryptoki the way
//! keycore's PKCS#11 backend sees a real CloudHSM, kmsp11, Luna or YubiHSM library.

mod common;

use cryptoki::error::RvError;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use common::*;

/// Luna's vendor constants, written out here as the test's independent statement of them.
const LUNA_CKK_EC_EDWARDS: u64 = 0x8000_0000 + 0x12;
const LUNA_CKM_EDDSA: u64 = 0x8000_0000 + 0xC03;
const ED_LABEL: &str = "ed-key";
/// DER printable string "edwards25519", as SoftHSM2 takes Ed25519 params.
const ED25519_PARAMS: &[u8] = &[
    0x13, 0x0c, b'e', b'd', b'w', b'a', b'r', b'd', b's', b'2', b'5', b'5', b'1', b'9',
];

/// A second EC key, so a wrong handle can sign with the wrong key of the right type.
const EC2_LABEL: &str = "ec-key-2";

/// Fault-free generic config first: handles found under one behaviour are not valid under
/// another (`session_handles` renumbers them).
fn start(h: &'static Harness) -> Session {
    h.set_config(&config_with(""));
    h.session()
}

fn behaviour(h: &Harness, json: &str) {
    h.set_config(&config_with(&format!(r#""behaviour": {json}"#)));
}

fn find(s: &Session, template: &[Attribute]) -> Vec<ObjectHandle> {
    s.find_objects(template).expect("C_FindObjects")
}

fn label_of(s: &Session, h: ObjectHandle) -> Result<String, RvError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::Label])
        .map_err(|e| rv_of(&e).unwrap())?;
    match attrs.first() {
        Some(Attribute::Label(l)) => Ok(String::from_utf8_lossy(l).into_owned()),
        other => panic!("no label: {other:?}"),
    }
}

fn bytes_attr(s: &Session, h: ObjectHandle, t: AttributeType) -> Result<Vec<u8>, RvError> {
    let attrs = s.get_attributes(h, &[t]).map_err(|e| rv_of(&e).unwrap())?;
    match attrs.into_iter().next() {
        Some(Attribute::EcPoint(v))
        | Some(Attribute::Id(v))
        | Some(Attribute::PublicKeyInfo(v))
        | Some(Attribute::Modulus(v)) => Ok(v),
        None => Err(RvError::AttributeTypeInvalid),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn cloudhsm_refuses_read_only_sessions_with_function_failed() {
    let (_g, h) = lock();
    behaviour(h, r#""cloudhsm-sdk5""#);
    let e = h.pkcs11.open_ro_session(h.slot).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::FunctionFailed), "{e}");
    let s = h.pkcs11.open_rw_session(h.slot).expect("read-write works");
    login(&s).unwrap();
    behaviour(h, r#""generic""#);
    h.pkcs11
        .open_ro_session(h.slot)
        .expect("SoftHSM-like behaviour allows read-only sessions");
}

#[test]
fn cloudhsm_handles_belong_to_the_session_that_found_them() {
    let (_g, h) = lock();
    let s = start(h);
    if find(&s, &[Attribute::Label(EC2_LABEL.into())]).is_empty() {
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Label(EC2_LABEL.into()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Label(EC2_LABEL.into()),
            ],
        )
        .expect("second EC key");
    }
    let (ec_pub, ec2_pub) = (public_key(&s, EC_LABEL), public_key(&s, EC2_LABEL));
    behaviour(h, r#""cloudhsm-sdk5""#);
    let a = h.session();
    let b = h.session();
    let ec_on_a = private_key(&a, EC_LABEL);
    assert_eq!(label_of(&a, ec_on_a).unwrap(), EC_LABEL);
    ec_sign(&a, ec_on_a).expect("a handle works on its own session");
    // b has learned no object yet: a's handle is unknown there.
    let e = ec_sign(&b, ec_on_a).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::KeyHandleInvalid), "{e}");
    assert_eq!(label_of(&b, ec_on_a), Err(RvError::ObjectHandleInvalid));
    // Worse: once b has learned another object under the same number, a's handle names it.
    let rsa_on_b = private_key(&b, RSA_LABEL);
    assert_eq!(rsa_on_b, ec_on_a, "each session numbers its objects from 1");
    assert_eq!(label_of(&b, ec_on_a).unwrap(), RSA_LABEL);
    ec_sign(&b, ec_on_a).expect_err("an ECDSA sign with an RSA key fails");
    // Found on b itself, the EC key has b's own handle and works.
    let ec_on_b = private_key(&b, EC_LABEL);
    assert_ne!(ec_on_b, ec_on_a);
    ec_sign(&b, ec_on_b).expect("b's own handle");
    // The worst case: a third session learned the other EC key first, so a's handle signs
    // there with the wrong key, and the signature verifies only against that key.
    let c = h.session();
    assert_eq!(private_key(&c, EC2_LABEL), ec_on_a);
    let sig = ec_sign(&c, ec_on_a).expect("a valid signature... from the wrong key");
    behaviour(h, r#""generic""#);
    let digest = [0x5a; 32];
    s.verify(&Mechanism::Ecdsa, ec2_pub, &digest, &sig)
        .expect("made by ec-key-2");
    s.verify(&Mechanism::Ecdsa, ec_pub, &digest, &sig)
        .expect_err("not by ec-key");
    behaviour(h, r#""cloudhsm-sdk5""#);
    // A closed session's handles die with it.
    drop(a);
    let d = h.session();
    assert_eq!(label_of(&d, ec_on_a), Err(RvError::ObjectHandleInvalid));
}

#[test]
fn cloudhsm_caps_sessions_per_application() {
    let (_g, h) = lock();
    behaviour(h, r#"{"preset": "cloudhsm-sdk5", "max_sessions": 4}"#);
    let mut open = Vec::new();
    let err = loop {
        match h.pkcs11.open_rw_session(h.slot) {
            Ok(s) => open.push(s),
            Err(e) => break e,
        }
        assert!(open.len() <= 4, "the cap did not hold");
    };
    assert_eq!(open.len(), 4);
    assert_eq!(rv_of(&err), Some(RvError::SessionCount), "{err}");
    open.pop();
    open.push(
        h.pkcs11
            .open_rw_session(h.slot)
            .expect("a closed session frees a place"),
    );
    // The preset's own cap is CloudHSM's 1,024.
    behaviour(h, r#""cloudhsm-sdk5""#);
    open.push(h.pkcs11.open_rw_session(h.slot).expect("under 1,024"));
}

#[test]
fn throttling_is_reported_with_each_vendors_code() {
    let (_g, h) = lock();
    let s = start(h);
    let key = private_key(&s, EC_LABEL);
    let throttle = |preset: &str| {
        h.set_config(&config_with(&format!(
            r#""behaviour": "{preset}", "faults": [{{"kind": "throttle", "functions": ["C_Sign", "C_GetAttributeValue"]}}]"#
        )));
    };
    throttle("cloudhsm-sdk5");
    let s = h.session(); // cloudhsm handles are per session: find on this one
    let key_c = private_key(&s, EC_LABEL);
    let e = ec_sign(&s, key_c).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::FunctionFailed), "{e}");
    // ki-pkcs11-15: a throttled attribute read is a device error.
    assert_eq!(label_of(&s, key_c), Err(RvError::DeviceError));
    throttle("kmsp11");
    let s = h.session();
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::DeviceError), "{e}");
    throttle("luna");
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(
        rv_of(&e),
        Some(RvError::VendorDefined(0x8000_0041)),
        "CKR_AGAIN: {e}"
    );
    throttle("generic");
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::FunctionFailed), "{e}");
    h.set_config(&config_with(""));
    ec_sign(&s, key).expect("throttling over");
}

#[test]
fn kmsp11_turns_every_injected_failure_into_device_error() {
    let (_g, h) = lock();
    let s = start(h);
    let key = private_key(&s, EC_LABEL);
    h.set_config(&config_with(
        r#""behaviour": "kmsp11", "faults": [{"kind": "error", "rv": "CKR_FUNCTION_FAILED", "max_fires": 1},
            {"kind": "hang", "duration_ms": 10, "then_rv": "CKR_USER_NOT_LOGGED_IN", "after_ops": 1, "max_fires": 1}]"#,
    ));
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(
        rv_of(&e),
        Some(RvError::DeviceError),
        "quota/permission: {e}"
    );
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::DeviceError), "{e}");
    ec_sign(&s, key).expect("both fired once");
}

#[test]
fn luna_connection_codes_are_usable_by_name_in_faults() {
    let (_g, h) = lock();
    let s = start(h);
    let key = private_key(&s, EC_LABEL);
    for (name, code) in [
        ("CKR_UNABLE_TO_CONNECT", 0x8000_001F),
        ("CKR_PARTITION_DISABLED", 0x8000_0020),
        ("CKR_TIMEOUT", 0x8000_0024),
        ("CKR_DEVICE_TIMEOUT", 0x8000_002B),
        ("CKR_AGAIN", 0x8000_0041),
    ] {
        h.set_config(&config_with(&format!(
            r#""behaviour": "luna", "faults": [{{"kind": "error", "rv": "{name}", "max_fires": 1}}]"#
        )));
        let e = ec_sign(&s, key).unwrap_err();
        assert_eq!(rv_of(&e), Some(RvError::VendorDefined(code)), "{name}: {e}");
    }
}

#[test]
fn yubihsm_has_no_raw_rsa() {
    let (_g, h) = lock();
    let raw = MechanismType::RSA_X_509;
    behaviour(h, r#""generic""#);
    let all = h.pkcs11.get_mechanism_list(h.slot).unwrap();
    assert!(all.contains(&raw), "the real module offers CKM_RSA_X_509");
    behaviour(h, r#""yubihsm""#);
    let list = h.pkcs11.get_mechanism_list(h.slot).unwrap();
    assert!(!list.contains(&raw));
    assert!(list.contains(&MechanismType::RSA_PKCS));
    assert_eq!(list.len(), all.len() - 1);
    let e = h.pkcs11.get_mechanism_info(h.slot, raw).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::MechanismInvalid), "{e}");
    let s = h.session();
    let key = private_key(&s, RSA_LABEL);
    let e = s
        .decrypt(&Mechanism::RsaX509, key, &[1u8; 256])
        .unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::MechanismInvalid), "{e}");
    let e = s.sign(&Mechanism::RsaX509, key, &[1u8; 256]).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::MechanismInvalid), "{e}");
    s.sign(&Mechanism::RsaPkcs, key, &[1u8; 32])
        .expect("CKM_RSA_PKCS works");
}

/// An Ed25519 key pair on the token (made once, through the simulator in generic mode).
fn ed25519_key(h: &'static Harness) {
    let s = start(h);
    if !find(&s, &[Attribute::Label(ED_LABEL.into())]).is_empty() {
        return;
    }
    s.generate_key_pair(
        &Mechanism::EccEdwardsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::EcParams(ED25519_PARAMS.to_vec()),
            Attribute::Label(ED_LABEL.into()),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(ED_LABEL.into()),
        ],
    )
    .expect("Ed25519 key pair");
}

#[test]
fn luna_reports_ed25519_with_vendor_constants_only() {
    let (_g, h) = lock();
    ed25519_key(h);
    behaviour(h, r#""luna""#);
    let s = h.session();
    let key = private_key(&s, ED_LABEL);
    let kt = s.get_attributes(key, &[AttributeType::KeyType]).unwrap();
    assert_eq!(
        kt,
        vec![Attribute::KeyType(
            KeyType::new_vendor_defined(LUNA_CKK_EC_EDWARDS).unwrap()
        )]
    );
    // Searching by Luna's key type finds it; by the standard one finds nothing.
    let vendor_kt = KeyType::new_vendor_defined(LUNA_CKK_EC_EDWARDS).unwrap();
    let by_vendor = find(
        &s,
        &[
            Attribute::KeyType(vendor_kt),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ],
    );
    assert_eq!(by_vendor, vec![key]);
    assert!(find(&s, &[Attribute::KeyType(KeyType::EC_EDWARDS)]).is_empty());
    // EdDSA only under Luna's vendor mechanism.
    // (cryptoki's get_mechanism_list drops vendor-defined types, so the list only shows the
    // standard one gone; C_GetMechanismInfo shows the vendor one is there.)
    let list = h.pkcs11.get_mechanism_list(h.slot).unwrap();
    let vendor_mech = MechanismType::new_vendor_defined(LUNA_CKM_EDDSA).unwrap();
    assert!(!list.contains(&MechanismType::EDDSA));
    h.pkcs11
        .get_mechanism_info(h.slot, vendor_mech)
        .expect("Luna's CKM_EDDSA is offered");
    let e = h
        .pkcs11
        .get_mechanism_info(h.slot, MechanismType::EDDSA)
        .unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::MechanismInvalid), "{e}");
    let e = s
        .sign(
            &Mechanism::Eddsa(cryptoki::mechanism::eddsa::EddsaParams::new(
                cryptoki::mechanism::eddsa::EddsaSignatureScheme::Pure,
            )),
            key,
            b"hello",
        )
        .unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::MechanismInvalid), "{e}");
    let luna_eddsa = Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(vendor_mech, None));
    let sig = s
        .sign(&luna_eddsa, key, b"hello")
        .expect("Luna's CKM_EDDSA signs");
    assert_eq!(sig.len(), 64);
    let public = find(
        &s,
        &[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(ED_LABEL.into()),
        ],
    )[0];
    s.verify(&luna_eddsa, public, b"hello", &sig)
        .expect("and the signature verifies");
    // Under the generic behaviour the same key is a standard Edwards key again.
    behaviour(h, r#""generic""#);
    let kt = s.get_attributes(key, &[AttributeType::KeyType]).unwrap();
    assert_eq!(kt, vec![Attribute::KeyType(KeyType::EC_EDWARDS)]);
}

#[test]
fn private_key_only_import_hides_public_objects_and_ids() {
    let (_g, h) = lock();
    let s = start(h);
    let ec_pub = public_key(&s, EC_LABEL);
    let ec_point = bytes_attr(&s, ec_pub, AttributeType::EcPoint).unwrap();
    let rsa_priv = private_key(&s, RSA_LABEL);
    let modulus = bytes_attr(&s, rsa_priv, AttributeType::Modulus).unwrap();
    let ec_priv = private_key(&s, EC_LABEL);
    assert_eq!(
        bytes_attr(&s, ec_priv, AttributeType::EcPoint),
        Err(RvError::AttributeTypeInvalid),
        "SoftHSM2 has no CKA_EC_POINT on private keys"
    );
    s.update_attributes(ec_priv, &[Attribute::Id(vec![0x42])])
        .unwrap();

    // A vendor with neither public objects nor IDs, and no public key on the private object.
    behaviour(h, r#"{"hide_public_keys": true, "hide_cka_id": true}"#);
    assert!(find(&s, &[Attribute::Class(ObjectClass::PUBLIC_KEY)]).is_empty());
    let all = find(&s, &[]);
    assert!(all.contains(&ec_priv) && !all.contains(&ec_pub));
    assert_eq!(label_of(&s, ec_pub), Err(RvError::ObjectHandleInvalid));
    assert_eq!(bytes_attr(&s, ec_priv, AttributeType::Id), Ok(vec![]));
    assert!(find(&s, &[Attribute::Id(vec![0x42])]).is_empty());
    assert_eq!(
        bytes_attr(&s, ec_priv, AttributeType::EcPoint),
        Err(RvError::AttributeTypeInvalid)
    );
    ec_sign(&s, ec_priv).expect("the private key still signs");

    // The same vendor offering the public key on the private object.
    behaviour(
        h,
        r#"{"hide_public_keys": true, "hide_cka_id": true, "ec_point_on_private": true, "public_key_info_on_private": true}"#,
    );
    assert_eq!(
        bytes_attr(&s, ec_priv, AttributeType::EcPoint),
        Ok(ec_point.clone())
    );
    let spki = bytes_attr(&s, ec_priv, AttributeType::PublicKeyInfo).unwrap();
    // 91 bytes: the DER SubjectPublicKeyInfo of a P-256 key, ending in the raw point.
    assert_eq!(spki.len(), 91);
    assert_eq!(&spki[..2], &[0x30, 0x59]);
    assert_eq!(&spki[26..], &ec_point[2..]);
    let rsa_spki = bytes_attr(&s, rsa_priv, AttributeType::PublicKeyInfo).unwrap();
    assert_eq!(rsa_spki.len(), 294, "RSA-2048 SubjectPublicKeyInfo");
    assert!(rsa_spki
        .windows(modulus.len())
        .any(|w| w == modulus.as_slice()));
    behaviour(h, r#""generic""#);
    s.update_attributes(ec_priv, &[Attribute::Id(vec![])])
        .unwrap();
}

#[test]
fn cloudhsm_sdk5_retries_throttled_calls_itself_and_sdk3_reports_busy_as_operation_active() {
    let (_g, h) = lock();
    let s = start(h);
    let key = private_key(&s, EC_LABEL);
    let throttled = |preset: &str, fires: u32| {
        h.set_config(&config_with(&format!(
            r#""behaviour": {preset}, "faults": [{{"kind": "throttle", "max_fires": {fires}, "functions": ["C_Sign"]}}]"#
        )));
    };
    // Three throttles are absorbed by the client's three retries (10 + 20 + 40 ms back-off).
    throttled(
        r#"{"preset": "cloudhsm-sdk5", "session_handles": false}"#,
        3,
    );
    let t = std::time::Instant::now();
    ec_sign(&s, key).expect("the SDK retried through three throttles");
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(70),
        "{:?}",
        t.elapsed()
    );
    // A fourth reaches the application.
    throttled(
        r#"{"preset": "cloudhsm-sdk5", "session_handles": false}"#,
        4,
    );
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::FunctionFailed), "{e}");
    // Retries switched off (configure-pkcs11 --default-retry-mode off).
    throttled(
        r#"{"preset": "cloudhsm-sdk5", "session_handles": false, "client_retries": 0}"#,
        1,
    );
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::FunctionFailed), "{e}");
    throttled(r#""cloudhsm-sdk3""#, 1);
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::OperationActive), "SDK 3 busy: {e}");
    ec_sign(&s, key).expect("fired once");
}

#[test]
fn fips_mode_refuses_pkcs1_v1_5_decryption_but_signs() {
    let (_g, h) = lock();
    let s = start(h);
    let key = private_key(&s, RSA_LABEL);
    let public = public_key(&s, RSA_LABEL);
    let ciphertext = s
        .encrypt(&Mechanism::RsaPkcs, public, b"premaster")
        .expect("encrypt under the generic behaviour");
    behaviour(h, r#"{"fips_no_pkcs1_decrypt": true}"#);
    let e = s
        .decrypt(&Mechanism::RsaPkcs, key, &ciphertext)
        .unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::MechanismInvalid), "{e}");
    s.sign(&Mechanism::RsaPkcs, key, &[1u8; 32])
        .expect("PKCS#1 v1.5 signing stays allowed");
    let info = h
        .pkcs11
        .get_mechanism_info(h.slot, MechanismType::RSA_PKCS)
        .unwrap();
    assert!(
        info.sign() && !info.decrypt() && !info.encrypt(),
        "{info:?}"
    );
    behaviour(h, r#""generic""#);
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcs, key, &ciphertext).unwrap(),
        b"premaster"
    );
}

#[test]
fn yubihsm_sessions_expire_when_idle() {
    let (_g, h) = lock();
    let s = start(h);
    let key = private_key(&s, EC_LABEL);
    // The preset's timeout is YubiHSM's 30 s; shortened here so the test stays short.
    behaviour(h, r#"{"preset": "yubihsm", "idle_timeout_ms": 300}"#);
    ec_sign(&s, key).expect("active");
    std::thread::sleep(std::time::Duration::from_millis(150));
    ec_sign(&s, key).expect("150 ms is not idle");
    std::thread::sleep(std::time::Duration::from_millis(450));
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::SessionHandleInvalid), "{e}");
    let fresh = h.pkcs11.open_rw_session(h.slot).unwrap();
    login(&fresh).expect("log in again on a new session");
    ec_sign(&fresh, private_key(&fresh, EC_LABEL)).expect("recovered");
}
