//! iptables `nat` redirection of subscribed ports to the agent's listener.
//!
//! Two chains per agent, named from a prefix so that parallel agents (tests) never collide:
//! `<prefix>-IN`, jumped to from `PREROUTING` (traffic from other hosts), and `<prefix>-OUT`, jumped
//! to from `OUTPUT` (traffic from inside the pod to loopback). `<prefix>-OUT` starts with an
//! owner-gid `RETURN` so the agent's own connections (pass-through to the app) are never redirected
//! back to itself. The chains exist only while at least one port is redirected, so an idle agent
//! leaves nothing in the tables; `clean_stale` removes what a killed agent left behind.

use std::collections::BTreeSet;

use tokio::{process::Command, sync::Mutex};
use tracing::{debug, info, warn};

use super::error::IncomingError;

/// Longest accepted prefix: iptables chain names are limited to 28 characters and we append `-OUT`.
pub const MAX_PREFIX_LEN: usize = 24;

/// One address family's iptables binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn restore_binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// Checks that `prefix` can name iptables chains (and cannot inject arguments).
pub fn validate_prefix(prefix: &str) -> Result<(), IncomingError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !prefix.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(IncomingError::InvalidChainPrefix(prefix.to_owned()))
    }
}

#[derive(Default)]
struct State {
    ports: BTreeSet<u16>,
    hooked: bool,
}

/// Owns this agent's redirect rules in the current network namespace.
pub struct Redirector {
    prefix: String,
    agent_gid: u32,
    listener_port: u16,
    families: Vec<Family>,
    state: Mutex<State>,
}

impl Redirector {
    /// Validates the prefix and removes stale chains of the same prefix left by a killed agent.
    /// IPv6 is managed too when `try_v6` is set and `ip6tables` has a `nat` table here. One listing
    /// per family, both at once, when nothing is stale: this is on the agent's start path.
    #[tracing::instrument(skip(prefix))]
    pub async fn new(
        prefix: &str,
        agent_gid: u32,
        listener_port: u16,
        try_v6: bool,
    ) -> Result<Redirector, IncomingError> {
        validate_prefix(prefix)?;
        let mut redirector = Redirector {
            prefix: prefix.to_owned(),
            agent_gid,
            listener_port,
            families: vec![Family::V4],
            state: Mutex::new(State::default()),
        };
        let (v4, v6) = tokio::join!(redirector.list(Family::V4), async {
            if try_v6 {
                Some(redirector.list(Family::V6).await)
            } else {
                None
            }
        });
        redirector.clean_listed(Family::V4, &v4?).await?;
        match v6 {
            Some(Ok(listing)) => {
                redirector.clean_listed(Family::V6, &listing).await?;
                redirector.families.push(Family::V6);
            }
            Some(Err(e)) => debug!(error = %e, "no IPv6 nat table: redirecting IPv4 only"),
            None => {}
        }
        Ok(redirector)
    }

    /// Address families this redirector manages.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn in_chain(&self) -> String {
        format!("{}-IN", self.prefix)
    }

    pub fn out_chain(&self) -> String {
        format!("{}-OUT", self.prefix)
    }

    /// Redirects `port` (no-op if already redirected).
    #[tracing::instrument(skip(self), fields(prefix = %self.prefix))]
    pub async fn add_port(&self, port: u16) -> Result<(), IncomingError> {
        let mut state = self.state.lock().await;
        if state.ports.contains(&port) {
            return Ok(());
        }
        // One `iptables-restore` per family, families at once: this is on the path from a session's
        // first subscription to its first stolen request, and each iptables process costs ~5-15 ms.
        let mut lines = if state.hooked {
            Vec::new()
        } else {
            self.hook_lines()
        };
        lines.push(
            self.port_rule("-A", &self.in_chain(), port, false)
                .join(" "),
        );
        lines.push(
            self.port_rule("-A", &self.out_chain(), port, true)
                .join(" "),
        );
        self.restore(&lines).await?;
        state.hooked = true;
        state.ports.insert(port);
        info!(port, "port redirected");
        Ok(())
    }

    /// Stops redirecting `port`; the chains go away with the last port.
    #[tracing::instrument(skip(self), fields(prefix = %self.prefix))]
    pub async fn remove_port(&self, port: u16) -> Result<(), IncomingError> {
        let mut state = self.state.lock().await;
        if !state.ports.remove(&port) {
            return Ok(());
        }
        if state.ports.is_empty() {
            state.hooked = false;
            // What we hooked is known: unhook and delete in one transaction per family. Should that
            // fail (someone else changed the table), the listing-based cleanup finds what is left.
            if let Err(e) = self.restore(&self.unhook_lines()).await {
                warn!(error = %e, "unhooking in one transaction failed: cleaning by listing");
                for &family in &self.families {
                    self.clean_stale(family).await?;
                }
            }
        } else {
            self.restore(&[
                self.port_rule("-D", &self.in_chain(), port, false)
                    .join(" "),
                self.port_rule("-D", &self.out_chain(), port, true)
                    .join(" "),
            ])
            .await?;
        }
        info!(port, "port no longer redirected");
        Ok(())
    }

    /// Removes every rule and chain of this agent (shutdown path).
    pub async fn remove_all(&self) -> Result<(), IncomingError> {
        let mut state = self.state.lock().await;
        state.ports.clear();
        state.hooked = false;
        for &family in &self.families {
            self.clean_stale(family).await?;
        }
        Ok(())
    }

    /// Ports currently redirected.
    pub async fn ports(&self) -> Vec<u16> {
        self.state.lock().await.ports.iter().copied().collect()
    }

    fn port_rule(&self, op: &str, chain: &str, port: u16, loopback: bool) -> Vec<String> {
        let mut rule = vec![op.to_owned(), chain.to_owned()];
        if loopback {
            rule.extend(["-o".into(), "lo".into()]);
        }
        let port = port.to_string();
        let to = self.listener_port.to_string();
        rule.extend(
            [
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                &port,
                "-j",
                "REDIRECT",
                "--to-ports",
                &to,
            ]
            .map(String::from),
        );
        rule
    }

    /// The chains and their hooks, as `iptables-restore` lines.
    fn hook_lines(&self) -> Vec<String> {
        let (inc, out) = (self.in_chain(), self.out_chain());
        vec![
            format!(":{inc} - [0:0]"),
            format!(":{out} - [0:0]"),
            // Exempt the agent's own sockets (pass-through) so they reach the app, not the agent.
            format!("-A {out} -m owner --gid-owner {} -j RETURN", self.agent_gid),
            format!("-I PREROUTING 1 -p tcp -j {inc}"),
            // The port rules in `out` match `-o lo`: the pod talking to itself (127.0.0.1 or its IP).
            format!("-I OUTPUT 1 -p tcp -j {out}"),
        ]
    }

    /// The reverse of `hook_lines` (the chains flushed, then deleted).
    fn unhook_lines(&self) -> Vec<String> {
        let (inc, out) = (self.in_chain(), self.out_chain());
        vec![
            format!("-D PREROUTING -p tcp -j {inc}"),
            format!("-D OUTPUT -p tcp -j {out}"),
            format!("-F {inc}"),
            format!("-F {out}"),
            format!("-X {inc}"),
            format!("-X {out}"),
        ]
    }

    /// Applies `lines` to the `nat` table of every family in one transaction each (`--noflush`:
    /// everything else in the table stays), the families concurrently.
    async fn restore(&self, lines: &[String]) -> Result<(), IncomingError> {
        let mut script = String::from("*nat\n");
        for line in lines {
            script.push_str(line);
            script.push('\n');
        }
        script.push_str("COMMIT\n");
        futures::future::try_join_all(
            self.families
                .iter()
                .map(|&family| self.restore_family(family, &script)),
        )
        .await?;
        Ok(())
    }

    async fn restore_family(&self, family: Family, script: &str) -> Result<(), IncomingError> {
        use tokio::io::AsyncWriteExt;
        let binary = family.restore_binary();
        debug!(binary, script, "iptables-restore");
        let mut child = Command::new(binary)
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| IncomingError::IptablesSpawn { binary, source })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let written = stdin.write_all(script.as_bytes()).await;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| IncomingError::IptablesSpawn { binary, source })?;
        if !out.status.success() || written.is_err() {
            return Err(IncomingError::Iptables {
                binary,
                args: script.replace('\n', "; "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Unhooks, flushes and deletes this prefix's chains, if present.
    async fn clean_stale(&self, family: Family) -> Result<(), IncomingError> {
        let listing = self.list(family).await?;
        self.clean_listed(family, &listing).await
    }

    /// `-S` of the whole `nat` table.
    async fn list(&self, family: Family) -> Result<String, IncomingError> {
        self.run_str(family, &["-S"]).await
    }

    /// Removes, given a `-S` listing, every built-in-chain rule jumping to this prefix's chains
    /// (whatever its other options, so hooks of an older version go too), then the chains.
    async fn clean_listed(&self, family: Family, listing: &str) -> Result<(), IncomingError> {
        let chains = [self.in_chain(), self.out_chain()];
        for line in listing.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let from_builtin = matches!(words.get(..2), Some(["-A", "PREROUTING" | "OUTPUT"]));
            let jumps_to_ours = words
                .windows(2)
                .any(|w| w[0] == "-j" && chains.iter().any(|c| c == w[1]));
            if from_builtin && jumps_to_ours {
                let mut delete = words.clone();
                delete[0] = "-D";
                self.run_str(family, &delete).await?;
            }
        }
        for chain in &chains {
            if listing.lines().any(|l| l == format!("-N {chain}")) {
                warn!(chain, ?family, "removing chain");
                self.run_str(family, &["-F", chain]).await?;
                self.run_str(family, &["-X", chain]).await?;
            }
        }
        Ok(())
    }

    async fn run_str(&self, family: Family, args: &[&str]) -> Result<String, IncomingError> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        self.run(family, &args).await
    }

    async fn run(&self, family: Family, args: &[String]) -> Result<String, IncomingError> {
        let binary = family.binary();
        debug!(binary, ?args, "iptables");
        let out = Command::new(binary)
            .args(["-w", "-t", "nat"])
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| IncomingError::IptablesSpawn { binary, source })?;
        if !out.status.success() {
            return Err(IncomingError::Iptables {
                binary,
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("MOP_web-1").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("-j ACCEPT").is_err());
        assert!(validate_prefix("a b").is_err());
        assert!(validate_prefix(&"x".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }
}
