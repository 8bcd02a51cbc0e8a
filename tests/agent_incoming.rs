//! Incoming traffic in real network namespaces: iptables rules, redirect, steal, mirror,
//! pass-through. Needs root (creates namespaces and iptables rules inside them only).

#[path = "support/netns.rs"]
mod netns;

use mirrord_operator::agent::incoming::redirect::{Family, Redirector};
use netns::NetNs;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn redirect_rules_follow_ports_and_stale_chains_are_removed() {
    let ns = NetNs::new("redir");
    ns.run_in(|| {
        rt().block_on(async {
            let r = Redirector::new("T1", 30777, 40000, vec![Family::V4])
                .await
                .unwrap();
            assert!(
                ns.nat_rules_with("T1-").is_empty(),
                "idle agent leaves no rules"
            );

            r.add_port(80).await.unwrap();
            r.add_port(8080).await.unwrap();
            r.add_port(80).await.unwrap();
            let rules = ns.nat_rules_with("T1-");
            assert_eq!(
                rules,
                vec![
                    ":T1-IN - [0:0]",
                    ":T1-OUT - [0:0]",
                    "-A PREROUTING -p tcp -j T1-IN",
                    "-A OUTPUT -p tcp -j T1-OUT",
                    "-A T1-IN -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000",
                    "-A T1-IN -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 40000",
                    "-A T1-OUT -m owner --gid-owner 30777 -j RETURN",
                    "-A T1-OUT -o lo -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000",
                    "-A T1-OUT -o lo -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 40000",
                ],
                "{rules:#?}"
            );

            r.remove_port(80).await.unwrap();
            let rules = ns.nat_rules_with("dport");
            assert_eq!(rules.len(), 2, "{rules:#?}");
            assert!(rules.iter().all(|l| l.contains("--dport 8080")));

            r.remove_port(8080).await.unwrap();
            assert!(
                ns.nat_rules_with("T1-").is_empty(),
                "last port removes the chains"
            );

            // A killed agent leaves its chains behind; the next start with the prefix removes them,
            // and leaves another agent's chains alone.
            r.add_port(9090).await.unwrap();
            let other = Redirector::new("T2", 30777, 40001, vec![Family::V4])
                .await
                .unwrap();
            other.add_port(9191).await.unwrap();
            std::mem::forget(r);
            let restarted = Redirector::new("T1", 30777, 40002, vec![Family::V4])
                .await
                .unwrap();
            assert!(ns.nat_rules_with("T1-").is_empty());
            assert_eq!(ns.nat_rules_with("T2-").len(), 7);
            other.remove_all().await.unwrap();
            assert!(ns.nat_rules_with("T2-").is_empty());
            restarted.remove_all().await.unwrap();
        })
    });
}

#[test]
fn invalid_prefix_is_an_error_not_an_iptables_call() {
    let err = rt()
        .block_on(Redirector::new("-j ACCEPT", 1, 2, vec![Family::V4]))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("invalid iptables chain prefix"),
        "{err}"
    );
}
