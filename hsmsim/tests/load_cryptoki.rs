//! The simulator loads through cryptoki and forwards faithfully: RSA and EC keys generated
//! through it sign, and the signatures verify (through it, and against the public key read back
//! through C_GetAttributeValue).

mod common;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType};

use common::*;

#[test]
fn rsa_and_ec_keys_generated_through_the_simulator_sign_and_verify() {
    let (_g, h) = lock();
    h.set_config(&config_with(""));
    let s = h.session();

    let ec = private_key(&s, EC_LABEL);
    let ec_pub = public_key(&s, EC_LABEL);
    let digest = [7u8; 32];
    let sig = s.sign(&Mechanism::Ecdsa, ec, &digest).expect("ECDSA sign");
    assert_eq!(sig.len(), 64, "P-256 raw r||s");
    s.verify(&Mechanism::Ecdsa, ec_pub, &digest, &sig)
        .expect("ECDSA verify");
    let mut bad = sig.clone();
    bad[10] ^= 1;
    assert!(s.verify(&Mechanism::Ecdsa, ec_pub, &digest, &bad).is_err());

    let rsa = private_key(&s, RSA_LABEL);
    let rsa_pub = public_key(&s, RSA_LABEL);
    let data = b"keycore through the simulator";
    let sig = s
        .sign(&Mechanism::Sha256RsaPkcs, rsa, data)
        .expect("RSA sign");
    assert_eq!(sig.len(), 256);
    s.verify(&Mechanism::Sha256RsaPkcs, rsa_pub, data, &sig)
        .expect("RSA verify");

    // Multi-part signing (C_SignUpdate / C_SignFinal) goes through too.
    s.sign_init(&Mechanism::Sha256RsaPkcs, rsa).unwrap();
    s.sign_update(&data[..10]).unwrap();
    s.sign_update(&data[10..]).unwrap();
    let multi = s.sign_final().unwrap();
    assert_eq!(multi, sig, "PKCS#1 v1.5 is deterministic");

    // Attributes read through the simulator are the real ones.
    let attrs = s
        .get_attributes(
            rsa_pub,
            &[AttributeType::ModulusBits, AttributeType::PublicExponent],
        )
        .unwrap();
    assert!(attrs
        .iter()
        .any(|a| matches!(a, Attribute::ModulusBits(b) if u64::from(*b) == 2048)));
    assert!(attrs
        .iter()
        .any(|a| matches!(a, Attribute::PublicExponent(e) if e == &vec![1, 0, 1])));
}

#[test]
fn rsa_encrypt_and_decrypt_go_through() {
    let (_g, h) = lock();
    h.set_config(&config_with(r#""rtt": {"fixed_us": 100}"#));
    let s = h.session();
    let private = private_key(&s, RSA_LABEL);
    let public = public_key(&s, RSA_LABEL);
    let secret = b"premaster secret, 48 bytes long, for a TLS test";
    let ciphertext = s
        .encrypt(&Mechanism::RsaPkcs, public, secret)
        .expect("C_Encrypt");
    assert_eq!(ciphertext.len(), 256);
    let plaintext = s
        .decrypt(&Mechanism::RsaPkcs, private, &ciphertext)
        .expect("C_Decrypt");
    assert_eq!(plaintext, secret);
}

#[test]
fn module_is_thread_safe_under_concurrent_signers() {
    let (_g, h) = lock();
    h.set_config(&config_with(""));
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let s = h.session();
                let key = private_key(&s, EC_LABEL);
                for _ in 0..50 {
                    ec_sign(&s, key).expect("sign");
                }
            });
        }
    });
}
