//! The self-managed certificate policy, pure: given the Secret's material, the caBundles the API
//! server holds and the time, what the Secret should hold next. No client, no clock: the Kubernetes
//! writes are in [`super::self_managed`].
//!
//! The serving certificate is renewed after two thirds of its life. The CA is rotated in stages (as
//! Linkerd and Istio rotate trust anchors) so the API server never meets a certificate from a CA it
//! does not trust yet: from half of the CA's life the next CA is generated and published in the
//! caBundle while the current one keeps signing; from two thirds, once every caBundle holds the next
//! CA, it is promoted and signs the serving certificate, and the old CA stays in the bundle until it
//! expires. See [`ca_step`].

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::certs::{self, CertError, PemPair, San};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
/// The CA being retired, kept in the bundle until it expires so certificates it signed stay trusted.
const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
/// The CA that takes over at the next CA rotation, published in the bundle before it signs anything.
const NEXT_CA_CERT: &str = "ca-next.crt";
const NEXT_CA_KEY: &str = "ca-next.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// What to issue: the CA's name, the serving certificate's names and lifetime.
#[derive(Debug, Clone)]
pub struct IssuePolicy {
    pub ca_name: String,
    pub sans: Vec<San>,
    pub validity: Duration,
}

impl IssuePolicy {
    /// The CA outlives many serving certificates so its rotation (and the caBundle change) is rare.
    fn ca_validity(&self) -> Duration {
        self.validity.saturating_mul(10)
    }
}

/// The Secret's certificates, parsed.
#[derive(Debug, Clone)]
pub struct Material {
    ca: PemPair,
    /// Present from half of the current CA's life until its promotion.
    next_ca: Option<PemPair>,
    previous_ca: Option<String>,
    pub serving: PemPair,
}

/// A certificate's life in seconds since the epoch. It counts from issuance, not from the back-dated
/// `notBefore`, or a short-lived certificate would be due for replacement at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Life {
    issued: i64,
    not_after: i64,
}

impl Life {
    fn of(cert_pem: &str) -> Option<Life> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
        Some(Life::of_x509(&pem.parse_x509().ok()?))
    }

    fn of_x509(cert: &X509Certificate) -> Life {
        let (not_before, not_after) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        Life {
            issued: (not_before + certs::BACKDATE.whole_seconds()).min(not_after),
            not_after,
        }
    }

    /// The moment `num / den` of the life has passed.
    fn at(&self, num: i64, den: i64) -> i64 {
        self.issued + (self.not_after - self.issued) * num / den
    }

    fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }

    fn valid_cert(cert_pem: &str, now: i64) -> bool {
        Life::of(cert_pem).is_some_and(|life| !life.expired(now))
    }
}

/// Past two thirds of its life (or unreadable): time to replace it.
pub fn needs_rotation(cert_pem: &str, now: OffsetDateTime) -> bool {
    Life::of(cert_pem).is_none_or(|life| now.unix_timestamp() >= life.at(2, 3))
}

/// The life of a CA that can sign: a readable CA certificate whose key belongs to it. A CA that
/// fails this would issue serving certificates nobody can verify.
fn ca_life(ca: &PemPair) -> Option<Life> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let key = rcgen::KeyPair::from_pem(&ca.key_pem).ok()?;
    let matches = cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw();
    (cert.is_ca() && matches).then(|| Life::of_x509(&cert))
}

/// The next CA as the Secret holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextCa {
    Absent,
    /// Unreadable, not a CA, or its key does not belong to it.
    Unusable,
    Usable(Life),
}

/// What happens to the CAs in one reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaStep {
    /// Keep the current CA (and the staged next one, if any).
    Keep,
    /// Generate the next CA (again, if the one held is unusable or expired) and publish it, while the
    /// current CA keeps signing.
    Stage,
    /// The next CA becomes current and signs the serving certificate; the current one becomes previous.
    Promote,
    /// Neither CA can be used: start over with a new one.
    Replace,
}

/// The staged CA rotation. Thresholds are fractions of the current CA's life:
/// - before 1/2: keep it;
/// - from 1/2: stage the next CA, i.e. publish it in the caBundle while the current one still signs;
/// - from 2/3, and only once every entry of the caBundle the API server holds contains the next CA
///   (`next_published`, read before this pass wrote anything, so an earlier pass of some replica
///   published it): promote it.
///
/// An expired or unusable current CA cannot keep anyone's trust, so the next CA is promoted at once
/// (or a new CA made) without waiting for publication.
fn ca_step(current: Option<Life>, next: NextCa, next_published: bool, now: i64) -> CaStep {
    let next_usable = matches!(next, NextCa::Usable(life) if !life.expired(now));
    match current.filter(|life| !life.expired(now)) {
        None if next_usable => CaStep::Promote,
        None => CaStep::Replace,
        Some(current) if next_usable => {
            if next_published && now >= current.at(2, 3) {
                CaStep::Promote
            } else {
                CaStep::Keep
            }
        }
        // The next CA is missing past half of the current one's life, or unusable or expired at any time.
        Some(current) if now >= current.at(1, 2) || next != NextCa::Absent => CaStep::Stage,
        Some(_) => CaStep::Keep,
    }
}

fn covers(cert_pem: &str, sans: &[San]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return false;
    };
    let present: Vec<String> = ext
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    sans.iter().all(|san| present.contains(&san.to_string()))
}

/// Whether every caBundle (one per webhook entry) holds `cert_pem`. Compared as DER, so re-encoded
/// PEM still counts; no entries, or an unreadable bundle, count as not holding it.
pub fn published_in(ca_bundles: &[&[u8]], cert_pem: &str) -> bool {
    let Some(Ok(cert)) = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() else {
        return false;
    };
    !ca_bundles.is_empty()
        && ca_bundles.iter().all(|bundle| {
            CertificateDer::pem_slice_iter(bundle).any(|c| c.is_ok_and(|c| c == cert))
        })
}

fn string_data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn has_data(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
}

/// The CAs a client of the server behind `secret` should trust: a self-managed Secret's
/// [`Material::trust_bundle`] (previous, current and next CA), or else the `ca.crt` that
/// cert-manager writes beside the serving pair. None when the Secret holds neither, or the
/// `ca.crt` holds no certificate (an issuer that does not publish its CA).
pub fn secret_trust_bundle(secret: &Secret, now: OffsetDateTime) -> Option<String> {
    if let Some(material) = Material::from_secret(secret) {
        return Some(material.trust_bundle(now));
    }
    let ca = string_data(secret, CA_CERT)?;
    CertificateDer::pem_slice_iter(ca.as_bytes())
        .any(|c| c.is_ok())
        .then_some(ca)
}

impl Material {
    /// None when the current CA or serving pair is missing. A Secret written before CA staging
    /// existed simply has no next CA.
    pub fn from_secret(secret: &Secret) -> Option<Material> {
        // Half a next pair (or non-UTF-8 PEM) is kept as an unusable one, so it gets regenerated.
        let next_ca =
            (has_data(secret, NEXT_CA_CERT) || has_data(secret, NEXT_CA_KEY)).then(|| PemPair {
                cert_pem: string_data(secret, NEXT_CA_CERT).unwrap_or_default(),
                key_pem: string_data(secret, NEXT_CA_KEY).unwrap_or_default(),
            });
        Some(Material {
            ca: PemPair {
                cert_pem: string_data(secret, CA_CERT)?,
                key_pem: string_data(secret, CA_KEY)?,
            },
            next_ca,
            previous_ca: string_data(secret, PREVIOUS_CA_CERT),
            serving: PemPair {
                cert_pem: string_data(secret, TLS_CERT)?,
                key_pem: string_data(secret, TLS_KEY)?,
            },
        })
    }

    pub fn data(&self) -> BTreeMap<String, ByteString> {
        let mut entries = vec![
            (CA_CERT, &self.ca.cert_pem),
            (CA_KEY, &self.ca.key_pem),
            (TLS_CERT, &self.serving.cert_pem),
            (TLS_KEY, &self.serving.key_pem),
        ];
        if let Some(previous) = &self.previous_ca {
            entries.push((PREVIOUS_CA_CERT, previous));
        }
        if let Some(next) = &self.next_ca {
            entries.push((NEXT_CA_CERT, &next.cert_pem));
            entries.push((NEXT_CA_KEY, &next.key_pem));
        }
        entries
            .into_iter()
            .map(|(key, pem)| (key.to_string(), ByteString(pem.clone().into_bytes())))
            .collect()
    }

    /// Oldest first, so promoting the next CA leaves the bundle byte for byte the same: the API
    /// server already holds it and nothing is applied at the moment the signing CA changes.
    pub fn trust_bundle(&self, now: OffsetDateTime) -> String {
        let now = now.unix_timestamp();
        let previous = self
            .previous_ca
            .as_deref()
            .filter(|p| Life::valid_cert(p, now));
        let next = self
            .next_ca
            .as_ref()
            .map(|n| n.cert_pem.as_str())
            .filter(|n| Life::valid_cert(n, now));
        let mut bundle = String::new();
        for pem in [previous, Some(self.ca.cert_pem.as_str()), next]
            .into_iter()
            .flatten()
        {
            if !bundle.is_empty() && !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(pem);
        }
        bundle
    }

    pub fn fresh(cfg: &IssuePolicy, now: OffsetDateTime) -> Result<Material, CertError> {
        let ca = certs::generate_ca(&cfg.ca_name, now, cfg.ca_validity())?;
        let serving = certs::issue_serving(&ca, &cfg.sans, now, cfg.validity)?;
        Ok(Material {
            ca,
            next_ca: None,
            previous_ca: None,
            serving,
        })
    }

    fn next_state(&self) -> NextCa {
        match &self.next_ca {
            None => NextCa::Absent,
            Some(next) => ca_life(next).map_or(NextCa::Unusable, NextCa::Usable),
        }
    }

    /// The material this Secret should hold at `now`, given the caBundles the API server holds (one
    /// per webhook entry), with what changed (for the log); None when it is fine as it is.
    pub fn renewed(
        &self,
        cfg: &IssuePolicy,
        ca_bundles: &[&[u8]],
        now: OffsetDateTime,
    ) -> Result<Option<(Material, &'static str)>, CertError> {
        let published = self
            .next_ca
            .as_ref()
            .is_some_and(|next| published_in(ca_bundles, &next.cert_pem));
        let unix_now = now.unix_timestamp();
        // Kept while it is valid: other replicas may still serve a certificate it signed.
        let retired = Some(self.ca.cert_pem.clone()).filter(|ca| Life::valid_cert(ca, unix_now));
        let step = ca_step(ca_life(&self.ca), self.next_state(), published, unix_now);
        let (mut material, mut change) = match (step, &self.next_ca) {
            (CaStep::Promote, Some(next)) => {
                let material = Material {
                    serving: certs::issue_serving(next, &cfg.sans, now, cfg.validity)?,
                    ca: next.clone(),
                    next_ca: None,
                    previous_ca: retired,
                };
                return Ok(Some((material, "promoted the next CA")));
            }
            (CaStep::Promote | CaStep::Replace, _) => {
                let material = Material {
                    previous_ca: retired,
                    ..Material::fresh(cfg, now)?
                };
                return Ok(Some((material, "replaced an unusable or expired CA")));
            }
            (CaStep::Stage, _) => {
                let next = certs::generate_ca(&cfg.ca_name, now, cfg.ca_validity())?;
                let material = Material {
                    next_ca: Some(next),
                    ..self.clone()
                };
                (material, Some("staged the next CA"))
            }
            (CaStep::Keep, _) => (self.clone(), None),
        };
        if needs_rotation(&material.serving.cert_pem, now)
            || !covers(&material.serving.cert_pem, &cfg.sans)
        {
            material.serving = certs::issue_serving(&material.ca, &cfg.sans, now, cfg.validity)?;
            change = Some(change.map_or(
                "renewed the serving certificate",
                |_| "staged the next CA and renewed the serving certificate",
            ));
        }
        Ok(change.map(|change| (material, change)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_of(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn trust_bundle_of_a_cert_manager_secret_is_its_ca_crt() {
        let now = OffsetDateTime::now_utc();
        let ca = certs::generate_ca("issuer", now, Duration::from_secs(3600)).unwrap();
        // cert-manager's Secret: ca.crt, tls.crt, tls.key, and never the CA key.
        let cm = secret_of(&[
            (CA_CERT, &ca.cert_pem),
            (TLS_CERT, "serving"),
            (TLS_KEY, "key"),
        ]);
        assert_eq!(
            secret_trust_bundle(&cm, now).as_deref(),
            Some(ca.cert_pem.as_str())
        );
        // An issuer that publishes no CA, or garbage in ca.crt: nothing to trust.
        assert_eq!(
            secret_trust_bundle(&secret_of(&[(TLS_CERT, "x")]), now),
            None
        );
        assert_eq!(
            secret_trust_bundle(&secret_of(&[(CA_CERT, "not pem")]), now),
            None
        );
    }

    #[test]
    fn trust_bundle_of_a_self_managed_secret_holds_its_cas() {
        let now = OffsetDateTime::now_utc();
        let ca = certs::generate_ca("current", now, Duration::from_secs(3600)).unwrap();
        let previous = certs::generate_ca("previous", now, Duration::from_secs(3600)).unwrap();
        let sm = secret_of(&[
            (CA_CERT, &ca.cert_pem),
            (CA_KEY, &ca.key_pem),
            (PREVIOUS_CA_CERT, &previous.cert_pem),
            (TLS_CERT, "serving"),
            (TLS_KEY, "key"),
        ]);
        let bundle = secret_trust_bundle(&sm, now).unwrap();
        assert!(bundle.contains(&ca.cert_pem) && bundle.contains(&previous.cert_pem));
    }

    #[test]
    fn rotation_is_due_after_two_thirds_of_the_issued_life() {
        let now = OffsetDateTime::now_utc();
        let ca = certs::generate_ca("ca", now, Duration::from_secs(300)).unwrap();
        let sans = [San::Dns("a.test".into())];
        // Short lives are where the 5-minute back-dating would otherwise dominate.
        let short = certs::issue_serving(&ca, &sans, now, Duration::from_secs(30)).unwrap();
        assert!(!needs_rotation(&short.cert_pem, now));
        assert!(!needs_rotation(
            &short.cert_pem,
            now + time::Duration::seconds(19)
        ));
        assert!(needs_rotation(
            &short.cert_pem,
            now + time::Duration::seconds(21)
        ));
        let long = certs::issue_serving(&ca, &sans, now, Duration::from_secs(3 * 3600)).unwrap();
        assert!(!needs_rotation(
            &long.cert_pem,
            now + time::Duration::minutes(119)
        ));
        assert!(needs_rotation(
            &long.cert_pem,
            now + time::Duration::minutes(121)
        ));
        assert!(needs_rotation("not a certificate", now));
    }

    /// Serving certificates live 30 s, so the CA lives 300 s: staged at 150 s, promotable at 200 s.
    fn cfg() -> IssuePolicy {
        IssuePolicy {
            ca_name: "test CA".into(),
            sans: vec![San::Dns("a.test".into())],
            validity: Duration::from_secs(30),
        }
    }

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_900_000_000 + seconds).unwrap()
    }

    fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
        let (_, cert) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
        let (cert, ca) = (cert.parse_x509().unwrap(), ca.parse_x509().unwrap());
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    fn secret_with(data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn ca_step_in_every_phase() {
        use CaStep::*;
        use NextCa::*;
        // Half of the current CA's life is at 300, two thirds at 400.
        let current = Some(Life {
            issued: 0,
            not_after: 600,
        });
        let next = Usable(Life {
            issued: 300,
            not_after: 900,
        });
        let expired_next = Usable(Life {
            issued: -700,
            not_after: 100,
        });
        let cases = [
            ("young CA, nothing staged", current, Absent, false, 0, Keep),
            ("just before half", current, Absent, false, 299, Keep),
            ("half: stage", current, Absent, false, 300, Stage),
            (
                "past 2/3 with no next CA (older Secret): stage first",
                current,
                Absent,
                true,
                450,
                Stage,
            ),
            (
                "staged, published, before 2/3",
                current,
                next,
                true,
                399,
                Keep,
            ),
            (
                "2/3 but the caBundle lacks the next CA",
                current,
                next,
                false,
                400,
                Keep,
            ),
            (
                "2/3 and published: promote",
                current,
                next,
                true,
                400,
                Promote,
            ),
            (
                "unusable next CA before half",
                current,
                Unusable,
                false,
                10,
                Stage,
            ),
            (
                "unusable next CA past 2/3",
                current,
                Unusable,
                true,
                450,
                Stage,
            ),
            ("expired next CA", current, expired_next, true, 450, Stage),
            (
                "current expired: promote unpublished",
                current,
                next,
                false,
                600,
                Promote,
            ),
            (
                "current expired, no next CA",
                current,
                Absent,
                false,
                600,
                Replace,
            ),
            (
                "current unusable, next usable",
                None,
                next,
                false,
                10,
                Promote,
            ),
            (
                "current unusable, no next CA",
                None,
                Absent,
                true,
                10,
                Replace,
            ),
            ("both unusable", None, Unusable, false, 10, Replace),
        ];
        for (what, current, next, published, now, expected) in cases {
            assert_eq!(ca_step(current, next, published, now), expected, "{what}");
        }
    }

    #[test]
    fn next_ca_is_published_before_it_signs_and_promoted_once_the_bundle_holds_it() {
        let cfg = cfg();
        let first = Material::fresh(&cfg, at(0)).unwrap();
        let ca = first.ca.cert_pem.clone();
        let published_first = first.trust_bundle(at(0));
        assert_eq!(published_first, ca);
        let bundles = [published_first.as_bytes(), published_first.as_bytes()];
        assert!(first.renewed(&cfg, &bundles, at(10)).unwrap().is_none());

        // Before half: only the (due) serving certificate changes; nothing is staged.
        let (renewed, _) = first.renewed(&cfg, &bundles, at(149)).unwrap().unwrap();
        assert!(renewed.next_ca.is_none());
        assert_eq!(renewed.ca, first.ca);

        // Half: the next CA is staged and joins the bundle; the current CA still signs.
        let (staged, _) = first.renewed(&cfg, &bundles, at(150)).unwrap().unwrap();
        let next = staged.next_ca.clone().expect("a next CA");
        assert!(ca_life(&next).is_some());
        assert_ne!(next.cert_pem, ca);
        assert_eq!(staged.ca, first.ca);
        assert!(signed_by(&staged.serving.cert_pem, &ca));
        let published_staged = staged.trust_bundle(at(150));
        assert_eq!(published_staged, format!("{ca}{}", next.cert_pem));
        assert!(staged.renewed(&cfg, &bundles, at(160)).unwrap().is_none());

        // Two thirds, but the API server does not hold the next CA in every entry: no promotion,
        // the serving certificate is renewed from the current CA.
        // No configuration at all publishes nothing either.
        let held_staged = [published_staged.as_bytes(), published_staged.as_bytes()];
        for (held, now) in [
            (
                &[published_first.as_bytes(), published_first.as_bytes()][..],
                at(200),
            ),
            (
                &[published_staged.as_bytes(), published_first.as_bytes()],
                at(200),
            ),
            (&[], at(200)),
            (&held_staged, at(199)),
        ] {
            let (kept, _) = staged.renewed(&cfg, held, now).unwrap().unwrap();
            assert_eq!(kept.ca, first.ca, "{now}");
            assert_eq!(kept.next_ca.as_ref(), Some(&next));
            assert!(signed_by(&kept.serving.cert_pem, &ca));
        }

        // Published: promoted. The old CA stays trusted, and the bundle does not change at all.
        let held = held_staged;
        let (promoted, _) = staged.renewed(&cfg, &held, at(200)).unwrap().unwrap();
        assert_eq!(promoted.ca, next);
        assert!(promoted.next_ca.is_none());
        assert_eq!(promoted.previous_ca.as_deref(), Some(ca.as_str()));
        assert!(signed_by(&promoted.serving.cert_pem, &next.cert_pem));
        assert!(!signed_by(&promoted.serving.cert_pem, &ca));
        assert_eq!(promoted.trust_bundle(at(200)), published_staged);
        assert!(promoted.renewed(&cfg, &held, at(201)).unwrap().is_none());
        // The old CA leaves the bundle when it expires (300 s after it was issued).
        assert_eq!(promoted.trust_bundle(at(299)), published_staged);
        assert_eq!(promoted.trust_bundle(at(300)), next.cert_pem);
    }

    #[test]
    fn secrets_round_trip_and_older_secrets_without_a_next_ca_still_work() {
        let cfg = cfg();
        let first = Material::fresh(&cfg, at(0)).unwrap();
        let older = secret_with(first.data());
        assert!(!has_data(&older, NEXT_CA_CERT) && !has_data(&older, NEXT_CA_KEY));
        let read = Material::from_secret(&older).expect("an older Secret is readable");
        assert!(read.next_ca.is_none());
        let bundle = first.trust_bundle(at(0));
        let (staged, _) = read
            .renewed(&cfg, &[bundle.as_bytes()], at(150))
            .unwrap()
            .unwrap();
        let read = Material::from_secret(&secret_with(staged.data())).unwrap();
        assert_eq!(read.next_ca, staged.next_ca);
        assert_eq!(read.ca, staged.ca);
        assert_eq!(read.serving, staged.serving);
    }

    #[test]
    fn unreadable_next_material_is_regenerated() {
        let cfg = cfg();
        let first = Material::fresh(&cfg, at(0)).unwrap();
        let bundle = first.trust_bundle(at(0));
        let (staged, _) = first
            .renewed(&cfg, &[bundle.as_bytes()], at(150))
            .unwrap()
            .unwrap();
        let next = staged.next_ca.clone().unwrap();
        let mut broken = Vec::new();
        for (cert, key) in [
            (
                Some("not a certificate".as_bytes()),
                Some(next.key_pem.as_bytes()),
            ),
            // The key of another CA.
            (
                Some(next.cert_pem.as_bytes()),
                Some(first.ca.key_pem.as_bytes()),
            ),
            (Some(next.cert_pem.as_bytes()), None),
            (None, Some(next.key_pem.as_bytes())),
            (Some(&[0xff, 0xfe][..]), Some(next.key_pem.as_bytes())),
            // A serving certificate is not a CA.
            (
                Some(first.serving.cert_pem.as_bytes()),
                Some(first.serving.key_pem.as_bytes()),
            ),
        ] {
            let mut data = first.data();
            for (name, value) in [(NEXT_CA_CERT, cert), (NEXT_CA_KEY, key)] {
                if let Some(value) = value {
                    data.insert(name.into(), ByteString(value.to_vec()));
                }
            }
            broken.push(Material::from_secret(&secret_with(data)).unwrap());
        }
        for material in broken {
            let unusable = material.next_ca.clone();
            // Even a bundle claiming to hold it everywhere does not get it promoted.
            let all = format!(
                "{}{}",
                first.ca.cert_pem,
                unusable.clone().unwrap().cert_pem
            );
            for now in [at(10), at(160), at(250)] {
                let (renewed, _) = material
                    .renewed(&cfg, &[all.as_bytes()], now)
                    .unwrap()
                    .unwrap();
                assert_eq!(renewed.ca, first.ca, "{unusable:?}");
                let regenerated = renewed.next_ca.clone().unwrap();
                assert!(ca_life(&regenerated).is_some(), "{unusable:?}");
                assert_ne!(Some(&regenerated), unusable.as_ref());
                assert!(signed_by(&renewed.serving.cert_pem, &first.ca.cert_pem));
                assert!(renewed.trust_bundle(now).ends_with(&regenerated.cert_pem));
            }
        }
    }

    #[test]
    fn an_unusable_or_expired_current_ca_is_replaced_at_once() {
        let cfg = cfg();
        let first = Material::fresh(&cfg, at(0)).unwrap();
        let garbage = Material {
            ca: PemPair {
                cert_pem: "garbage".into(),
                key_pem: first.ca.key_pem.clone(),
            },
            ..first.clone()
        };
        let other = Material::fresh(&cfg, at(0)).unwrap();
        let mismatched = Material {
            ca: PemPair {
                cert_pem: first.ca.cert_pem.clone(),
                key_pem: other.ca.key_pem.clone(),
            },
            ..first.clone()
        };
        for (material, now) in [(&garbage, at(10)), (&mismatched, at(10)), (&first, at(300))] {
            let (replaced, _) = material.renewed(&cfg, &[], now).unwrap().unwrap();
            assert!(ca_life(&replaced.ca).is_some());
            assert_ne!(replaced.ca.cert_pem, first.ca.cert_pem);
            assert!(signed_by(&replaced.serving.cert_pem, &replaced.ca.cert_pem));
            assert!(replaced.next_ca.is_none());
        }
        // Neither garbage nor an expired CA is kept as previous; a valid one with a wrong key is.
        let previous =
            |m: &Material, now| m.renewed(&cfg, &[], now).unwrap().unwrap().0.previous_ca;
        assert_eq!(previous(&garbage, at(10)), None);
        assert_eq!(previous(&first, at(300)), None);
        assert_eq!(
            previous(&mismatched, at(10)),
            Some(first.ca.cert_pem.clone())
        );
    }

    #[test]
    fn publication_is_checked_per_entry_and_by_der() {
        let now = at(0);
        let a = certs::generate_ca("a", now, Duration::from_secs(60)).unwrap();
        let b = certs::generate_ca("b", now, Duration::from_secs(60)).unwrap();
        let both = format!("{}{}", a.cert_pem, b.cert_pem);
        assert!(published_in(&[both.as_bytes()], &b.cert_pem));
        assert!(!published_in(
            &[both.as_bytes(), a.cert_pem.as_bytes()],
            &b.cert_pem
        ));
        assert!(!published_in(&[], &b.cert_pem));
        assert!(!published_in(&[b"garbage"], &b.cert_pem));
        assert!(!published_in(&[both.as_bytes()], "garbage"));
        // The same certificate with CRLF line endings is the same certificate.
        let crlf = b.cert_pem.replace('\n', "\r\n");
        assert!(published_in(&[crlf.as_bytes()], &b.cert_pem));
    }
}
