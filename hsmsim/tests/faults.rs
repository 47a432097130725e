//! Every fault kind, injected through the config file and observed through cryptoki the way
//! keycore's recovery code will see it; including switching faults on and off while running.

mod common;

use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::session::{Session, SessionState};

use common::*;

/// Finds the EC key and signs once on `s`; the PKCS#11 error of whichever call failed
/// (`CKR_KEY_HANDLE_INVALID` standing for "no such key visible").
fn sign_rv(s: &Session) -> Result<(), RvError> {
    use cryptoki::object::{Attribute, ObjectClass};
    let rv = |e: cryptoki::error::Error| rv_of(&e).expect("a PKCS#11 error");
    let keys = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(EC_LABEL.into()),
        ])
        .map_err(rv)?;
    let key = *keys.first().ok_or(RvError::KeyHandleInvalid)?;
    ec_sign(s, key).map(|_| ()).map_err(rv)
}

/// A fresh, logged-in session and its EC key, under a fault-free config.
fn clean_start(h: &Harness) -> (Session, cryptoki::object::ObjectHandle) {
    h.set_config(&config_with(""));
    let s = h.session();
    let key = private_key(&s, EC_LABEL);
    ec_sign(&s, key).expect("fault-free sign");
    (s, key)
}

#[test]
fn error_after_n_ops_then_switched_off_through_the_file() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    h.set_config(&config_with(
        r#""faults": [{"kind": "error", "rv": "CKR_DEVICE_ERROR", "after_ops": 3, "functions": ["C_Sign"]}]"#,
    ));
    for i in 0..3 {
        ec_sign(&s, key).unwrap_or_else(|e| panic!("op {i} before the threshold: {e}"));
    }
    for _ in 0..2 {
        let e = ec_sign(&s, key).unwrap_err();
        assert_eq!(rv_of(&e), Some(RvError::DeviceError), "{e}");
    }
    h.set_config(&config_with(""));
    // The failed C_Sign ended the real operation too, so a new C_SignInit works.
    ec_sign(&s, key).expect("fault switched off");
}

#[test]
fn error_at_a_rate_fails_that_share_of_calls() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    h.set_config(&config_with(
        r#""seed": 3, "faults": [{"kind": "error", "rv": "CKR_FUNCTION_FAILED", "rate": 0.3}]"#,
    ));
    let n = 400;
    let mut failed = 0;
    for _ in 0..n {
        match ec_sign(&s, key) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(rv_of(&e), Some(RvError::FunctionFailed), "{e}");
                failed += 1;
            }
        }
    }
    let share = failed as f64 / n as f64;
    eprintln!("error rate: configured 0.30, observed {share:.3}");
    assert!((0.22..=0.38).contains(&share), "observed {share}");
}

#[test]
fn hang_stalls_the_call_then_proceeds_or_fails() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    h.set_config(&config_with(
        r#""faults": [{"kind": "hang", "duration_ms": 300, "max_fires": 1, "functions": ["C_Sign"]}]"#,
    ));
    let t = Instant::now();
    ec_sign(&s, key).expect("a hang without then_rv proceeds");
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    ec_sign(&s, key).expect("fired once only");
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );

    h.set_config(&config_with(
        r#""faults": [{"kind": "hang", "duration_ms": 200, "then_rv": "CKR_DEVICE_ERROR", "max_fires": 1}]"#,
    ));
    let t = Instant::now();
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::DeviceError), "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
    ec_sign(&s, key).expect("after the hang");
}

#[test]
fn invalidated_sessions_answer_session_handle_invalid_and_lose_the_login() {
    let (_g, h) = lock();
    let (a, _) = clean_start(h);
    let b = h.session();
    h.set_config(&config_with(
        r#""faults": [{"kind": "invalidate_sessions", "max_fires": 1}]"#,
    ));
    assert_eq!(sign_rv(&a), Err(RvError::SessionHandleInvalid));
    // Every session died, not just the one whose call triggered it; every call on them fails.
    assert_eq!(sign_rv(&b), Err(RvError::SessionHandleInvalid));
    let e = a.get_session_info().unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::SessionHandleInvalid));
    // With all sessions gone the login is gone: a new session must log in again.
    let c = h.pkcs11.open_rw_session(h.slot).unwrap();
    let visible = c
        .find_objects(&[])
        .expect("public objects are still visible");
    assert!(!visible.is_empty());
    assert_eq!(
        sign_rv(&c),
        Err(RvError::KeyHandleInvalid),
        "private key hidden until login"
    );
    assert_eq!(
        c.get_session_info().unwrap().session_state(),
        SessionState::RwPublic
    );
    login(&c).unwrap();
    sign_rv(&c).expect("recovered");
    drop((a, b));
}

#[test]
fn invalidating_one_session_leaves_the_others_and_the_login() {
    let (_g, h) = lock();
    let (a, _) = clean_start(h);
    let b = h.session();
    h.set_config(&config_with(
        r#""faults": [{"kind": "invalidate_sessions", "scope": "session", "max_fires": 1}]"#,
    ));
    assert_eq!(sign_rv(&a), Err(RvError::SessionHandleInvalid));
    sign_rv(&b).expect("the other session lives, still logged in");
    assert_eq!(sign_rv(&a), Err(RvError::SessionHandleInvalid));
}

#[test]
fn logout_fault_answers_user_not_logged_in_until_login() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    h.set_config(&config_with(
        r#""faults": [{"kind": "logout", "max_fires": 1}]"#,
    ));
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::UserNotLoggedIn), "{e}");
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(
        rv_of(&e),
        Some(RvError::UserNotLoggedIn),
        "stays logged out: {e}"
    );
    assert_eq!(
        s.get_session_info().unwrap().session_state(),
        SessionState::RwPublic
    );
    // The application's recovery: log in again on the same session.
    s.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::new(USER_PIN.into())),
    )
    .expect("C_Login after a lost login succeeds (not CKR_USER_ALREADY_LOGGED_IN)");
    assert_eq!(
        s.get_session_info().unwrap().session_state(),
        SessionState::RwUser
    );
    ec_sign(&s, key).expect("signs again");
}

#[test]
fn token_removed_for_a_while_then_back_with_fresh_sessions() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    h.set_config(&config_with(
        r#""faults": [{"kind": "token_removed", "duration_ms": 400, "max_fires": 1}]"#,
    ));
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::DeviceRemoved), "{e}");
    assert_eq!(sign_rv(&s), Err(RvError::DeviceRemoved));
    let e = h.pkcs11.get_token_info(h.slot).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::TokenNotPresent), "{e}");
    assert!(!h.pkcs11.get_slot_info(h.slot).unwrap().token_present());
    let e = h.pkcs11.open_rw_session(h.slot).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::TokenNotPresent), "{e}");

    std::thread::sleep(Duration::from_millis(450));
    assert!(h.pkcs11.get_slot_info(h.slot).unwrap().token_present());
    // Back, but the old session died with the removal.
    assert_eq!(sign_rv(&s), Err(RvError::SessionHandleInvalid));
    let fresh = h.session();
    sign_rv(&fresh).expect("signs on a new session");
}

#[test]
fn token_removed_until_the_fault_is_taken_out_of_the_file() {
    let (_g, h) = lock();
    let (s, _) = clean_start(h);
    h.set_config(&config_with(
        r#""faults": [{"kind": "token_removed", "rv": "CKR_TOKEN_NOT_PRESENT", "max_fires": 1}]"#,
    ));
    assert_eq!(sign_rv(&s), Err(RvError::TokenNotPresent));
    std::thread::sleep(Duration::from_millis(200));
    let e = h.pkcs11.open_rw_session(h.slot).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::TokenNotPresent), "still out: {e}");
    h.set_config(&config_with(""));
    let fresh = h.session();
    sign_rv(&fresh).expect("token back once the file no longer removes it");
}

#[test]
fn idle_drop_kills_sessions_and_login_after_quiet_period() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    h.set_config(&config_with(
        r#""faults": [{"kind": "idle_drop", "idle_ms": 300}]"#,
    ));
    ec_sign(&s, key).expect("active");
    std::thread::sleep(Duration::from_millis(150));
    ec_sign(&s, key).expect("150 ms is not idle");
    std::thread::sleep(Duration::from_millis(450));
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::SessionHandleInvalid), "{e}");
    let fresh = h.pkcs11.open_rw_session(h.slot).unwrap();
    // Logged out: the private key is invisible to a search, and a handle from before the drop
    // is refused.
    assert_eq!(
        sign_rv(&fresh),
        Err(RvError::KeyHandleInvalid),
        "private key hidden until login"
    );
    let e = ec_sign(&fresh, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::UserNotLoggedIn), "{e}");
    login(&fresh).unwrap();
    sign_rv(&fresh).expect("recovered after re-login");
}

#[test]
fn fault_switched_on_and_off_mid_run_under_a_running_signer() {
    let (_g, h) = lock();
    let _ = clean_start(h);
    let start = Instant::now();
    let (on_at, off_at) = (Duration::from_millis(400), Duration::from_millis(1000));
    let timeline: Vec<(Duration, bool)> = std::thread::scope(|scope| {
        let signer = scope.spawn(|| {
            let s = h.session();
            let key = private_key(&s, EC_LABEL);
            let mut events = Vec::new();
            while start.elapsed() < Duration::from_millis(1600) {
                let ok = ec_sign(&s, key).is_ok();
                events.push((start.elapsed(), ok));
                std::thread::sleep(Duration::from_millis(2));
            }
            events
        });
        std::thread::sleep(on_at);
        write_config(
            &h.config_path,
            &config_with(r#""faults": [{"kind": "error", "rv": "CKR_DEVICE_ERROR"}]"#),
        );
        std::thread::sleep(off_at - on_at);
        write_config(&h.config_path, &config_with(""));
        signer.join().unwrap()
    });
    // Allow the re-read interval (20 ms here) plus scheduling slack on each switch.
    let slack = Duration::from_millis(150);
    for (t, ok) in &timeline {
        if *t < on_at || *t > off_at + slack {
            assert!(ok, "failure at {t:?} while the fault was off");
        }
        if *t > on_at + slack && *t < off_at {
            assert!(!ok, "success at {t:?} while the fault was on");
        }
    }
    let failures = timeline.iter().filter(|(_, ok)| !ok).count();
    let after = timeline
        .iter()
        .filter(|(t, ok)| *t > off_at + slack && *ok)
        .count();
    eprintln!(
        "{} calls, {failures} failed while the fault was on, {after} ok after it went off",
        timeline.len()
    );
    assert!(failures > 10 && after > 10);
}

#[test]
fn faults_compose_stalls_add_up_and_the_first_failure_in_file_order_answers() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    let b = h.session();
    h.set_config(&config_with(
        r#""faults": [
            {"kind": "hang", "duration_ms": 150, "max_fires": 1, "functions": ["C_Sign"]},
            {"kind": "error", "rv": "CKR_DEVICE_ERROR", "max_fires": 1, "functions": ["C_Sign"]},
            {"kind": "hang", "duration_ms": 100, "max_fires": 1, "functions": ["C_Sign"]},
            {"kind": "error", "rv": "CKR_FUNCTION_FAILED", "max_fires": 1, "functions": ["C_Sign"]},
            {"kind": "logout", "max_fires": 1, "functions": ["C_Sign"]}]"#,
    ));
    let t = Instant::now();
    let e = ec_sign(&s, key).unwrap_err();
    let took = t.elapsed();
    // All five fired on the same call: both stalls, the first error, and the logout.
    assert_eq!(rv_of(&e), Some(RvError::DeviceError), "{e}");
    assert!(
        took >= Duration::from_millis(240),
        "stalls add up: {took:?}"
    );
    assert_eq!(
        b.get_session_info().unwrap().session_state(),
        SessionState::RwPublic,
        "the logout fired too"
    );
    login(&s).unwrap();
    ec_sign(&s, key).expect("every fault had max_fires 1");
}

#[test]
fn operation_left_active_blocks_new_operations_until_ended_or_reopened() {
    let (_g, h) = lock();
    let (s, key) = clean_start(h);
    let other = h.session();
    h.set_config(&config_with(
        r#""faults": [{"kind": "operation_active", "max_fires": 1}]"#,
    ));
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::OperationActive), "{e}");
    h.set_config(&config_with(""));
    // It stays: every later C_SignInit on that session meets the leftover operation.
    for _ in 0..3 {
        let e = ec_sign(&s, key).unwrap_err();
        assert_eq!(rv_of(&e), Some(RvError::OperationActive), "{e}");
    }
    let e = s
        .sign_init(&cryptoki::mechanism::Mechanism::Ecdsa, key)
        .unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::OperationActive), "{e}");
    // Other sessions are unaffected.
    ec_sign(&other, private_key(&other, EC_LABEL)).expect("other session");
    // Ending the leftover operation with a step call clears it (that step fails).
    let e = s.sign_update(&[0u8; 8]).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::FunctionFailed), "{e}");
    ec_sign(&s, key).expect("cleared by ending the operation");
    // The other recovery: close the session and open a new one.
    h.set_config(&config_with(
        r#""faults": [{"kind": "operation_active", "max_fires": 1}]"#,
    ));
    let e = ec_sign(&s, key).unwrap_err();
    assert_eq!(rv_of(&e), Some(RvError::OperationActive), "{e}");
    drop(s);
    let fresh = h.session();
    ec_sign(&fresh, private_key(&fresh, EC_LABEL)).expect("a new session is clean");
}

#[test]
fn a_removed_token_leaves_the_slot_list_of_present_tokens() {
    let (_g, h) = lock();
    let (s, _) = clean_start(h);
    assert!(h.pkcs11.get_slots_with_token().unwrap().contains(&h.slot));
    h.set_config(&config_with(
        r#""faults": [{"kind": "token_removed", "duration_ms": 400, "max_fires": 1}]"#,
    ));
    assert_eq!(sign_rv(&s), Err(RvError::DeviceRemoved));
    assert!(
        !h.pkcs11.get_slots_with_token().unwrap().contains(&h.slot),
        "C_GetSlotList(tokenPresent=TRUE) must not list the removed token"
    );
    assert!(
        h.pkcs11.get_all_slots().unwrap().contains(&h.slot),
        "the slot itself is still there"
    );
    std::thread::sleep(Duration::from_millis(450));
    assert!(h.pkcs11.get_slots_with_token().unwrap().contains(&h.slot));
}
