//! Golden vectors: `protocol/testdata/<name>.bin` plus `<name>.txt` (format in
//! `protocol/testdata/README.md`).
//!
//! The vectors are written below as hand-computed hex, not produced by the
//! encoder under test, so they are independent evidence of the wire format.
//! `regenerate_golden_vectors` (ignored) writes them to disk;
//! `golden_files_match_their_source` keeps disk and this table in step; and
//! `every_golden_vector_decodes_as_expected` walks the *directory* (not this
//! table) and checks frame::check, Message::decode and, for canonical vectors,
//! that encoding the decoded message reproduces the file byte for byte.
//!
//! Regenerate after editing the table:
//! `cargo test -p keycore-protocol --test golden -- --ignored regenerate_golden_vectors`

use keycore_protocol::frame::{self, FrameError, FrameStatus};
use keycore_protocol::{encode_response, DecodeError, Message, Op, OpClass, MAX_BODY_LEN};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One vector: its file name stem, its bytes in the hex notation of
/// `parse_hex`, and the expectation file's text.
struct Vector {
    name: &'static str,
    hex: &'static str,
    expect: &'static str,
}

// Values reused below, spelled out once here for the reader:
//   digest32 = SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
//   ski20    = SHA-1("abc")   = a9993e364706816aba3e25717850c26c9cd0d89d
//   SNI "example.com" = 6578616d706c652e636f6d (11 bytes)
//   192.0.2.1 = c0000201, 198.51.100.7 = c6336407
//   2001:db8::1 = 20010db8000000000000000000000001, 2001:db8::2 = ...0002
// A padded message has body 0x03f8 (1016) whenever its items total <= 1013
// bytes: padding value = 1024 - 8 - items - 3.
const VECTORS: &[Vector] = &[
    // ---------------------------------------------------------------- valid
    Vector {
        name: "ok_ping_protocol_md",
        hex: "01 00 03f8 00000007 | 11 0001 f1 | 20 03f1 00*1009",
        expect: "# PROTOCOL.md example: ping, ID 7, no payload; items 4, padding 1009.
frame: complete 1024
decode: ok
canonical: yes
id: 7
version: 1.0
opcode: f1
",
    },
    Vector {
        name: "ok_error_key_not_found_protocol_md",
        hex: "01 00 03f8 00000007 | 11 0001 ff | 12 0001 02 | 20 03ed 00*1005",
        expect: "# PROTOCOL.md example: error response 'key not found' (0x02), ID 7; items 8, padding 1005.
frame: complete 1024
decode: ok
canonical: yes
id: 7
version: 1.0
opcode: ff
payload: 02
",
    },
    Vector {
        name: "ok_ecdsa_p256_sha256_request",
        hex: "01 00 03f8 0000002a
              | 11 0001 15
              | 12 0020 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
              | 02 000b 6578616d706c652e636f6d
              | 03 0004 c0000201
              | 04 0014 a9993e364706816aba3e25717850c26c9cd0d89d
              | 05 0004 c6336407
              | 20 039b 00*923",
        expect: "# Padded ECDSA-SHA256 request as the edge sends it: opcode, 32-byte digest, SNI,
# client IPv4, SKI, server IPv4; items 4+35+14+7+23+7 = 90, padding 923.
frame: complete 1024
decode: ok
canonical: yes
id: 42
version: 1.0
opcode: 15
payload: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
sni: 6578616d706c652e636f6d
client-ip: 192.0.2.1
ski: a9993e364706816aba3e25717850c26c9cd0d89d
server-ip: 198.51.100.7
",
    },
    Vector {
        name: "ok_rsa_pkcs1_sha256_request_ipv6",
        hex: "01 00 03f8 01020304
              | 11 0001 05
              | 12 0020 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
              | 03 0010 20010db8000000000000000000000001
              | 04 0014 a9993e364706816aba3e25717850c26c9cd0d89d
              | 05 0010 20010db8000000000000000000000002
              | 20 0391 00*913",
        expect: "# Padded RSA PKCS#1 SHA-256 sign request with IPv6 client and server; items
# 4+35+19+23+19 = 100, padding 913.
frame: complete 1024
decode: ok
canonical: yes
id: 16909060
version: 1.0
opcode: 05
payload: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
client-ip: 2001:db8::1
ski: a9993e364706816aba3e25717850c26c9cd0d89d
server-ip: 2001:db8::2
",
    },
    Vector {
        name: "ok_response_rsa2048_signature",
        hex: "01 00 03f8 0000002a | 11 0001 f0 | 12 0100 5a*256 | 20 02ee 00*750",
        expect: "# Response carrying a 256-byte (RSA-2048) signature; items 4+259 = 263, padding 750.
frame: complete 1024
decode: ok
canonical: yes
id: 42
version: 1.0
opcode: f0
payload: 5a*256
",
    },
    Vector {
        name: "ok_items_1012_pad_1",
        hex: "01 00 03f8 00000001 | 11 0001 15 | 12 03ed ab*1005 | 20 0001 00",
        expect: "# Items total 1012: a padding item of one zero byte makes 1024.
frame: complete 1024
decode: ok
canonical: yes
id: 1
version: 1.0
opcode: 15
payload: ab*1005
",
    },
    Vector {
        name: "ok_items_1013_pad_empty_1024",
        hex: "01 00 03f8 00000001 | 11 0001 15 | 12 03ee ab*1006 | 20 0000",
        expect: "# Items total 1013: an empty padding item makes exactly 1024.
frame: complete 1024
decode: ok
canonical: yes
id: 1
version: 1.0
opcode: 15
payload: ab*1006
",
    },
    Vector {
        name: "ok_items_1014_pad_empty_1025",
        hex: "01 00 03f9 00000001 | 11 0001 15 | 12 03ef ab*1007 | 20 0000",
        expect: "# Items total 1014: 8 + 1014 < 1024, so an empty padding item follows (1025 bytes).
frame: complete 1025
decode: ok
canonical: yes
id: 1
version: 1.0
opcode: 15
payload: ab*1007
",
    },
    Vector {
        name: "ok_items_1015_pad_empty_1026",
        hex: "01 00 03fa 00000001 | 11 0001 15 | 12 03f0 ab*1008 | 20 0000",
        expect: "# Items total 1015: 8 + 1015 < 1024, so an empty padding item follows (1026 bytes).
frame: complete 1026
decode: ok
canonical: yes
id: 1
version: 1.0
opcode: 15
payload: ab*1008
",
    },
    Vector {
        name: "ok_items_1016_no_pad",
        hex: "01 00 03f8 00000001 | 11 0001 15 | 12 03f1 ab*1009",
        expect: "# Items total 1016: header + items = 1024, no padding item at all.
frame: complete 1024
decode: ok
canonical: yes
id: 1
version: 1.0
opcode: 15
payload: ab*1009
",
    },
    Vector {
        name: "ok_all_items_request",
        hex: "01 00 03f8 fffffffe
              | 11 0001 24
              | 12 0003 010203
              | 01 0020 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
              | 02 000b 6578616d706c652e636f6d
              | 03 0004 c0000201
              | 04 0014 a9993e364706816aba3e25717850c26c9cd0d89d
              | 05 0010 20010db8000000000000000000000002
              | 06 0002 3432
              | 13 0004 7369676e
              | 14 0002 beef
              | 15 0007 313a323a303a31
              | 16 0013 7b22726571756573745f6964223a227231227d
              | 17 0001 01
              | 20 0354 00*852",
        expect: r#"# Every known item once, in the encoder's order: opcode (custom), payload, cert digest,
# SNI, client IP, SKI, server IPv6, cert ID "42", function "sign", extra, span
# context "1:2:0:1", request context {"request_id":"r1"}, compliance region 1.
# Items 161, padding 852.
frame: complete 1024
decode: ok
canonical: yes
id: 4294967294
version: 1.0
opcode: 24
payload: 010203
cert-digest: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
sni: 6578616d706c652e636f6d
client-ip: 192.0.2.1
ski: a9993e364706816aba3e25717850c26c9cd0d89d
server-ip: 2001:db8::2
cert-id: 3432
custom-func-name: 7369676e
extra: beef
span-context: 313a323a303a31
req-context: 7b22726571756573745f6964223a227231227d
compliance-region: 01
"#,
    },
    Vector {
        name: "ok_empty_payload_item",
        hex: "01 00 03f8 00000001 | 11 0001 f1 | 12 0000 | 20 03ee 00*1006",
        expect: "# A ping whose payload item is present but empty: decodes as Some(empty), and the
# encoder writes the empty item back (items 7, padding 1006).
frame: complete 1024
decode: ok
canonical: yes
id: 1
version: 1.0
opcode: f1
payload: empty
",
    },
    Vector {
        name: "ok_padding_only_no_opcode",
        hex: "01 00 03f8 00000003 | 20 03f5 00*1013",
        expect: "# No opcode at all (a server answers 0x05 bad opcode); framing is fine.
frame: complete 1024
decode: ok
canonical: yes
id: 3
version: 1.0
",
    },
    Vector {
        name: "ok_empty_body",
        hex: "01 00 0000 00000004",
        expect: "# Header only, zero-length body: decodes with no items.
frame: complete 8
decode: ok
canonical: no
id: 4
version: 1.0
",
    },
    Vector {
        name: "ok_unpadded_request",
        hex: "01 00 003e 00000009
              | 11 0001 15
              | 12 0020 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
              | 04 0014 a9993e364706816aba3e25717850c26c9cd0d89d",
        expect: "# A request without padding must be accepted; body 4+35+23 = 62.
frame: complete 70
decode: ok
canonical: no
id: 9
version: 1.0
opcode: 15
payload: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
ski: a9993e364706816aba3e25717850c26c9cd0d89d
",
    },
    Vector {
        name: "ok_version_9_9",
        hex: "09 09 03f8 00000007 | 11 0001 f1 | 20 03f1 00*1009",
        expect: "# Version bytes are not checked on input: a 9.9 header is served normally.
frame: complete 1024
decode: ok
canonical: no
id: 7
version: 9.9
opcode: f1
",
    },
    Vector {
        name: "ok_unknown_tags_skipped",
        hex: "01 00 0012 00000005 | 11 0001 f1 | 7e 0003 aabbcc | 12 0002 1234 | ff 0000",
        expect: "# Unknown tags 0x7e (3 bytes) and 0xff (empty) are skipped; body 4+6+5+3 = 18.
frame: complete 26
decode: ok
canonical: no
id: 5
version: 1.0
opcode: f1
payload: 1234
",
    },
    Vector {
        name: "ok_items_out_of_order",
        hex: "01 00 001f 00000006 | 20 0001 00 | 04 0014 a9993e364706816aba3e25717850c26c9cd0d89d | 11 0001 15",
        expect: "# Item order is free on input: padding first, opcode last; body 4+23+4 = 31.
frame: complete 39
decode: ok
canonical: no
id: 6
version: 1.0
opcode: 15
ski: a9993e364706816aba3e25717850c26c9cd0d89d
",
    },
    Vector {
        name: "ok_stray_1_byte",
        hex: "01 00 000a 00000005 | 11 0001 f1 | 12 0002 1234 | ee",
        expect: "# One stray byte after the last item is ignored; body 4+5+1 = 10.
frame: complete 18
decode: ok
canonical: no
id: 5
version: 1.0
opcode: f1
payload: 1234
",
    },
    Vector {
        name: "ok_stray_2_bytes",
        hex: "01 00 000b 00000005 | 11 0001 f1 | 12 0002 1234 | ee ee",
        expect: "# Two stray bytes after the last item are ignored; body 4+5+2 = 11.
frame: complete 19
decode: ok
canonical: no
id: 5
version: 1.0
opcode: f1
payload: 1234
",
    },
    Vector {
        name: "ok_ski_19_bytes_is_no_ski",
        hex: "01 00 001a 00000005 | 11 0001 15 | 04 0013 a9993e364706816aba3e25717850c26c9cd0d8",
        expect: "# A 19-byte SKI is treated as no SKI (server answers 0x08); body 4+22 = 26.
frame: complete 34
decode: ok
canonical: no
id: 5
version: 1.0
opcode: 15
",
    },
    Vector {
        name: "ok_digest_31_bytes_ignored",
        hex: "01 00 0026 00000005 | 11 0001 03 | 01 001f ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015",
        expect: "# A certificate digest of 31 bytes is ignored; body 4+34 = 38.
frame: complete 46
decode: ok
canonical: no
id: 5
version: 1.0
opcode: 03
",
    },
    // -------------------------------------------------------------- failures
    Vector {
        name: "err_item_overrun",
        hex: "01 00 0010 00000001 | 11 0001 15 | 12 0020 aabbccddeeff001122",
        expect: "# The payload item announces 32 bytes but only 9 remain in the body (body 16).
frame: complete 24
decode: item-overrun tag=12 len=32 remaining=9
",
    },
    Vector {
        name: "err_duplicate_opcode",
        hex: "01 00 0008 00000001 | 11 0001 15 | 11 0001 15",
        expect: "# A known tag (opcode) twice.
frame: complete 16
decode: duplicate-tag tag=11
",
    },
    Vector {
        name: "err_duplicate_padding",
        hex: "01 00 000a 00000001 | 11 0001 f1 | 20 0000 | 20 0000",
        expect: "# Padding is a known tag too: two padding items are a framing error.
frame: complete 18
decode: duplicate-tag tag=20
",
    },
    Vector {
        name: "err_duplicate_ski_first_short",
        hex: "01 00 0031 00000001 | 11 0001 15
              | 04 0013 a9993e364706816aba3e25717850c26c9cd0d8
              | 04 0014 a9993e364706816aba3e25717850c26c9cd0d89d",
        expect: "# A wrong-length SKI still counts as a SKI item: a second SKI is a duplicate.
frame: complete 57
decode: duplicate-tag tag=04
",
    },
    Vector {
        name: "err_opcode_len_0",
        hex: "01 00 0003 00000001 | 11 0000",
        expect: "# The opcode item must be exactly 1 byte; here it is empty.
frame: complete 11
decode: bad-opcode-length len=0
",
    },
    Vector {
        name: "err_opcode_len_2",
        hex: "01 00 0005 00000001 | 11 0002 1515",
        expect: "# The opcode item must be exactly 1 byte; here it is 2.
frame: complete 13
decode: bad-opcode-length len=2
",
    },
    Vector {
        name: "err_client_ip_5_bytes",
        hex: "01 00 000c 00000001 | 11 0001 15 | 03 0005 c000020101",
        expect: "# Client IP must be 4 or 16 bytes; 5 is a framing error.
frame: complete 20
decode: bad-ip-length tag=03 len=5
",
    },
    Vector {
        name: "err_server_ip_3_bytes",
        hex: "01 00 000a 00000001 | 11 0001 15 | 05 0003 c63364",
        expect: "# Server IP must be 4 or 16 bytes; 3 is a framing error.
frame: complete 18
decode: bad-ip-length tag=05 len=3
",
    },
    Vector {
        name: "err_compliance_region_2_bytes",
        hex: "01 00 0009 00000001 | 11 0001 15 | 17 0002 0101",
        expect: "# Compliance region must be exactly 1 byte.
frame: complete 17
decode: bad-compliance-region-length len=2
",
    },
    Vector {
        name: "err_truncated_body",
        hex: "01 00 03f8 00000007 | 11 0001 f1 | 20 03f1 00*100",
        expect: "# The header announces 1016 body bytes; only 107 follow (115 bytes in all).
frame: need-more 909
decode: truncated expected=1024 got=115
",
    },
    Vector {
        name: "err_truncated_header",
        hex: "01 00 03",
        expect: "# Fewer than the 8 header bytes.
frame: need-more 5
decode: truncated expected=8 got=3
",
    },
    Vector {
        name: "err_body_over_limit",
        hex: "01 00 ffff 00000001 | 11 0001 f1",
        expect: "# The header announces a 65535-byte body; a reader limited to 16384 rejects it from
# the header alone, before buffering the body.
max-body-len: 16384
frame: body-too-long 65535 16384
decode: truncated expected=65543 got=12
",
    },
];

/// Parse the hex notation used by the table and by `.txt` values: hex byte
/// pairs, with whitespace and `|` as separators, and `XX*N` for byte XX
/// repeated N (decimal) times.
fn parse_hex(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for tok in s.split(|c: char| c.is_whitespace() || c == '|') {
        if tok.is_empty() {
            continue;
        }
        if let Some((b, n)) = tok.split_once('*') {
            let b = u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("bad byte {b:?}: {e}"));
            let n: usize = n.parse().unwrap_or_else(|e| panic!("bad count {n:?}: {e}"));
            out.resize(out.len() + n, b);
        } else {
            assert!(tok.len().is_multiple_of(2), "odd-length hex token {tok:?}");
            for i in (0..tok.len()).step_by(2) {
                let pair = &tok[i..i + 2];
                out.push(
                    u8::from_str_radix(pair, 16)
                        .unwrap_or_else(|e| panic!("bad hex {pair:?}: {e}")),
                );
            }
        }
    }
    out
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

#[test]
#[ignore = "writes protocol/testdata; run by hand after editing VECTORS"]
fn regenerate_golden_vectors() {
    let dir = testdata();
    std::fs::create_dir_all(&dir).unwrap();
    for v in VECTORS {
        std::fs::write(dir.join(format!("{}.bin", v.name)), parse_hex(v.hex)).unwrap();
        std::fs::write(dir.join(format!("{}.txt", v.name)), v.expect).unwrap();
    }
}

#[test]
fn golden_files_match_their_source() {
    let dir = testdata();
    let mut names = std::collections::BTreeSet::new();
    for v in VECTORS {
        assert!(names.insert(v.name), "vector {} listed twice", v.name);
        let bin = dir.join(format!("{}.bin", v.name));
        let txt = dir.join(format!("{}.txt", v.name));
        let on_disk = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert_eq!(
            on_disk,
            parse_hex(v.hex),
            "{} differs from the table: regenerate",
            bin.display()
        );
        let on_disk =
            std::fs::read_to_string(&txt).unwrap_or_else(|e| panic!("{}: {e}", txt.display()));
        assert_eq!(
            on_disk,
            v.expect,
            "{} differs from the table: regenerate",
            txt.display()
        );
    }
    // And nothing on disk that the table doesn't know (a stale vector).
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if let (Some(stem), Some("bin" | "txt")) = (
            p.file_stem().and_then(|s| s.to_str()),
            p.extension().and_then(|s| s.to_str()),
        ) {
            assert!(names.contains(stem), "{} is not in VECTORS", p.display());
        }
    }
}

/// The expectation file, parsed.
#[derive(Debug)]
struct Expect {
    fields: BTreeMap<String, String>,
}

impl Expect {
    fn parse(path: &Path) -> Expect {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut fields = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{}:{}: expected `key: value`", path.display(), n + 1));
            let old = fields.insert(k.trim().to_string(), v.trim().to_string());
            assert!(
                old.is_none(),
                "{}:{}: {k} given twice",
                path.display(),
                n + 1
            );
        }
        Expect { fields }
    }

    fn take(&mut self, k: &str) -> Option<String> {
        self.fields.remove(k)
    }

    fn bytes(&mut self, k: &str) -> Option<Vec<u8>> {
        self.take(k).map(|v| {
            if v == "empty" {
                Vec::new()
            } else {
                parse_hex(&v)
            }
        })
    }

    fn ip(&mut self, k: &str) -> Option<IpAddr> {
        self.take(k)
            .map(|v| v.parse().unwrap_or_else(|e| panic!("{k}: {v:?}: {e}")))
    }

    fn byte(&mut self, k: &str) -> Option<u8> {
        self.take(k)
            .map(|v| u8::from_str_radix(&v, 16).unwrap_or_else(|e| panic!("{k}: {v:?}: {e}")))
    }
}

/// The `.txt` spelling of a decode error (README.md lists the forms). The
/// match is exhaustive, so a new error variant must get a spelling here.
fn error_text(e: DecodeError) -> String {
    match e {
        DecodeError::Truncated { expected, got } => {
            format!("truncated expected={expected} got={got}")
        }
        DecodeError::ItemOverrun {
            tag,
            len,
            remaining,
        } => {
            format!(
                "item-overrun tag={:02x} len={len} remaining={remaining}",
                tag.0
            )
        }
        DecodeError::DuplicateTag(t) => format!("duplicate-tag tag={:02x}", t.0),
        DecodeError::BadOpcodeLength(n) => format!("bad-opcode-length len={n}"),
        DecodeError::BadIpLength { tag, len } => {
            format!("bad-ip-length tag={:02x} len={len}", tag.0)
        }
        DecodeError::BadComplianceRegionLength(n) => {
            format!("bad-compliance-region-length len={n}")
        }
    }
}

fn frame_text(r: Result<FrameStatus, FrameError>) -> String {
    match r {
        Ok(FrameStatus::NeedMore(n)) => format!("need-more {n}"),
        Ok(FrameStatus::Complete { len, .. }) => format!("complete {len}"),
        Err(FrameError::BodyTooLong { announced, limit }) => {
            format!("body-too-long {announced} {limit}")
        }
    }
}

/// Check one vector; returns the decode outcome's kind (`ok` or the error's
/// first word) so the caller can check every failure mode is covered.
fn check_vector(bin: &Path) -> String {
    let name = bin.display();
    let bytes = std::fs::read(bin).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut ex = Expect::parse(&bin.with_extension("txt"));

    let limit = ex
        .take("max-body-len")
        .map_or(MAX_BODY_LEN, |v| v.parse().unwrap());
    let want_frame = ex
        .take("frame")
        .unwrap_or_else(|| panic!("{name}: no `frame:` line"));
    assert_eq!(
        frame_text(frame::check(&bytes, limit)),
        want_frame,
        "{name}: frame::check"
    );

    let want_decode = ex
        .take("decode")
        .unwrap_or_else(|| panic!("{name}: no `decode:` line"));
    let decoded = Message::decode(&bytes);
    if want_decode != "ok" {
        let err = decoded.expect_err(&format!("{name}: decoded but {want_decode} was expected"));
        assert_eq!(error_text(err), want_decode, "{name}: decode error");
        assert!(
            ex.fields.is_empty(),
            "{name}: fields listed for a failing vector: {ex:?}"
        );
        return want_decode.split_whitespace().next().unwrap().to_string();
    }
    let m = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));

    // Build the expected message from the file; unlisted fields are absent.
    let canonical = match ex.take("canonical").as_deref() {
        Some("yes") => true,
        Some("no") => false,
        other => panic!("{name}: canonical must be yes or no, got {other:?}"),
    };
    let id: u32 = ex
        .take("id")
        .unwrap_or_else(|| panic!("{name}: no id"))
        .parse()
        .unwrap();
    let version = ex
        .take("version")
        .unwrap_or_else(|| panic!("{name}: no version"));
    let (maj, min) = version.split_once('.').unwrap();
    let payload = ex.bytes("payload");
    let cert_digest = ex.bytes("cert-digest");
    let sni = ex.bytes("sni");
    let ski = ex.bytes("ski");
    let cert_id = ex.bytes("cert-id");
    let func = ex.bytes("custom-func-name");
    let extra = ex.bytes("extra");
    let span = ex.bytes("span-context");
    let req = ex.bytes("req-context");
    let want = Message {
        id,
        version: (maj.parse().unwrap(), min.parse().unwrap()),
        opcode: ex.byte("opcode").map(Op),
        payload: payload.as_deref(),
        cert_digest: cert_digest
            .as_deref()
            .map(|d| d.try_into().expect("cert-digest: 32 bytes")),
        sni: sni.as_deref(),
        client_ip: ex.ip("client-ip"),
        ski: ski.as_deref().map(|s| s.try_into().expect("ski: 20 bytes")),
        server_ip: ex.ip("server-ip"),
        cert_id: cert_id.as_deref(),
        custom_func_name: func.as_deref(),
        extra: extra.as_deref(),
        span_context: span.as_deref(),
        req_context: req.as_deref(),
        compliance_region: ex.byte("compliance-region"),
    };
    assert!(
        ex.fields.is_empty(),
        "{name}: unknown expectation keys {:?}",
        ex.fields.keys()
    );
    assert_eq!(m, want, "{name}: decoded message");

    let mut out = Vec::new();
    m.encode(&mut out).unwrap();
    if canonical {
        assert_eq!(out, bytes, "{name}: encode(decode(bytes)) != bytes");
        // Response-shaped messages must also come out of the response encoder as-is.
        let resp_class = m
            .opcode
            .is_some_and(|op| op.class() == OpClass::ResponseClass);
        let only_op_payload = Message {
            id: m.id,
            version: m.version,
            opcode: m.opcode,
            payload: m.payload,
            ..Message::default()
        } == m;
        if resp_class && only_op_payload && m.payload != Some(&[]) {
            let mut r = Vec::new();
            encode_response(&mut r, m.id, m.opcode.unwrap(), m.payload.unwrap_or(&[])).unwrap();
            assert_eq!(r, bytes, "{name}: encode_response");
        }
    } else {
        // Not byte-canonical, but what we write must decode to the same items.
        let again = Message::decode(&out).unwrap();
        assert_eq!(
            again,
            Message {
                version: (1, 0),
                ..m
            },
            "{name}: re-encode"
        );
    }
    "ok".to_string()
}

#[test]
fn every_golden_vector_decodes_as_expected() {
    let mut kinds = std::collections::BTreeSet::new();
    let mut n = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(testdata())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    paths.sort();
    for p in &paths {
        kinds.insert(check_vector(p));
        n += 1;
    }
    assert!(
        n >= 30,
        "only {n} vectors found in {}",
        testdata().display()
    );
    // Every failure mode the decoder has (and the frame limit) has a vector.
    for k in [
        "ok",
        "truncated",
        "item-overrun",
        "duplicate-tag",
        "bad-opcode-length",
        "bad-ip-length",
        "bad-compliance-region-length",
    ] {
        assert!(kinds.contains(k), "no golden vector for {k}");
    }
    assert!(paths.iter().any(|p| {
        Expect::parse(&p.with_extension("txt"))
            .take("frame")
            .is_some_and(|f| f.starts_with("body-too-long"))
    }));
}
