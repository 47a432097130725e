//! keycore's integration tests: one binary (as ripgrep does it), real
//! loopback sockets, real rustls, real certificates from a throwaway PKI.
//! Each test starts its own server on 127.0.0.1:0.

mod cli;
mod connections;
mod edge;
mod enroll;
mod harness;
mod metrics;
mod operate;
mod ops;
mod otlp;
mod pkcs11;
mod protocol_errors;
mod tls;
mod tune;
