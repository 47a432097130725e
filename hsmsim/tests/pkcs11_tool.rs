//! The simulator works with OpenSC's pkcs11-tool (a C consumer we do not control): it lists the
//! token and signs with a key. Skipped, with a message, when pkcs11-tool is not installed.

mod common;

use std::process::Command;

use common::*;

const TOOL_LABEL: &str = "tool-key";

fn pkcs11_tool() -> Option<&'static str> {
    let found = Command::new("pkcs11-tool").arg("--help").output().is_ok();
    if !found {
        eprintln!("SKIPPED: pkcs11-tool not installed (apt-get install opensc)");
    }
    found.then_some("pkcs11-tool")
}

#[test]
fn pkcs11_tool_lists_slots_and_signs_through_the_simulator() {
    let Some(tool) = pkcs11_tool() else { return };
    let (_g, h) = lock();
    h.set_config(&config_with(r#""rtt": {"fixed_us": 200}"#));
    let module = module_path();

    // The child process loads the simulator itself; it inherits SOFTHSM2_CONF and
    // KEYCORE_HSMSIM_CONFIG from the harness.
    let out = Command::new(tool)
        .arg("--module")
        .arg(&module)
        .arg("-L")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pkcs11-tool -L: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(TOKEN_LABEL), "{stdout}");

    // Generate a key pair with the tool, through the simulator.
    let out = Command::new(tool)
        .arg("--module")
        .arg(&module)
        .args([
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            TOOL_LABEL,
            "--id",
            "42",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pkcs11-tool --keypairgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let input = h.dir.path().join("digest.bin");
    let output = h.dir.path().join("sig.bin");
    std::fs::write(&input, [0x42u8; 32]).unwrap();
    let out = Command::new(tool)
        .arg("--module")
        .arg(&module)
        .args([
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            USER_PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--id",
            "42",
        ])
        .arg("--input-file")
        .arg(&input)
        .arg("--output-file")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pkcs11-tool --sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig = std::fs::read(&output).unwrap();
    assert_eq!(sig.len(), 64, "raw P-256 signature");

    // And the signature verifies, checked in this process through cryptoki.
    let s = h.session();
    let public = public_key(&s, TOOL_LABEL);
    s.verify(
        &cryptoki::mechanism::Mechanism::Ecdsa,
        public,
        &[0x42u8; 32],
        &sig,
    )
    .expect("signature made by pkcs11-tool through the simulator verifies");
}
