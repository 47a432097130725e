//! Cloud keys through the whole server: edge client (keycore-loadgen's
//! blocking client, mutual TLS) -> reactor -> `Backend::Store` (KMS) -> KMS runtime
//! thread -> stand-in -> back, with signatures verified by the test.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use keycore_keys::{KeyIndex, StoreId};
use keycore_kms::{AwsCredential, AzureCredential, GcpCredential, KmsOptions, KmsStore};
use keycore_kmssim::{KeyType, Sim};
use keycore_loadgen::client::BlockingClient;
use keycore_protocol::{ErrorCode, Message, Op, Ski};
use std::sync::Arc;
use x509_parser::prelude::FromDer;

fn req<'a>(op: u8, ski: &'a Ski, payload: &'a [u8]) -> Message<'a> {
    Message {
        opcode: Some(Op(op)),
        ski: Some(ski),
        payload: Some(payload),
        ..Message::default()
    }
}

fn spk(spki: &[u8]) -> Vec<u8> {
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).unwrap();
    info.subject_public_key.data.to_vec()
}

#[test]
fn edge_requests_are_served_by_cloud_keys() {
    let sim = Sim::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    sim.azure_client_secret("t", "c", "s");
    sim.aws_access_key("AKIDSERVER", "server-secret");
    let sa = dir.path().join("sa.json");
    std::fs::write(
        &sa,
        sim.gcp_service_account("edge@p.iam.gserviceaccount.com")
            .unwrap(),
    )
    .unwrap();
    let (az_uri, az_key) = sim
        .azure_key("kv-edge", false, "tls-rsa", KeyType::Rsa2048)
        .unwrap();
    let gcp_uri = "projects/p/locations/global/keyRings/r/cryptoKeys/ec/cryptoKeyVersions/1";
    let gcp_key = sim
        .gcp_key(gcp_uri, "EC_SIGN_P256_SHA256", KeyType::EcP256)
        .unwrap();
    let (aws_uri, aws_key) = sim.aws_key("eu-west-1", KeyType::EcP384).unwrap();
    let opts = KmsOptions {
        ca_file: Some(sim.write_ca(dir.path()).unwrap()),
        azure_endpoint: Some(sim.https_url.clone()),
        azure_authority: Some(sim.https_url.clone()),
        gcp_endpoint: sim.https_url.clone(),
        aws_endpoint: Some(sim.https_url.clone()),
        azure_credential: Some(AzureCredential::ClientSecret {
            tenant: "t".into(),
            client_id: "c".into(),
            secret: "s".into(),
        }),
        gcp_credential: Some(GcpCredential::ServiceAccountFile(sa)),
        aws_credential: Some(AwsCredential::Static {
            access_key: "AKIDSERVER".into(),
            secret_key: "server-secret".into(),
            session_token: None,
        }),
        ..KmsOptions::default()
    };
    let (store, entries) =
        KmsStore::open(&[az_uri, gcp_uri.to_string(), aws_uri], &opts, StoreId(0)).unwrap();
    let skis: Vec<Ski> = entries.iter().map(|e| e.ski).collect();
    let mut index = KeyIndex::default();
    for e in entries {
        index.insert(e).unwrap();
    }
    let shared = keycore_testsupport::pki::shared();
    let p = &shared.pki;
    let handle = keycore_testsupport::inproc::start(
        &Default::default(),
        p,
        &p.server_cert,
        &p.server_key,
        index,
        vec![Arc::new(store)],
    );
    let client_tls = shared.client_tls();
    let mut c = BlockingClient::connect(handle.addr, &client_tls).unwrap();
    let msg = b"handshake transcript";
    let d256 = digest::digest(&digest::SHA256, msg);
    let d384 = digest::digest(&digest::SHA384, msg);
    // Pipelined: RSA-PSS (TLS 1.3) on Azure, ECDSA on Google and AWS, and
    // an op the Google key cannot do.
    let msgs = [
        req(0x35, &skis[0], d256.as_ref()),
        req(0x15, &skis[1], d256.as_ref()),
        req(0x16, &skis[2], d384.as_ref()),
        req(0x05, &skis[1], d256.as_ref()),
    ];
    let rs = c.pipeline(&msgs).unwrap();
    assert_eq!(rs.len(), 4);
    for r in &rs[..3] {
        assert_eq!(r.error_code(), None, "{r:?}");
    }
    UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, spk(&az_key.spki))
        .verify(msg, &rs[0].payload)
        .expect("Azure PSS signature verifies");
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spk(&gcp_key.spki))
        .verify(msg, &rs[1].payload)
        .expect("Google ECDSA signature verifies");
    UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, spk(&aws_key.spki))
        .verify(msg, &rs[2].payload)
        .expect("AWS ECDSA signature verifies");
    assert_eq!(rs[3].error_code(), Some(ErrorCode::CRYPTO));
    handle.shutdown();
    handle.join().unwrap();
}
