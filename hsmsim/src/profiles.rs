//! Built-in profiles of real HSM products, as config documents a file can name with
//! `"profile": "<name>"` and override key by key. Owns the published figures and their sources;
//! figures that could not be found are marked ASSUMPTION where they are set.
//!
//! Model: a profile describes ONE HSM (one partition / one cluster member). A product's
//! throughput T for an algorithm and its concurrency C (crypto cores, or the vendor's
//! recommended number of outstanding requests) give the per-operation service time C / T, so a
//! saturated simulated HSM delivers T ops/s and a lone request takes C / T plus the network
//! round trip. The service time is 80% fixed and 20% log-normal (sigma 0.3) so percentiles have
//! a tail; that split is an ASSUMPTION for every profile (no vendor publishes latency spreads).
//! The RSA figures are RSA-2048 and the EC figures P-256; other key sizes are scaled by the
//! key-size cost (`config::Config::key_cost`).

use serde_json::{json, Map, Value};

/// Names accepted by [`get`].
pub const NAMES: &[&str] = &[
    "aws-cloudhsm-hsm1.medium",
    "aws-cloudhsm-hsm2m.medium",
    "thales-luna7-a700",
    "thales-luna7-a750",
    "thales-luna7-a790",
    "azure-managed-hsm",
    "entrust-nshield-connect-xc",
];

/// Mechanisms timed with the RSA-2048 private-key figure (sign and decrypt cost the same
/// modular exponentiation).
const RSA_MECHANISMS: &[&str] = &[
    "CKM_RSA_PKCS",
    "CKM_RSA_X_509",
    "CKM_RSA_PKCS_PSS",
    "CKM_RSA_PKCS_OAEP",
    "CKM_SHA1_RSA_PKCS",
    "CKM_SHA256_RSA_PKCS",
    "CKM_SHA384_RSA_PKCS",
    "CKM_SHA512_RSA_PKCS",
    "CKM_SHA256_RSA_PKCS_PSS",
    "CKM_SHA384_RSA_PKCS_PSS",
    "CKM_SHA512_RSA_PKCS_PSS",
];

/// Mechanisms timed with the ECDSA P-256 figure.
const EC_MECHANISMS: &[&str] = &[
    "CKM_ECDSA",
    "CKM_ECDSA_SHA1",
    "CKM_ECDSA_SHA256",
    "CKM_ECDSA_SHA384",
    "CKM_ECDSA_SHA512",
];

/// Share of the service time that is constant; the rest is log-normal. ASSUMPTION (see above).
const FIXED_SHARE: f64 = 0.8;
/// Log-normal shape of the variable part. ASSUMPTION (see above).
const SIGMA: f64 = 0.3;

/// Inputs for one product.
struct Product {
    comment: &'static str,
    /// Network round trip per call, microseconds.
    rtt_us: u64,
    /// Concurrent operations the HSM serves.
    cores: u32,
    /// RSA-2048 private-key operations per second at saturation.
    rsa_ops_per_sec: f64,
    /// ECDSA P-256 signatures per second at saturation.
    ec_ops_per_sec: f64,
    /// Licence cap on all operations per second, if the product has one.
    cap_ops_per_sec: Option<f64>,
}

/// The config document for a profile, or None for an unknown name.
pub fn get(name: &str) -> Option<Value> {
    let p = match name {
        // Source: AWS CloudHSM User Guide, "AWS CloudHSM performance information",
        // https://docs.aws.amazon.com/cloudhsm/latest/userguide/performance.html — hsm1.medium:
        // two-HSM cluster 2,000 RSA-2048 sign/s and 500 EC P-256 sign/s (three-HSM 3,000 / 750),
        // i.e. 1,000 RSA and 250 EC per HSM. Cores (4) and the in-VPC round trip (500 us) are
        // ASSUMPTIONS: AWS publishes neither.
        "aws-cloudhsm-hsm1.medium" => Product {
            comment: "AWS CloudHSM hsm1.medium, one HSM: 1,000 RSA-2048 + 250 EC P-256 sign/s \
                      (AWS performance page); cores and RTT assumed",
            rtt_us: 500,
            cores: 4,
            rsa_ops_per_sec: 1000.0,
            ec_ops_per_sec: 250.0,
            cap_ops_per_sec: None,
        },
        // Source: same AWS page — hsm2m.medium: two-HSM cluster 2,000 RSA-2048 sign/s and
        // 3,000 EC P-256 sign/s (three-HSM 3,000 / 4,500), i.e. 1,000 RSA and 1,500 EC per HSM.
        // Cores (4) and round trip (500 us) are ASSUMPTIONS.
        "aws-cloudhsm-hsm2m.medium" => Product {
            comment: "AWS CloudHSM hsm2m.medium, one HSM: 1,000 RSA-2048 + 1,500 EC P-256 sign/s \
                      (AWS performance page); cores and RTT assumed",
            rtt_us: 500,
            cores: 4,
            rsa_ops_per_sec: 1000.0,
            ec_ops_per_sec: 1500.0,
            cap_ops_per_sec: None,
        },
        // Thales Luna Network HSM 7. Concurrency 30: Thales documents the per-HSM performance
        // "sweet spot" as around 30 simultaneous threads
        // (https://thalesdocs.com/gphsm/luna/7.1/docs/pci/Content/administration/ha/performance.htm).
        // Throughput: no figure was found by search. ASSUMPTION: the A700/A750/A790 share one
        // engine (10,000 RSA-2048 and 20,000 EC P-256 ops/s, recalled from the A790 product
        // brief) and differ by a licence cap of 1,000 (A700) and 5,000 (A750) ops/s, as recalled
        // from Thales' model tiering. Round trip 200 us (on-premises LAN) is an ASSUMPTION.
        "thales-luna7-a700" => luna("Thales Luna Network HSM 7 A700", Some(1000.0)),
        "thales-luna7-a750" => luna("Thales Luna Network HSM 7 A750", Some(5000.0)),
        "thales-luna7-a790" => luna("Thales Luna Network HSM 7 A790", None),
        // Azure Managed HSM. Source consulted: "Azure Managed HSM scaling guidance",
        // https://learn.microsoft.com/azure/key-vault/managed-hsm/scaling-guidance (per-partition
        // throughput tables; Managed HSM does not throttle crypto operations). The table's
        // figures were not retrievable by search, so ASSUMPTION: 2,000 RSA-2048 and 2,000 EC
        // P-256 sign/s per pool, 16 concurrent, and a 5 ms in-region HTTPS round trip (it is a
        // REST service, reached by PKCS#11 only through a client shim).
        "azure-managed-hsm" => Product {
            comment: "Azure Managed HSM (ASSUMED figures; see the scaling-guidance page)",
            rtt_us: 5000,
            cores: 16,
            rsa_ops_per_sec: 2000.0,
            ec_ops_per_sec: 2000.0,
            cap_ops_per_sec: None,
        },
        // Entrust nShield Connect XC (High model). No figure was found by search. ASSUMPTION:
        // 8,600 RSA-2048 and 14,400 EC P-256 sign/s, recalled from the Entrust datasheet. Entrust
        // tells PKCS#11 users to keep outstanding jobs within the module's "rec. queue"
        // (https://nshielddocs.entrust.com/security-world-docs/v13.3/solo-ug-nix/app-performance-tuning.html);
        // its value is not published, so 32 concurrent is an ASSUMPTION, as is the 200 us RTT.
        "entrust-nshield-connect-xc" => Product {
            comment: "Entrust nShield Connect XC High (ASSUMED figures)",
            rtt_us: 200,
            cores: 32,
            rsa_ops_per_sec: 8600.0,
            ec_ops_per_sec: 14400.0,
            cap_ops_per_sec: None,
        },
        _ => return None,
    };
    Some(p.to_config())
}

fn luna(comment: &'static str, cap: Option<f64>) -> Product {
    Product {
        comment,
        rtt_us: 200,
        cores: 30,
        rsa_ops_per_sec: 10000.0,
        ec_ops_per_sec: 20000.0,
        cap_ops_per_sec: cap,
    }
}

impl Product {
    fn to_config(&self) -> Value {
        let service = |ops_per_sec: f64| {
            let mean_us = self.cores as f64 * 1e6 / ops_per_sec;
            let fixed_us = mean_us * FIXED_SHARE;
            // Log-normal mean = median * exp(sigma^2 / 2); pick the median that makes the
            // variable part's mean the remaining share.
            let median_us = mean_us * (1.0 - FIXED_SHARE) / (SIGMA * SIGMA / 2.0).exp();
            json!({"fixed_us": fixed_us.round() as u64, "median_us": median_us.round() as u64, "sigma": SIGMA})
        };
        let mut mechanisms = Map::new();
        for m in RSA_MECHANISMS {
            mechanisms.insert((*m).into(), service(self.rsa_ops_per_sec));
        }
        for m in EC_MECHANISMS {
            mechanisms.insert((*m).into(), service(self.ec_ops_per_sec));
        }
        let mut capacity = json!({ "max_concurrent": self.cores });
        if let Some(cap) = self.cap_ops_per_sec {
            capacity["max_ops_per_sec"] = json!(cap);
            // A licence cap is enforced per second, so a short burst of up to one core-set passes.
            capacity["burst"] = json!(self.cores);
        }
        json!({
            "comment": self.comment,
            "rtt": {"fixed_us": self.rtt_us},
            "capacity": capacity,
            "latency": {"mechanisms": mechanisms},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::func::Func;

    #[test]
    fn every_profile_parses_and_saturates_at_its_published_rate() {
        for name in NAMES {
            let cfg = Config::from_json(&format!(r#"{{"profile": "{name}"}}"#), name).unwrap();
            let cores = cfg.capacity.max_concurrent.unwrap() as f64;
            let rsa = cfg.service_latency(Func::Sign, Some(cryptoki_sys::CKM_RSA_PKCS));
            let ec = cfg.service_latency(Func::Sign, Some(cryptoki_sys::CKM_ECDSA));
            let rsa_rate = cores * 1e6 / rsa.mean_us();
            let ec_rate = cores * 1e6 / ec.mean_us();
            assert!(rsa_rate > 100.0 && ec_rate > 100.0, "{name}");
            if *name == "aws-cloudhsm-hsm1.medium" {
                assert!((rsa_rate - 1000.0).abs() < 10.0, "{rsa_rate}");
                assert!((ec_rate - 250.0).abs() < 3.0, "{ec_rate}");
            }
        }
        assert!(get("nope").is_none());
    }
}
