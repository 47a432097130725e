//! The built-in product profiles as the simulator reads them. The figures and the key-size cost
//! law live in `keycore-hsmprofiles` (data only, so the planner links no simulator code); this
//! module re-exports them and holds the tests that run each profile through the simulator's
//! own config and latency model.

pub use keycore_hsmprofiles::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::func::Func;
    use serde_json::json;

    fn rates(name: &str) -> (f64, f64, f64) {
        let cfg = Config::from_json(&format!(r#"{{"profile": "{name}"}}"#), name).unwrap();
        let cores = cfg.capacity.max_concurrent.unwrap() as f64;
        let rate = |m| cores * 1e6 / cfg.service_latency(Func::Sign, Some(m)).mean_us();
        (
            rate(cryptoki_sys::CKM_RSA_PKCS),
            rate(cryptoki_sys::CKM_ECDSA),
            rate(cryptoki_sys::CKM_EDDSA),
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() / b < 0.01
    }

    #[test]
    fn every_profile_parses_and_saturates_at_its_figures() {
        for name in NAMES {
            let (rsa, ec, ed) = rates(name);
            let f = figures(name).unwrap();
            let get = |k| f.iter().find(|(n, _)| *n == k).unwrap().1;
            assert!(
                close(rsa, get("rsa2048_sign_per_sec").value),
                "{name} RSA {rsa}"
            );
            assert!(
                close(ec, get("ec_p256_sign_per_sec").value),
                "{name} EC {ec}"
            );
            assert!(
                close(ed, get("ed25519_sign_per_sec").value),
                "{name} Ed {ed}"
            );
            for (what, fig) in &f {
                assert!(!fig.source.is_empty(), "{name} {what} has no source");
            }
        }
        assert!(get("nope").is_none() && figures("nope").is_none());
    }

    #[test]
    fn azure_figures_are_the_one_partition_planning_figures() {
        let (rsa, ec, _) = rates("azure-managed-hsm");
        assert!(close(rsa, 900.0) && close(ec, 330.0), "{rsa} {ec}");
        let (rsa, ec, ed) = rates("azure-cloud-hsm");
        assert!(close(rsa, 1100.0) && close(ec, 330.0) && close(ed, 420.0));
    }

    #[test]
    fn cloudhsm_members_of_bigger_clusters_serve_less() {
        // Six hsm2m.medium HSMs: 5,000 RSA / 7,000 EC in total, not 6 x 1,000 / 6 x 1,500.
        let (rsa2, ec2, _) = rates("aws-cloudhsm-hsm2m.medium");
        let (rsa6, ec6, _) = rates("aws-cloudhsm-hsm2m.medium-6");
        assert!(close(rsa2, 1000.0) && close(ec2, 1500.0));
        assert!(close(6.0 * rsa6, 5000.0) && close(6.0 * ec6, 7000.0));
        assert!(6.0 * rsa6 < 6.0 * rsa2 && 6.0 * ec6 < 6.0 * ec2);
        let (rsa, ec, _) = rates("aws-cloudhsm-hsm1.medium");
        assert!(close(rsa, 1000.0) && close(ec, 250.0));
        let (rsa, _, _) = rates("aws-cloudhsm-hsm1.medium-6");
        assert!(close(6.0 * rsa, 5000.0));
    }

    #[test]
    fn unsourced_figures_say_so() {
        for name in ["thales-luna7-a790", "entrust-nshield-connect-xc"] {
            let f = figures(name).unwrap();
            let rsa = f
                .iter()
                .find(|(n, _)| *n == "rsa2048_sign_per_sec")
                .unwrap()
                .1;
            assert!(
                rsa.source.starts_with("RECOLLECTION"),
                "{name}: {}",
                rsa.source
            );
        }
        let doc = get("azure-cloud-hsm").unwrap();
        assert_eq!(
            doc["comment"]["figures"]["ed25519_sign_per_sec"]["value"],
            json!(420.0)
        );
    }
}
