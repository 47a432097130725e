//! Built-in profiles of real HSM products, as config documents a file can name with
//! `"profile": "<name>"` and override key by key. Owns the published figures and their sources:
//! every figure is a [`Figure`] carrying the document it comes from, or the word ASSUMED /
//! RECOLLECTION when no citable source was found. [`figures`] exposes them (for a planner or a
//! comparison report), and each profile's `comment` carries them into the config document.
//!
//! Model: a profile describes ONE HSM (one partition / one cluster member). A product's
//! throughput T for an algorithm and its concurrency C (crypto cores, or the vendor's
//! recommended number of outstanding requests) give the per-operation service time C / T, so a
//! saturated simulated HSM delivers T ops/s and a lone request takes C / T plus the network
//! round trip. The service time is 80% fixed and 20% log-normal (sigma 0.3) so percentiles have
//! a tail; that split is an ASSUMPTION for every profile (no vendor publishes latency spreads).
//! The RSA figures are RSA-2048 and the EC figures P-256; other key sizes are scaled by the
//! key-size cost ([`rsa_size_cost`], [`ec_size_cost`], unless a config overrides it). Where a vendor publishes no Ed25519 figure, EdDSA
//! is ASSUMED to cost what ECDSA P-256 costs.
//!
//! Cluster scaling is not linear: AWS publishes CloudHSM figures for 2-, 3- and 6-HSM clusters,
//! and six HSMs deliver 5,000 RSA-2048 sign/s, not 6 x 1,000. So a CloudHSM member has two
//! profiles: the plain one (a member of a 2- or 3-HSM cluster, where the figures are linear) and
//! `-6` (a member of a 6-HSM cluster: the six-HSM figure divided by six). Run N simulator
//! copies with the profile of the cluster size being modelled.

//!
//! This crate is data and arithmetic only, so the planner (`keycore-tuning`, linked into the
//! `keycore` binary) reads the figures without linking the simulator. Must not: depend on
//! PKCS#11 or on the simulator.
//!
//! Public surface: [`NAMES`], [`get`] (a profile as hsmsim config JSON),
//! [`figures`] and [`Figure`] (each figure with its source), the size-cost
//! rules [`rsa_size_cost`], [`ec_size_cost`], [`DEFAULT_KEY_SIZE_EXPONENT`].

use serde_json::{json, Map, Value};

/// Default exponent of the key-size cost law (see [`rsa_size_cost`]).
pub const DEFAULT_KEY_SIZE_EXPONENT: f64 = 3.0;

/// Cost of an RSA operation with a `bits` modulus relative to RSA-2048: (bits / 2048)^exponent
/// (1 for an unknown size, 0). With exponent 3 (schoolbook modular arithmetic: quadratic
/// multiplication times a linear-length exponent) RSA-3072 costs 3.4x, RSA-4096 8x. That law is
/// an ASSUMPTION: real HSMs have their own firmware, and vendors rarely publish per-size figures.
pub fn rsa_size_cost(bits: u32, exponent: f64) -> f64 {
    if bits == 0 {
        return 1.0;
    }
    (bits as f64 / 2048.0).powf(exponent)
}

/// Cost of an operation on a prime curve of `bits` relative to P-256: (bits / 256)^exponent
/// (P-384 3.4x, P-521 8.4x with exponent 3; the same ASSUMPTION as [`rsa_size_cost`]).
pub fn ec_size_cost(bits: u32, exponent: f64) -> f64 {
    (bits as f64 / 256.0).powf(exponent)
}

/// Names accepted by [`get`].
pub const NAMES: &[&str] = &[
    "aws-cloudhsm-hsm1.medium",
    "aws-cloudhsm-hsm1.medium-6",
    "aws-cloudhsm-hsm2m.medium",
    "aws-cloudhsm-hsm2m.medium-6",
    "thales-luna7-a700",
    "thales-luna7-a750",
    "thales-luna7-a790",
    "azure-managed-hsm",
    "azure-cloud-hsm",
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

/// Mechanisms timed with the Ed25519 figure.
const EDDSA_MECHANISMS: &[&str] = &["CKM_EDDSA"];

/// Share of the service time that is constant; the rest is log-normal. ASSUMPTION (see above).
const FIXED_SHARE: f64 = 0.8;
/// Log-normal shape of the variable part. ASSUMPTION (see above).
const SIGMA: f64 = 0.3;

/// One published (or assumed) number and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    /// The value (operations per second, microseconds or a count, as named).
    pub value: f64,
    /// The document it comes from, or why it is assumed.
    pub source: &'static str,
}

const fn fig(value: f64, source: &'static str) -> Figure {
    Figure { value, source }
}

/// A figure from the AWS CloudHSM User Guide, "AWS CloudHSM performance information".
macro_rules! aws_perf {
    ($what:literal) => {
        concat!(
            "AWS CloudHSM User Guide, \"AWS CloudHSM performance information\" ",
            "(https://docs.aws.amazon.com/cloudhsm/latest/userguide/performance.html): ",
            $what
        )
    };
}
const AWS_CORES: &str = "ASSUMED: AWS publishes no per-HSM concurrency";
const AWS_RTT: &str = "ASSUMED: in-VPC round trip, not published";
const LUNA_CORES: &str = "Thales Luna 7.1 docs, HA performance: ~30 simultaneous threads per HSM \
    is the 'sweet spot' (https://thalesdocs.com/gphsm/luna/7.1/docs/pci/Content/administration/ha/performance.htm)";
const LUNA_RSA: &str = "RECOLLECTION (no source found by search): A790 product brief, \
    ~10,000 RSA-2048 sign/s";
const LUNA_EC: &str = "RECOLLECTION (no source found by search): A790 product brief, \
    ~20,000 ECDSA P-256 sign/s";
const LUNA_RTT: &str = "ASSUMED: on-premises LAN round trip";
const MHSM: &str = "Microsoft, \"Azure Managed HSM scaling guidance\" \
    (https://learn.microsoft.com/azure/key-vault/managed-hsm/scaling-guidance): approximate \
    maximum per instance with one of its three partitions available (the figure to plan a \
    guaranteed rate with); up to 3x with all three. Checked 2026-12-04 in the page's source \
    (MicrosoftDocs/azure-security-docs articles/key-vault/managed-hsm/scaling-guidance.md): \
    RSA-2048 sign 900/s, P-256 sign 330/s; Managed HSM does not throttle cryptographic \
    operations";
const CLOUD_HSM: &str = "Microsoft, \"Azure Cloud HSM service limits\" \
    (https://learn.microsoft.com/azure/cloud-hsm/service-limits): per instance with one \
    partition available, single key: RSA-2048 1,100, P-256 330, Ed25519 420 sign/s (checked \
    2026-12-04 in the page's source, MicrosoftDocs/azure-security-docs \
    articles/cloud-hsm/service-limits.md)";
const AZURE_CORES: &str = "ASSUMED: Microsoft publishes no concurrency";
const MHSM_RTT: &str = "ASSUMED: in-region HTTPS round trip (Managed HSM is a REST service, \
    reached from PKCS#11 only through a client shim)";
const CLOUD_HSM_RTT: &str = "ASSUMED: in-VNet round trip of the Cloud HSM PKCS#11 client";
const NSHIELD_RSA: &str = "RECOLLECTION (no source found by search): Entrust datasheet, \
    nShield Connect XC High, ~8,600 RSA-2048 sign/s";
const NSHIELD_EC: &str = "RECOLLECTION (no source found by search): Entrust datasheet, \
    nShield Connect XC High, ~14,400 ECDSA P-256 sign/s";
const NSHIELD_CORES: &str = "ASSUMED: Entrust advises keeping outstanding jobs within the \
    module's 'rec. queue' (https://nshielddocs.entrust.com/security-world-docs/v13.3/solo-ug-nix/app-performance-tuning.html), \
    whose value is not published";
const ED_AS_EC: &str = "ASSUMED: no Ed25519 figure published; EdDSA costed as ECDSA P-256";

/// Inputs for one product (one HSM).
struct Product {
    comment: &'static str,
    /// Network round trip per call, microseconds.
    rtt_us: Figure,
    /// Concurrent operations the HSM serves.
    cores: Figure,
    /// RSA-2048 private-key operations per second at saturation.
    rsa: Figure,
    /// ECDSA P-256 signatures per second at saturation.
    ec: Figure,
    /// Ed25519 signatures per second at saturation (None: costed as `ec`, ASSUMED).
    ed25519: Option<Figure>,
    /// Licence cap on all operations per second, if the product has one.
    cap: Option<Figure>,
}

fn product(name: &str) -> Option<Product> {
    let aws = |comment, rsa: Figure, ec: Figure| Product {
        comment,
        rtt_us: fig(500.0, AWS_RTT),
        cores: fig(4.0, AWS_CORES),
        rsa,
        ec,
        ed25519: None,
        cap: None,
    };
    let luna = |comment, cap: Option<Figure>| Product {
        comment,
        rtt_us: fig(200.0, LUNA_RTT),
        cores: fig(30.0, LUNA_CORES),
        rsa: fig(10_000.0, LUNA_RSA),
        ec: fig(20_000.0, LUNA_EC),
        ed25519: None,
        cap,
    };
    Some(match name {
        // hsm1.medium: 2,000 / 3,000 / 5,000 RSA-2048 and 500 / 750 / 1,500 EC P-256 sign/s
        // for 2 / 3 / 6 HSMs.
        "aws-cloudhsm-hsm1.medium" => aws(
            "AWS CloudHSM hsm1.medium, one member of a 2- or 3-HSM cluster",
            fig(
                1000.0,
                aws_perf!("2-HSM cluster 2,000 RSA-2048 sign/s (3-HSM 3,000), / 2"),
            ),
            fig(
                250.0,
                aws_perf!("2-HSM cluster 500 EC P-256 sign/s (3-HSM 750), / 2"),
            ),
        ),
        "aws-cloudhsm-hsm1.medium-6" => aws(
            "AWS CloudHSM hsm1.medium, one member of a 6-HSM cluster (sub-linear scaling)",
            fig(
                5000.0 / 6.0,
                aws_perf!("6-HSM cluster 5,000 RSA-2048 sign/s, / 6"),
            ),
            fig(
                1500.0 / 6.0,
                aws_perf!("6-HSM cluster 1,500 EC P-256 sign/s, / 6"),
            ),
        ),
        // hsm2m.medium: 2,000 / 3,000 / 5,000 RSA-2048 and 3,000 / 4,500 / 7,000 EC P-256.
        "aws-cloudhsm-hsm2m.medium" => aws(
            "AWS CloudHSM hsm2m.medium, one member of a 2- or 3-HSM cluster",
            fig(
                1000.0,
                aws_perf!("2-HSM cluster 2,000 RSA-2048 sign/s (3-HSM 3,000), / 2"),
            ),
            fig(
                1500.0,
                aws_perf!("2-HSM cluster 3,000 EC P-256 sign/s (3-HSM 4,500), / 2"),
            ),
        ),
        "aws-cloudhsm-hsm2m.medium-6" => aws(
            "AWS CloudHSM hsm2m.medium, one member of a 6-HSM cluster (sub-linear scaling)",
            fig(
                5000.0 / 6.0,
                aws_perf!("6-HSM cluster 5,000 RSA-2048 sign/s, / 6"),
            ),
            fig(
                7000.0 / 6.0,
                aws_perf!("6-HSM cluster 7,000 EC P-256 sign/s, / 6"),
            ),
        ),
        // Thales Luna Network HSM 7: A700/A750/A790 modelled as one engine with licence caps.
        "thales-luna7-a700" => luna(
            "Thales Luna Network HSM 7 A700 (RECOLLECTED figures)",
            Some(fig(
                1000.0,
                "RECOLLECTION: A700 licence tier ~1,000 ops/s (no source found)",
            )),
        ),
        "thales-luna7-a750" => luna(
            "Thales Luna Network HSM 7 A750 (RECOLLECTED figures)",
            Some(fig(
                5000.0,
                "RECOLLECTION: A750 licence tier ~5,000 ops/s (no source found)",
            )),
        ),
        "thales-luna7-a790" => luna("Thales Luna Network HSM 7 A790 (RECOLLECTED figures)", None),
        "azure-managed-hsm" => Product {
            comment: "Azure Managed HSM, one instance with one partition available",
            rtt_us: fig(5000.0, MHSM_RTT),
            cores: fig(4.0, AZURE_CORES),
            rsa: fig(900.0, MHSM),
            ec: fig(330.0, MHSM),
            ed25519: None,
            cap: None,
        },
        "azure-cloud-hsm" => Product {
            comment: "Azure Cloud HSM (PKCS#11), one instance with one partition available",
            rtt_us: fig(500.0, CLOUD_HSM_RTT),
            cores: fig(4.0, AZURE_CORES),
            rsa: fig(1100.0, CLOUD_HSM),
            ec: fig(330.0, CLOUD_HSM),
            ed25519: Some(fig(420.0, CLOUD_HSM)),
            cap: None,
        },
        "entrust-nshield-connect-xc" => Product {
            comment: "Entrust nShield Connect XC High (RECOLLECTED figures)",
            rtt_us: fig(200.0, "ASSUMED: on-premises LAN round trip"),
            cores: fig(32.0, NSHIELD_CORES),
            rsa: fig(8600.0, NSHIELD_RSA),
            ec: fig(14_400.0, NSHIELD_EC),
            ed25519: None,
            cap: None,
        },
        _ => return None,
    })
}

/// The config document for a profile, or None for an unknown name.
pub fn get(name: &str) -> Option<Value> {
    product(name).map(|p| p.to_config())
}

/// Every figure behind a profile, by what it measures ("rsa2048_sign_per_sec",
/// "ec_p256_sign_per_sec", "ed25519_sign_per_sec", "concurrency", "rtt_us",
/// "licence_cap_per_sec"), each with its source. None for an unknown name.
pub fn figures(name: &str) -> Option<Vec<(&'static str, Figure)>> {
    let p = product(name)?;
    let mut out = vec![
        ("rsa2048_sign_per_sec", p.rsa),
        ("ec_p256_sign_per_sec", p.ec),
        ("ed25519_sign_per_sec", p.ed25519()),
        ("concurrency", p.cores),
        ("rtt_us", p.rtt_us),
    ];
    if let Some(cap) = p.cap {
        out.push(("licence_cap_per_sec", cap));
    }
    Some(out)
}

impl Product {
    fn ed25519(&self) -> Figure {
        self.ed25519.unwrap_or(Figure {
            value: self.ec.value,
            source: ED_AS_EC,
        })
    }

    fn to_config(&self) -> Value {
        let cores = self.cores.value;
        let service = |ops_per_sec: f64| {
            let mean_us = cores * 1e6 / ops_per_sec;
            let fixed_us = mean_us * FIXED_SHARE;
            // Log-normal mean = median * exp(sigma^2 / 2); pick the median that makes the
            // variable part's mean the remaining share.
            let median_us = mean_us * (1.0 - FIXED_SHARE) / (SIGMA * SIGMA / 2.0).exp();
            json!({"fixed_us": fixed_us.round() as u64, "median_us": median_us.round() as u64, "sigma": SIGMA})
        };
        let mut mechanisms = Map::new();
        for (list, rate) in [
            (RSA_MECHANISMS, self.rsa.value),
            (EC_MECHANISMS, self.ec.value),
            (EDDSA_MECHANISMS, self.ed25519().value),
        ] {
            for m in list {
                mechanisms.insert((*m).into(), service(rate));
            }
        }
        let mut capacity = json!({ "max_concurrent": cores as u32 });
        if let Some(cap) = self.cap {
            capacity["max_ops_per_sec"] = json!(cap.value);
            // A licence cap is enforced per second, so a short burst of up to one core-set passes.
            capacity["burst"] = json!(cores as u32);
        }
        let sourced = |f: Figure| json!({"value": f.value, "source": f.source});
        let mut figures = json!({
            "rsa2048_sign_per_sec": sourced(self.rsa),
            "ec_p256_sign_per_sec": sourced(self.ec),
            "ed25519_sign_per_sec": sourced(self.ed25519()),
            "concurrency": sourced(self.cores),
            "rtt_us": sourced(self.rtt_us),
            "service_time_split": format!(
                "ASSUMED: {}% fixed, {}% log-normal (sigma {SIGMA})",
                FIXED_SHARE * 100.0,
                100.0 - FIXED_SHARE * 100.0
            ),
        });
        if let Some(cap) = self.cap {
            figures["licence_cap_per_sec"] = sourced(cap);
        }
        json!({
            "comment": {"profile": self.comment, "figures": figures},
            "rtt": {"fixed_us": self.rtt_us.value as u64},
            "capacity": capacity,
            "latency": {"mechanisms": mechanisms},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_size_law_scales_from_the_reference_keys() {
        let e = DEFAULT_KEY_SIZE_EXPONENT;
        assert_eq!(rsa_size_cost(2048, e), 1.0);
        assert_eq!(rsa_size_cost(4096, e), 8.0);
        assert_eq!(rsa_size_cost(0, e), 1.0, "unknown size: unscaled");
        assert_eq!(ec_size_cost(256, e), 1.0);
        assert!((ec_size_cost(384, e) - 3.375).abs() < 1e-9);
        assert!((ec_size_cost(521, e) - 8.43).abs() < 0.01);
    }

    #[test]
    fn every_named_profile_has_sourced_figures() {
        for name in NAMES {
            let doc = get(name).unwrap_or_else(|| panic!("{name}"));
            assert!(doc.is_object(), "{name}");
            let f = figures(name).unwrap();
            assert!(!f.is_empty() && f.iter().all(|(_, fig)| !fig.source.is_empty()));
        }
    }
}
