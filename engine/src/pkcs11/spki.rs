//! Public keys read from a token, turned into DER SubjectPublicKeyInfo, and
//! the DER ECDSA signature built from PKCS#11's raw `r‖s`.
//!
//! Owns: the few DER shapes keycore writes (SPKI for RSA, EC and Ed25519;
//! `SEQUENCE { r, s }`) and the parsing of `CKA_EC_PARAMS` / `CKA_EC_POINT`.
//! Must not: talk to a token; everything here is pure and unit-tested.

use crate::keys::KeyKind;

/// DER OID body of rsaEncryption (1.2.840.113549.1.1.1).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// DER OID body of id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER OID body of prime256v1.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID body of secp384r1.
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER OID body of secp521r1.
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
/// DER OID body of id-Ed25519 (1.3.101.112).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Append a DER TLV.
fn tlv(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let n = value.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

/// Append an unsigned big-endian integer as a DER INTEGER (minimal form).
fn der_uint(be: &[u8], out: &mut Vec<u8>) {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let v = &be[start..];
    let mut body = Vec::with_capacity(v.len() + 1);
    if v.is_empty() || v[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(v);
    tlv(0x02, &body, out);
}

fn spki(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(key);
    let mut body = Vec::with_capacity(alg.len() + bits.len() + 8);
    tlv(0x30, alg, &mut body);
    tlv(0x03, &bits, &mut body);
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv(0x30, &body, &mut out);
    out
}

/// SPKI of an RSA key from `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`; also its
/// size in bits.
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let start = modulus
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus.len());
    let m = &modulus[start..];
    if m.is_empty() || exponent.iter().all(|&b| b == 0) {
        return Err("RSA key with an empty modulus or exponent".into());
    }
    let bits = m.len() * 8 - m[0].leading_zeros() as usize;
    let mut rsa = Vec::with_capacity(m.len() + exponent.len() + 12);
    let mut ints = Vec::new();
    der_uint(m, &mut ints);
    der_uint(exponent, &mut ints);
    tlv(0x30, &ints, &mut rsa);
    let mut alg = Vec::new();
    tlv(0x06, OID_RSA, &mut alg);
    tlv(0x05, &[], &mut alg);
    Ok((spki(&alg, &rsa), bits))
}

/// Read one DER TLV from the front of `b`: (tag, value, rest).
fn read_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l, b) = b.split_first()?;
    let (len, b) = if l < 0x80 {
        (l as usize, b)
    } else {
        let n = (l & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize);
        (len, &b[n..])
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// The point from `CKA_EC_POINT`: the spec says DER OCTET STRING, some tokens
/// return the raw point. `raw_len` is the expected raw length.
fn unwrap_point(point: &[u8], raw_len: usize) -> Option<&[u8]> {
    if point.len() == raw_len {
        return Some(point);
    }
    match read_tlv(point) {
        Some((0x04, v, [])) if v.len() == raw_len => Some(v),
        _ => None,
    }
}

/// SPKI and kind of an EC key (`CKK_EC`) from `CKA_EC_PARAMS` and
/// `CKA_EC_POINT`. Only the named curves P-256, P-384 and P-521.
pub fn ec_spki(params: &[u8], point: &[u8]) -> Result<(Vec<u8>, KeyKind), String> {
    let oid = match read_tlv(params) {
        Some((0x06, oid, [])) => oid,
        _ => return Err("CKA_EC_PARAMS is not a named-curve OID".into()),
    };
    let (kind, coord) = if oid == OID_P256 {
        (KeyKind::EcdsaP256, 32)
    } else if oid == OID_P384 {
        (KeyKind::EcdsaP384, 48)
    } else if oid == OID_P521 {
        (KeyKind::EcdsaP521, 66)
    } else {
        return Err("EC curve is not P-256, P-384 or P-521".into());
    };
    let p = unwrap_point(point, 2 * coord + 1)
        .filter(|p| p[0] == 0x04)
        .ok_or("CKA_EC_POINT is not an uncompressed point of the key's curve")?;
    let mut alg = Vec::new();
    tlv(0x06, OID_EC, &mut alg);
    tlv(0x06, oid, &mut alg);
    Ok((spki(&alg, p), kind))
}

/// SPKI of an Ed25519 key (`CKK_EC_EDWARDS`). `CKA_EC_PARAMS` may be the OID
/// or the PrintableString `edwards25519` (PKCS#11 3.0 allows both).
pub fn ed25519_spki(params: &[u8], point: &[u8]) -> Result<Vec<u8>, String> {
    let ok = match read_tlv(params) {
        Some((0x06, oid, [])) => oid == OID_ED25519,
        Some((0x13, name, [])) => name == b"edwards25519",
        _ => false,
    };
    if !ok {
        return Err("CKA_EC_PARAMS of the EdDSA key is not Ed25519".into());
    }
    let p = unwrap_point(point, 32).ok_or("CKA_EC_POINT is not a 32-byte Ed25519 key")?;
    let mut alg = Vec::new();
    tlv(0x06, OID_ED25519, &mut alg);
    Ok(spki(&alg, p))
}

/// Kind and normalised SPKI from a DER SubjectPublicKeyInfo a token gives
/// (`CKA_PUBLIC_KEY_INFO`, PKCS#11 v2.40), rebuilt through the functions
/// above so a key read this way has byte for byte the SPKI (and SKI) it
/// would have when read from its public key object.
pub fn spki_from_info(der: &[u8]) -> Result<(Vec<u8>, KeyKind), String> {
    let bad = || "CKA_PUBLIC_KEY_INFO is not a DER SubjectPublicKeyInfo".to_string();
    let (0x30, body, []) = read_tlv(der).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x30, alg, rest) = read_tlv(body).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x03, bits, []) = read_tlv(rest).ok_or_else(bad)? else {
        return Err(bad());
    };
    let key = match bits.split_first() {
        Some((0, k)) => k,
        _ => return Err(bad()),
    };
    let (0x06, oid, params) = read_tlv(alg).ok_or_else(bad)? else {
        return Err(bad());
    };
    if oid == OID_EC {
        let mut point = Vec::with_capacity(key.len() + 2);
        tlv(0x04, key, &mut point);
        ec_spki(params, &point)
    } else if oid == OID_ED25519 {
        let mut p = Vec::new();
        tlv(0x06, OID_ED25519, &mut p);
        Ok((ed25519_spki(&p, key)?, KeyKind::Ed25519))
    } else if oid == OID_RSA {
        let (0x30, ints, []) = read_tlv(key).ok_or_else(bad)? else {
            return Err(bad());
        };
        let (0x02, n, rest) = read_tlv(ints).ok_or_else(bad)? else {
            return Err(bad());
        };
        let (0x02, e, []) = read_tlv(rest).ok_or_else(bad)? else {
            return Err(bad());
        };
        let (spki, bits) = rsa_spki(n, e)?;
        Ok((spki, KeyKind::Rsa { bits }))
    } else {
        Err("CKA_PUBLIC_KEY_INFO: not an RSA, EC or Ed25519 key".into())
    }
}

/// DER `SEQUENCE { r INTEGER, s INTEGER }` from PKCS#11's `r‖s` (equal
/// halves). `None` if the length is odd or zero.
pub fn ecdsa_der_from_raw(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut ints = Vec::with_capacity(raw.len() + 6);
    der_uint(r, &mut ints);
    der_uint(s, &mut ints);
    tlv(0x30, &ints, out);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    #[test]
    fn rsa_spki_matches_aws_lc() {
        // aws-lc-rs gives the DER RSAPublicKey; our SPKI must wrap exactly it.
        let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pk = kp.public_key();
        let rsa_der = pk.as_ref();
        // Pull n and e back out of RSAPublicKey.
        let (_, seq, _) = read_tlv(rsa_der).unwrap();
        let (_, n, rest) = read_tlv(seq).unwrap();
        let (_, e, _) = read_tlv(rest).unwrap();
        let (spki_der, bits) = rsa_spki(n, e).unwrap();
        assert_eq!(bits, 2048);
        let ski = keycore_protocol::ski_from_spki(&spki_der).unwrap();
        assert_eq!(ski, keycore_protocol::ski_from_key_bits(rsa_der));
        // Leading zeros in the token's modulus do not change the key.
        let mut padded = vec![0, 0];
        padded.extend_from_slice(n);
        assert_eq!(rsa_spki(&padded, e).unwrap().0, spki_der);
        assert!(rsa_spki(&[], e).is_err());
    }

    #[test]
    fn ec_spki_from_octet_string_and_raw_point() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let mut params = Vec::new();
        tlv(0x06, OID_P256, &mut params);
        let mut wrapped = Vec::new();
        tlv(0x04, &point, &mut wrapped);
        let (a, kind) = ec_spki(&params, &wrapped).unwrap();
        let (b, _) = ec_spki(&params, &point).unwrap();
        assert_eq!(kind, KeyKind::EcdsaP256);
        assert_eq!(a, b);
        assert_eq!(
            keycore_protocol::ski_from_spki(&a).unwrap(),
            keycore_protocol::ski_from_key_bits(&point)
        );
        assert!(ec_spki(&params, &point[..10]).is_err());
        let mut other = Vec::new();
        tlv(0x06, &[0x2b, 0x65, 0x6e], &mut other);
        assert!(ec_spki(&other, &point).is_err());
    }

    #[test]
    fn public_key_info_round_trips_every_kind() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let mut params = Vec::new();
        tlv(0x06, OID_P256, &mut params);
        let (ec, _) = ec_spki(&params, kp.public_key().as_ref()).unwrap();
        assert_eq!(
            spki_from_info(&ec).unwrap(),
            (ec.clone(), KeyKind::EcdsaP256)
        );
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let (_, seq, _) = read_tlv(rsa.public_key().as_ref()).unwrap();
        let (_, n, rest) = read_tlv(seq).unwrap();
        let (_, e, _) = read_tlv(rest).unwrap();
        let (r, bits) = rsa_spki(n, e).unwrap();
        assert_eq!(
            spki_from_info(&r).unwrap(),
            (r.clone(), KeyKind::Rsa { bits })
        );
        let mut oid = Vec::new();
        tlv(0x06, OID_ED25519, &mut oid);
        let ed = ed25519_spki(&oid, &[9u8; 32]).unwrap();
        assert_eq!(spki_from_info(&ed).unwrap(), (ed.clone(), KeyKind::Ed25519));
        assert!(spki_from_info(&ec[..ec.len() - 1]).is_err());
        assert!(spki_from_info(&[]).is_err());
    }

    #[test]
    fn ed25519_params_forms() {
        let key = [7u8; 32];
        let mut oid = Vec::new();
        tlv(0x06, OID_ED25519, &mut oid);
        let mut name = Vec::new();
        tlv(0x13, b"edwards25519", &mut name);
        let mut wrapped = Vec::new();
        tlv(0x04, &key, &mut wrapped);
        let a = ed25519_spki(&oid, &wrapped).unwrap();
        assert_eq!(a, ed25519_spki(&name, &key).unwrap());
        assert_eq!(a.len(), 44);
        assert!(ed25519_spki(&oid, &[1, 2]).is_err());
    }

    #[test]
    fn ecdsa_der_minimal_integers() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[32] = 0x00;
        raw[33] = 0x01; // s has leading zeros to strip
        let mut out = Vec::new();
        ecdsa_der_from_raw(&raw, &mut out).unwrap();
        let (t, seq, rest) = read_tlv(&out).unwrap();
        assert_eq!((t, rest.len()), (0x30, 0));
        let (_, r, rest) = read_tlv(seq).unwrap();
        let (_, s, _) = read_tlv(rest).unwrap();
        assert_eq!(r.len(), 33);
        assert_eq!(r[0], 0);
        assert_eq!(s.len(), 31);
        assert!(ecdsa_der_from_raw(&[1, 2, 3], &mut out).is_none());
    }

    #[test]
    fn long_lengths_encode() {
        let mut out = Vec::new();
        tlv(0x04, &[0u8; 300], &mut out);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(read_tlv(&out).unwrap().1.len(), 300);
    }
}
