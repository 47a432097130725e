//! # keycore-kmssim
//!
//! Local stand-ins of the cloud key services keycore talks to: the Azure Key
//! Vault keys API and Azure AD v2 token endpoint (plus managed-identity
//! IMDS), the Google Cloud KMS v1 API and OAuth token endpoint (plus the
//! metadata server), and the AWS KMS JSON 1.1 API with SigV4 verification
//! (plus IMDSv2). They hold real keys and do the real signature math; they
//! check requests the way the services document them.
//!
//! Why a crate of its own: the engine's integration tests use it in-process,
//! the `keycore-kmssim` binary serves it to a manually started server (docs,
//! `curl -v`, `keycore loadgen`), and it must not ship inside the server.
//! Stand-ins in progress; see the modules below.
#![forbid(unsafe_code)]
