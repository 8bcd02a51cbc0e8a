//! DNS through the pod's own resolver (`getaddrinfo`, so `/etc/resolv.conf`, search domains and
//! `/etc/hosts` of the pod apply exactly as they do for the target container, which shares them).

use std::net::IpAddr;

use dns_lookup::{AddrInfoHints, LookupErrorKind};

/// Address families of `GetAddrInfoRequestV2` (spec §3.5), as lookup strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4Only,
    Ipv6Only,
    /// A and AAAA, all results (also used for families from newer clients).
    Both,
    /// A first; AAAA only if there is no A result.
    Any,
}

/// Why a lookup failed, in the categories the protocol's `ResolveErrorKindInternal` has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    Message(String),
    NoRecordsFound(u16),
    Timeout,
    Unknown,
}

/// One answer: the (fully-qualified, trailing-dot) name and an address.
pub type Record = (String, IpAddr);

/// Resolves `node` on a blocking thread (getaddrinfo blocks).
pub async fn lookup(node: String, family: Family) -> Result<Vec<Record>, DnsFailure> {
    match tokio::task::spawn_blocking(move || lookup_blocking(&node, family)).await {
        Ok(result) => result,
        Err(join) => Err(DnsFailure::Message(format!("resolver task failed: {join}"))),
    }
}

pub fn lookup_blocking(node: &str, family: Family) -> Result<Vec<Record>, DnsFailure> {
    // An IP literal resolves to itself, whatever the family (the reference does the same).
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Ok(vec![(node.to_owned(), ip)]);
    }
    match family {
        Family::Ipv4Only => getaddrinfo(node, libc_family::INET),
        Family::Ipv6Only => getaddrinfo(node, libc_family::INET6),
        Family::Both => getaddrinfo(node, libc_family::UNSPEC),
        Family::Any => match getaddrinfo(node, libc_family::INET) {
            Ok(v4) if !v4.is_empty() => Ok(v4),
            _ => getaddrinfo(node, libc_family::INET6),
        },
    }
}

/// `AF_*` values (Linux), kept here so this module needs no direct libc dependency.
mod libc_family {
    pub const UNSPEC: i32 = 0;
    pub const INET: i32 = 2;
    pub const INET6: i32 = 10;
}
const SOCK_STREAM: i32 = 1;
const AI_CANONNAME: i32 = 0x0002;
/// glibc's EAI_ADDRFAMILY: the host has no address of the requested family.
const EAI_ADDRFAMILY: i32 = -9;

fn getaddrinfo(node: &str, family: i32) -> Result<Vec<Record>, DnsFailure> {
    let hints = AddrInfoHints {
        flags: AI_CANONNAME,
        address: family,
        // One entry per address instead of one per socket type.
        socktype: SOCK_STREAM,
        protocol: 0,
    };
    let iter = dns_lookup::getaddrinfo(Some(node), None, Some(hints)).map_err(|e| {
        if e.error_num() == EAI_ADDRFAMILY {
            return DnsFailure::NoRecordsFound(0);
        }
        match e.kind() {
            // getaddrinfo folds NXDOMAIN into EAI_NONAME; report it as NXDOMAIN (rcode 3).
            LookupErrorKind::NoName => DnsFailure::NoRecordsFound(3),
            LookupErrorKind::NoData => DnsFailure::NoRecordsFound(0),
            LookupErrorKind::Again => DnsFailure::Timeout,
            LookupErrorKind::System | LookupErrorKind::IO => {
                DnsFailure::Message(format!("io error: {}", std::io::Error::from(e)))
            }
            LookupErrorKind::Fail => DnsFailure::Message(std::io::Error::from(e).to_string()),
            _ => DnsFailure::Unknown,
        }
    })?;
    let mut canonical: Option<String> = None;
    let mut records: Vec<Record> = Vec::new();
    for info in iter {
        let info = info.map_err(|e| DnsFailure::Message(format!("io error: {e}")))?;
        // glibc sets the canonical name on the first entry only; it names all of them.
        if canonical.is_none() {
            canonical = info.canonname.clone();
        }
        let ip = info.sockaddr.ip();
        if !records.iter().any(|(_, seen)| *seen == ip) {
            records.push((String::new(), ip));
        }
    }
    let name = fqdn(canonical.as_deref().unwrap_or(node));
    for record in &mut records {
        record.0.clone_from(&name);
    }
    Ok(records)
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// Reverse lookup of an address (operator-only `ReverseDnsLookup`).
pub async fn reverse(ip: IpAddr) -> std::io::Result<String> {
    let name = tokio::task::spawn_blocking(move || dns_lookup::lookup_addr(&ip))
        .await
        .map_err(std::io::Error::other)??;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_resolve_to_themselves() {
        let v = lookup_blocking("10.1.2.3", Family::Ipv6Only).expect("literal");
        assert_eq!(
            v,
            vec![("10.1.2.3".to_owned(), "10.1.2.3".parse().unwrap())]
        );
    }

    #[test]
    fn localhost_through_the_system_resolver() {
        // /etc/hosts always has localhost; the name comes back fully qualified.
        let v = lookup_blocking("localhost", Family::Ipv4Only).expect("localhost");
        assert!(
            v.iter().any(|(_, ip)| *ip == IpAddr::from([127, 0, 0, 1])),
            "{v:?}"
        );
        assert!(
            v.iter()
                .all(|(name, ip)| name.ends_with('.') && ip.is_ipv4()),
            "{v:?}"
        );
    }

    #[test]
    fn unknown_name_is_no_records() {
        // `.invalid` is reserved (RFC 6761) and never resolves.
        let err = lookup_blocking("no-such-host.invalid", Family::Both).unwrap_err();
        assert!(
            matches!(err, DnsFailure::NoRecordsFound(_) | DnsFailure::Timeout),
            "{err:?}"
        );
    }

    #[test]
    fn fqdn_adds_one_dot() {
        assert_eq!(fqdn("a.b"), "a.b.");
        assert_eq!(fqdn("a.b."), "a.b.");
    }
}
