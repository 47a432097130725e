//! Cloud key URIs: what a `uri:` key store names, parsed once at start-up.
//!
//! Owns: the accepted forms (Azure Key Vault / Managed HSM key URLs in every
//! Azure cloud, Google Cloud KMS key version names, AWS KMS key and alias
//! ARNs) and the per-cloud facts that follow from a URI (login authority,
//! token scope, default endpoint).
//! Must not: do I/O. Errors name the URI and the part at fault.

use std::fmt;

/// Longest URI accepted; real ones are under 300 bytes.
pub const MAX_URI_LEN: usize = 1024;

/// A key URI that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key URI {uri:?}: {part}: {reason}")]
pub struct UriError {
    /// The URI as given.
    pub uri: String,
    /// Which part is at fault ("host", "key version", "region", ...).
    pub part: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn err(uri: &str, part: &'static str, reason: impl Into<String>) -> UriError {
    UriError {
        uri: uri.chars().take(MAX_URI_LEN).collect(),
        part,
        reason: reason.into(),
    }
}

/// Which Azure cloud a vault lives in (decides login authority and scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AzureCloud {
    /// Azure public cloud.
    Public,
    /// Azure operated by 21Vianet (China).
    China,
    /// Azure US Government.
    UsGov,
    /// Azure Germany (legacy sovereign cloud).
    Germany,
}

impl AzureCloud {
    /// Microsoft Entra ID (Azure AD) authority host of this cloud.
    pub fn authority(self) -> &'static str {
        match self {
            AzureCloud::Public => "https://login.microsoftonline.com",
            AzureCloud::China => "https://login.chinacloudapi.cn",
            AzureCloud::UsGov => "https://login.microsoftonline.us",
            AzureCloud::Germany => "https://login.microsoftonline.de",
        }
    }
}

/// Key Vault (vault) or Managed HSM (pool): same key API, different token
/// audience.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AzureKind {
    /// `*.vault.azure.net` and equivalents.
    Vault,
    /// `*.managedhsm.azure.net` and equivalents.
    ManagedHsm,
}

/// (domain suffix, cloud, kind) for every accepted Azure host.
const AZURE_DOMAINS: &[(&str, AzureCloud, AzureKind)] = &[
    ("vault.azure.net", AzureCloud::Public, AzureKind::Vault),
    (
        "managedhsm.azure.net",
        AzureCloud::Public,
        AzureKind::ManagedHsm,
    ),
    ("vault.azure.cn", AzureCloud::China, AzureKind::Vault),
    (
        "managedhsm.azure.cn",
        AzureCloud::China,
        AzureKind::ManagedHsm,
    ),
    (
        "vault.usgovcloudapi.net",
        AzureCloud::UsGov,
        AzureKind::Vault,
    ),
    (
        "managedhsm.usgovcloudapi.net",
        AzureCloud::UsGov,
        AzureKind::ManagedHsm,
    ),
    (
        "vault.microsoftazure.de",
        AzureCloud::Germany,
        AzureKind::Vault,
    ),
];

/// An Azure key version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AzureKey {
    /// `https://<host>`, the default endpoint.
    pub vault_url: String,
    /// Vault or HSM pool name (first label of the host).
    pub vault: String,
    /// Key name.
    pub name: String,
    /// Key version (pinned: a rotated key must not change under a SKI).
    pub version: String,
    /// Cloud.
    pub cloud: AzureCloud,
    /// Vault or Managed HSM.
    pub kind: AzureKind,
    /// Resource the token is for, e.g. `https://vault.azure.net`.
    pub resource: String,
}

impl AzureKey {
    /// OAuth scope for the v2 token endpoint (the token request builds the
    /// same string; kept for the test that pins it).
    #[cfg(test)]
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource)
    }
}

/// A Google Cloud KMS key version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GcpKey {
    /// The full resource name `projects/.../cryptoKeyVersions/<v>`.
    pub name: String,
    /// Project.
    pub project: String,
    /// Location (region or multi-region).
    pub location: String,
}

/// What an AWS ARN points at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AwsKeyId {
    /// `key/<id>`: a key ID (UUID or multi-Region `mrk-...`).
    Key(String),
    /// `alias/<name>`.
    Alias(String),
}

/// An AWS KMS key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AwsKey {
    /// The ARN as given (sent as `KeyId`).
    pub arn: String,
    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: String,
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// 12-digit account.
    pub account: String,
    /// Key or alias.
    pub id: AwsKeyId,
}

impl AwsKey {
    /// Default endpoint of the regional KMS service.
    pub fn default_endpoint(&self) -> String {
        let suffix = if self.partition == "aws-cn" {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        format!("https://kms.{}.{suffix}", self.region)
    }
}

/// A parsed cloud key URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyUri {
    /// Azure Key Vault / Managed HSM.
    Azure(AzureKey),
    /// Google Cloud KMS.
    Gcp(GcpKey),
    /// AWS KMS.
    Aws(AwsKey),
}

impl KeyUri {
    /// Parse any of the accepted forms.
    pub fn parse(uri: &str) -> Result<KeyUri, UriError> {
        if uri.len() > MAX_URI_LEN {
            return Err(err(
                uri,
                "length",
                format!("longer than {MAX_URI_LEN} bytes"),
            ));
        }
        if uri.starts_with("https://") {
            parse_azure(uri).map(KeyUri::Azure)
        } else if uri.starts_with("projects/") {
            parse_gcp(uri).map(KeyUri::Gcp)
        } else if uri.starts_with("arn:") {
            parse_aws(uri).map(KeyUri::Aws)
        } else {
            Err(err(
                uri,
                "scheme",
                "expected https://<vault>.vault.azure.net/keys/..., projects/... or arn:aws:kms:...",
            ))
        }
    }

    /// Which service, for logs and metrics labels.
    pub fn service(&self) -> &'static str {
        match self {
            KeyUri::Azure(_) => "azure",
            KeyUri::Gcp(_) => "gcp",
            KeyUri::Aws(_) => "aws",
        }
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyUri::Azure(k) => write!(f, "{}/keys/{}/{}", k.vault_url, k.name, k.version),
            KeyUri::Gcp(k) => f.write_str(&k.name),
            KeyUri::Aws(k) => f.write_str(&k.arn),
        }
    }
}

fn all(s: &str, ok: impl Fn(char) -> bool) -> bool {
    !s.is_empty() && s.chars().all(ok)
}

fn parse_azure(uri: &str) -> Result<AzureKey, UriError> {
    let rest = &uri["https://".len()..];
    if rest.contains(['?', '#']) {
        return Err(err(uri, "query", "no query string or fragment is allowed"));
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.contains('@') {
        return Err(err(uri, "host", "user info is not allowed"));
    }
    if host.contains(':') {
        return Err(err(
            uri,
            "host",
            "a port is not allowed (set KEYCORE_AZURE_ENDPOINT to reach another address)",
        ));
    }
    let host_lc = host.to_ascii_lowercase();
    let Some((vault, suffix)) = host_lc.split_once('.') else {
        return Err(err(
            uri,
            "host",
            "expected <vault>.vault.azure.net or <hsm>.managedhsm.azure.net",
        ));
    };
    let Some(&(domain, cloud, kind)) = AZURE_DOMAINS.iter().find(|d| d.0 == suffix) else {
        return Err(err(
            uri,
            "host",
            format!(
                "{host} is not a Key Vault or Managed HSM host (known domains: {})",
                AZURE_DOMAINS
                    .iter()
                    .map(|d| d.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    // Vault names: 3-24 characters, letters, digits and hyphens, starting
    // with a letter (Azure naming rules); HSM pool names follow the same.
    if !(3..=24).contains(&vault.len())
        || !vault.starts_with(|c: char| c.is_ascii_alphabetic())
        || !all(vault, |c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(err(
            uri,
            "vault name",
            format!("{vault:?}: 3-24 letters, digits or hyphens, starting with a letter"),
        ));
    }
    let segs: Vec<&str> = path.split('/').collect();
    match segs.as_slice() {
        ["keys", name, version] | ["keys", name, version, ""] => {
            if name.len() > 127 || !all(name, |c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(err(
                    uri,
                    "key name",
                    format!("{name:?}: 1-127 letters, digits or hyphens"),
                ));
            }
            if version.len() > 64 || !all(version, |c| c.is_ascii_alphanumeric()) {
                return Err(err(
                    uri,
                    "key version",
                    format!("{version:?}: expected the version ID (32 hex digits)"),
                ));
            }
            Ok(AzureKey {
                vault_url: format!("https://{host_lc}"),
                vault: vault.to_owned(),
                name: (*name).to_owned(),
                version: (*version).to_owned(),
                cloud,
                kind,
                // The token audience is the domain itself (https://vault.azure.net,
                // https://managedhsm.azure.net, ...).
                resource: format!("https://{domain}"),
            })
        }
        ["keys", _] => Err(err(
            uri,
            "key version",
            "missing: pin the version (https://<vault>.vault.azure.net/keys/<name>/<version>) so a rotated key cannot change under its SKI",
        )),
        _ => Err(err(uri, "path", "expected /keys/<name>/<version>")),
    }
}

fn parse_gcp(uri: &str) -> Result<GcpKey, UriError> {
    let segs: Vec<&str> = uri.split('/').collect();
    let names = [
        "projects",
        "locations",
        "keyRings",
        "cryptoKeys",
        "cryptoKeyVersions",
    ];
    if segs.len() != 10 {
        return Err(err(
            uri,
            "path",
            "expected projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>/cryptoKeyVersions/<v>",
        ));
    }
    for (i, want) in names.iter().enumerate() {
        if segs[2 * i] != *want {
            return Err(err(
                uri,
                "path",
                format!(
                    "segment {} is {:?}, expected {want:?}",
                    2 * i + 1,
                    segs[2 * i]
                ),
            ));
        }
    }
    let (project, location, ring, key, version) = (segs[1], segs[3], segs[5], segs[7], segs[9]);
    // Project IDs: lowercase letters, digits, hyphens; domain-scoped ones
    // carry "example.com:" in front.
    if project.len() > 100
        || !all(project, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')
        })
    {
        return Err(err(
            uri,
            "project",
            format!("{project:?}: not a project ID"),
        ));
    }
    if location.len() > 63
        || !all(location, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })
    {
        return Err(err(
            uri,
            "location",
            format!("{location:?}: not a location"),
        ));
    }
    let id_ok =
        |s: &str| s.len() <= 63 && all(s, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !id_ok(ring) {
        return Err(err(
            uri,
            "key ring",
            format!("{ring:?}: 1-63 letters, digits, _ or -"),
        ));
    }
    if !id_ok(key) {
        return Err(err(
            uri,
            "crypto key",
            format!("{key:?}: 1-63 letters, digits, _ or -"),
        ));
    }
    if version.len() > 10 || !all(version, |c| c.is_ascii_digit()) || version == "0" {
        return Err(err(
            uri,
            "key version",
            format!("{version:?}: expected a version number (1, 2, ...)"),
        ));
    }
    Ok(GcpKey {
        name: uri.to_owned(),
        project: project.to_owned(),
        location: location.to_owned(),
    })
}

fn parse_aws(uri: &str) -> Result<AwsKey, UriError> {
    let parts: Vec<&str> = uri.splitn(6, ':').collect();
    if parts.len() != 6 {
        return Err(err(
            uri,
            "arn",
            "expected arn:aws:kms:<region>:<account>:key/<id>",
        ));
    }
    let (partition, service, region, account, resource) =
        (parts[1], parts[2], parts[3], parts[4], parts[5]);
    if !matches!(partition, "aws" | "aws-cn" | "aws-us-gov") {
        return Err(err(
            uri,
            "partition",
            format!("{partition:?}: expected aws, aws-cn or aws-us-gov"),
        ));
    }
    if service != "kms" {
        return Err(err(uri, "service", format!("{service:?}: expected kms")));
    }
    if region.len() > 32
        || !all(region, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })
    {
        return Err(err(
            uri,
            "region",
            format!("{region:?}: expected a region such as us-east-1"),
        ));
    }
    if account.len() != 12 || !all(account, |c| c.is_ascii_digit()) {
        return Err(err(
            uri,
            "account",
            format!("{account:?}: expected 12 digits"),
        ));
    }
    let id = if let Some(id) = resource.strip_prefix("key/") {
        let uuid_ok = id.len() == 36
            && id.chars().enumerate().all(|(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        let mrk_ok = id
            .strip_prefix("mrk-")
            .is_some_and(|h| h.len() == 32 && all(h, |c| c.is_ascii_hexdigit()));
        if !uuid_ok && !mrk_ok {
            return Err(err(
                uri,
                "key id",
                format!("{id:?}: expected a key ID (UUID) or a multi-Region key ID (mrk-...)"),
            ));
        }
        AwsKeyId::Key(id.to_owned())
    } else if let Some(name) = resource.strip_prefix("alias/") {
        if name.len() > 250
            || name.starts_with("aws/")
            || !all(name, |c| {
                c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-')
            })
        {
            return Err(err(
                uri,
                "alias",
                format!("{name:?}: letters, digits, /, _ or -, not an aws/ alias"),
            ));
        }
        AwsKeyId::Alias(name.to_owned())
    } else {
        return Err(err(
            uri,
            "resource",
            format!("{resource:?}: expected key/<id> or alias/<name>"),
        ));
    };
    Ok(AwsKey {
        arn: uri.to_owned(),
        partition: partition.to_owned(),
        region: region.to_owned(),
        account: account.to_owned(),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(uri: &str) -> &'static str {
        KeyUri::parse(uri).unwrap_err().part
    }

    #[test]
    fn azure_forms_in_every_cloud() {
        let cases = [
            (
                "https://kv1.vault.azure.net/keys/k/0123abcd",
                AzureCloud::Public,
                AzureKind::Vault,
                "https://vault.azure.net",
            ),
            (
                "https://pool-1.managedhsm.azure.net/keys/tls-key/ff00",
                AzureCloud::Public,
                AzureKind::ManagedHsm,
                "https://managedhsm.azure.net",
            ),
            (
                "https://kv1.vault.azure.cn/keys/k/1",
                AzureCloud::China,
                AzureKind::Vault,
                "https://vault.azure.cn",
            ),
            (
                "https://kv1.managedhsm.azure.cn/keys/k/1",
                AzureCloud::China,
                AzureKind::ManagedHsm,
                "https://managedhsm.azure.cn",
            ),
            (
                "https://kv1.vault.usgovcloudapi.net/keys/k/1",
                AzureCloud::UsGov,
                AzureKind::Vault,
                "https://vault.usgovcloudapi.net",
            ),
            (
                "https://kv1.managedhsm.usgovcloudapi.net/keys/k/1/",
                AzureCloud::UsGov,
                AzureKind::ManagedHsm,
                "https://managedhsm.usgovcloudapi.net",
            ),
            (
                "https://KV1.vault.microsoftazure.de/keys/k/1",
                AzureCloud::Germany,
                AzureKind::Vault,
                "https://vault.microsoftazure.de",
            ),
        ];
        for (uri, cloud, kind, resource) in cases {
            let KeyUri::Azure(k) = KeyUri::parse(uri).unwrap() else {
                panic!("{uri}")
            };
            assert_eq!((k.cloud, k.kind), (cloud, kind), "{uri}");
            assert_eq!(k.resource, resource, "{uri}");
            assert_eq!(k.scope(), format!("{resource}/.default"));
            assert!(uri
                .to_ascii_lowercase()
                .starts_with(&format!("https://{}.", k.vault)));
        }
        let KeyUri::Azure(k) =
            KeyUri::parse("https://kv1.vault.azure.net/keys/my-key/0123abcd").unwrap()
        else {
            unreachable!()
        };
        assert_eq!(k.vault_url, "https://kv1.vault.azure.net");
        assert_eq!(
            (k.name.as_str(), k.version.as_str()),
            ("my-key", "0123abcd")
        );
    }

    #[test]
    fn azure_errors_name_the_part() {
        assert_eq!(part("https://kv1.vault.azure.net/keys/k"), "key version");
        assert_eq!(part("https://kv1.vault.azure.net/keys/k/"), "key version");
        assert_eq!(part("https://kv1.vault.azure.net/secrets/k/1"), "path");
        assert_eq!(part("https://kv1.vault.azure.net/keys/k/1/extra"), "path");
        assert_eq!(part("https://kv1.example.com/keys/k/1"), "host");
        assert_eq!(part("https://kv1.vault.azure.net:8443/keys/k/1"), "host");
        assert_eq!(part("https://u@kv1.vault.azure.net/keys/k/1"), "host");
        assert_eq!(part("https://1kv.vault.azure.net/keys/k/1"), "vault name");
        assert_eq!(part("https://kv.vault.azure.net/keys/k/1"), "vault name");
        assert_eq!(part("https://kv1.vault.azure.net/keys/k_1/1"), "key name");
        assert_eq!(
            part("https://kv1.vault.azure.net/keys/k/1.2"),
            "key version"
        );
        assert_eq!(
            part("https://kv1.vault.azure.net/keys/k/1?api-version=7.4"),
            "query"
        );
        let e = KeyUri::parse("https://kv1.vault.azure.net/keys/k").unwrap_err();
        assert!(
            e.to_string().contains("https://kv1.vault.azure.net/keys/k"),
            "{e}"
        );
    }

    #[test]
    fn gcp_form_and_errors() {
        let uri = "projects/my-proj/locations/europe-west1/keyRings/ring_1/cryptoKeys/tls-key/cryptoKeyVersions/3";
        let KeyUri::Gcp(k) = KeyUri::parse(uri).unwrap() else {
            panic!()
        };
        assert_eq!(k.name, uri);
        assert_eq!(
            (k.project.as_str(), k.location.as_str()),
            ("my-proj", "europe-west1")
        );
        assert_eq!(
            part("projects/p/locations/l/keyRings/r/cryptoKeys/k"),
            "path"
        );
        assert_eq!(
            part("projects/p/locations/l/keyRing/r/cryptoKeys/k/cryptoKeyVersions/1"),
            "path"
        );
        assert_eq!(
            part("projects/P!/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"),
            "project"
        );
        assert_eq!(
            part("projects/p/locations/EU/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"),
            "location"
        );
        assert_eq!(
            part("projects/p/locations/l/keyRings/r r/cryptoKeys/k/cryptoKeyVersions/1"),
            "key ring"
        );
        assert_eq!(
            part("projects/p/locations/l/keyRings/r/cryptoKeys/k.1/cryptoKeyVersions/1"),
            "crypto key"
        );
        assert_eq!(
            part("projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/latest"),
            "key version"
        );
        assert_eq!(
            part("projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/0"),
            "key version"
        );
    }

    #[test]
    fn aws_key_and_alias_arns() {
        let uri = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let KeyUri::Aws(k) = KeyUri::parse(uri).unwrap() else {
            panic!()
        };
        assert_eq!(k.region, "eu-west-1");
        assert_eq!(k.account, "111122223333");
        assert_eq!(
            k.id,
            AwsKeyId::Key("1234abcd-12ab-34cd-56ef-1234567890ab".into())
        );
        assert_eq!(k.default_endpoint(), "https://kms.eu-west-1.amazonaws.com");
        let KeyUri::Aws(k) =
            KeyUri::parse("arn:aws-cn:kms:cn-north-1:111122223333:alias/tls/edge").unwrap()
        else {
            panic!()
        };
        assert_eq!(k.id, AwsKeyId::Alias("tls/edge".into()));
        assert_eq!(
            k.default_endpoint(),
            "https://kms.cn-north-1.amazonaws.com.cn"
        );
        KeyUri::parse(
            "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        )
        .unwrap();
        assert_eq!(
            part("arn:aws:s3:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
            "service"
        );
        assert_eq!(
            part("arn:aws-x:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
            "partition"
        );
        assert_eq!(
            part("arn:aws:kms:US:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
            "region"
        );
        assert_eq!(
            part("arn:aws:kms:us-east-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
            "account"
        );
        assert_eq!(
            part("arn:aws:kms:us-east-1:111122223333:key/nope"),
            "key id"
        );
        assert_eq!(
            part("arn:aws:kms:us-east-1:111122223333:alias/aws/ebs"),
            "alias"
        );
        assert_eq!(
            part("arn:aws:kms:us-east-1:111122223333:grant/x"),
            "resource"
        );
        assert_eq!(part("arn:aws:kms"), "arn");
    }

    #[test]
    fn unknown_scheme_and_overlong() {
        assert_eq!(part("pkcs11:token=x"), "scheme");
        assert_eq!(
            part(&format!("projects/{}", "a".repeat(MAX_URI_LEN))),
            "length"
        );
    }
}
