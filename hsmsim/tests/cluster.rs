//! Several simulated HSMs in one process (what keycore does with an HA group of partitions):
//! copies of the simulator library, each reading its own config through the `{module}`
//! placeholder and forwarding to its own copy of SoftHSM2, behave as independent devices over
//! the same (replicated) token.

mod common;

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use common::{module_path, rv_of, write_config, P256_OID, SO_PIN, TOKEN_LABEL, USER_PIN};

fn open(lib: &Path) -> (Pkcs11, cryptoki::slot::Slot) {
    let p = Pkcs11::new(lib).expect("load simulator copy");
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|t| t.label() == TOKEN_LABEL)
                .unwrap_or(false)
        })
        .expect("token by label");
    (p, slot)
}

#[test]
fn two_simulator_copies_in_one_process_are_independent_hsms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let softhsm_conf = keycore_testsupport::softhsm_conf(d);
    std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
    std::env::set_var("KEYCORE_HSMSIM_CONFIG", d.join("{module}.json"));
    keycore_testsupport::softhsm::Token::init_with_so_pin(
        &softhsm_conf,
        TOKEN_LABEL,
        SO_PIN,
        USER_PIN,
    );

    // Two HSMs: hsm-a.so and hsm-b.so, each with its own SoftHSM2 copy (one copy per device,
    // or the second C_Initialize would find the shared module already initialised).
    for name in ["a", "b"] {
        std::fs::copy(module_path(), d.join(format!("hsm-{name}.so"))).unwrap();
        std::fs::copy(
            keycore_hsmsim::DEFAULT_MODULE,
            d.join(format!("softhsm-{name}.so")),
        )
        .unwrap();
    }
    let module = |name: &str| d.join(format!("softhsm-{name}.so")).display().to_string();
    write_config(
        &d.join("hsm-a.json"),
        &format!(r#"{{"module": "{}"}}"#, module("a")),
    );
    write_config(
        &d.join("hsm-b.json"),
        &format!(
            r#"{{"module": "{}", "faults": [{{"kind": "error", "rv": "CKR_DEVICE_ERROR", "functions": ["C_Sign"]}}]}}"#,
            module("b")
        ),
    );

    // The key is made on HSM a before HSM b starts (as if replicated to it).
    let pin = AuthPin::new(USER_PIN.into());
    let (a, slot_a) = open(&d.join("hsm-a.so"));
    let sa = a.open_rw_session(slot_a).unwrap();
    sa.login(UserType::User, Some(&pin)).unwrap();
    let (_, key_a) = sa
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Label(b"shared".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Label(b"shared".to_vec()),
            ],
        )
        .unwrap();
    let (b, slot_b) = open(&d.join("hsm-b.so"));
    let sb = b.open_rw_session(slot_b).unwrap();
    sb.login(UserType::User, Some(&pin)).unwrap();
    let key_b = sb
        .find_objects(&[
            Attribute::Class(cryptoki::object::ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"shared".to_vec()),
        ])
        .unwrap()[0];

    // Same key on both; only HSM b has the fault.
    sa.sign(&Mechanism::Ecdsa, key_a, &[1; 32])
        .expect("HSM a signs");
    let e = sb.sign(&Mechanism::Ecdsa, key_b, &[1; 32]).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::DeviceError), "{e}");
    sa.sign(&Mechanism::Ecdsa, key_a, &[2; 32])
        .expect("HSM a unaffected by HSM b's fault");
}
