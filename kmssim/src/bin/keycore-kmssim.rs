//! `keycore-kmssim`: run the cloud key service stand-ins on 127.0.0.1 for a
//! manually started keycore (docs/kms/), print the settings to use, and keep
//! serving until interrupted.

use anyhow::{Context, Result};
use clap::Parser;
use keycore_kmssim::{KeyType, Sim};

/// Serve Azure Key Vault, Google Cloud KMS and AWS KMS stand-ins on 127.0.0.1.
#[derive(Debug, Parser)]
struct Args {
    /// HTTPS port (0 = any free port).
    #[arg(long, default_value_t = 0)]
    https_port: u16,
    /// Plain HTTP port for the metadata services (0 = any free port).
    #[arg(long, default_value_t = 0)]
    http_port: u16,
    /// Directory to write the CA bundle, the Google key file and the keys'
    /// public halves (`pub/<service>/{rsa2048,p256}.pem`) into.
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Key-API requests per second each stand-in accepts before it answers
    /// with its throttling error (AWS `ThrottlingException`, Azure/Google
    /// 429), burst one second's worth; 0 = no quota. E.g. 1000: AWS KMS's
    /// default ECC request-rate quota (docs/kms/aws.md).
    #[arg(long, default_value_t = 0)]
    quota_rps: u32,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let sim = Sim::start_on(args.https_port, args.http_port).context("starting the stand-ins")?;
    sim.knobs(|k| k.quota_per_second = args.quota_rps);
    let ca = sim.write_ca(&args.dir).context("writing the CA bundle")?;
    let sa = args.dir.join("kmssim-service-account.json");
    std::fs::write(
        &sa,
        sim.gcp_service_account("keycore@kmssim.iam.gserviceaccount.com")?,
    )
    .with_context(|| format!("writing {}", sa.display()))?;
    sim.azure_client_secret("kmssim-tenant", "kmssim-client", "kmssim-secret");
    sim.aws_access_key("AKIDKMSSIM", "kmssim-secret-key");
    let (azure_rsa, azure_rsa_key) =
        sim.azure_key("kv-kmssim", false, "tls-rsa", KeyType::Rsa2048)?;
    let (azure_ec, azure_ec_key) = sim.azure_key("kv-kmssim", false, "tls-ec", KeyType::EcP256)?;
    let gcp_rsa =
        "projects/kmssim/locations/global/keyRings/ring/cryptoKeys/tls-pss/cryptoKeyVersions/1";
    let gcp_ec =
        "projects/kmssim/locations/global/keyRings/ring/cryptoKeys/tls-ec/cryptoKeyVersions/1";
    let gcp_rsa_key = sim.gcp_key(gcp_rsa, "RSA_SIGN_PSS_2048_SHA256", KeyType::Rsa2048)?;
    let gcp_ec_key = sim.gcp_key(gcp_ec, "EC_SIGN_P256_SHA256", KeyType::EcP256)?;
    let (aws_rsa, aws_rsa_key) = sim.aws_key("us-east-1", KeyType::Rsa2048)?;
    let (aws_ec, aws_ec_key) = sim.aws_key("us-east-1", KeyType::EcP256)?;
    // Public halves, one directory per service, for `keycore loadgen --keys`
    // (it names keys on the wire by their SKI and checks every signature).
    for (service, keys) in [
        ("azure", [&azure_rsa_key, &azure_ec_key]),
        ("gcp", [&gcp_rsa_key, &gcp_ec_key]),
        ("aws", [&aws_rsa_key, &aws_ec_key]),
    ] {
        let d = args.dir.join("pub").join(service);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        for (k, name) in keys.iter().zip(["rsa2048.pem", "p256.pem"]) {
            std::fs::write(d.join(name), k.spki_pem())
                .with_context(|| format!("writing {}", d.join(name).display()))?;
        }
    }
    println!("# environment for keycore serve");
    println!("export KEYCORE_KMS_CA_FILE={}", ca.display());
    println!(
        "export KEYCORE_AZURE_ENDPOINT={} KEYCORE_AZURE_AUTHORITY={}",
        sim.https_url, sim.https_url
    );
    println!("export AZURE_TENANT_ID=kmssim-tenant AZURE_CLIENT_ID=kmssim-client AZURE_CLIENT_SECRET=kmssim-secret");
    println!(
        "export KEYCORE_GCP_KMS_ENDPOINT={} GOOGLE_APPLICATION_CREDENTIALS={}",
        sim.https_url,
        sa.display()
    );
    println!("export KEYCORE_AWS_KMS_ENDPOINT={} AWS_ACCESS_KEY_ID=AKIDKMSSIM AWS_SECRET_ACCESS_KEY=kmssim-secret-key", sim.https_url);
    println!("# private_key_stores entries");
    for u in [
        &azure_rsa,
        &azure_ec,
        &gcp_rsa.to_string(),
        &gcp_ec.to_string(),
        &aws_rsa,
        &aws_ec,
    ] {
        println!("  - uri: {u}");
    }
    println!("# serving; Ctrl-C to stop");
    loop {
        std::thread::park();
    }
}
