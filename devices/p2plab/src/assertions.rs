//! Host-side assertions: what each case's counter delta must show.
//!
//! `check(case, topology, delta)` returns one message per failed expectation, naming the
//! counter, the expected and the seen value. The suite (issue #6) fills `RULES`; a case
//! without rules passes on the guest's verdict alone.

use crate::config::Topology;
use crate::counters::leaf;
use serde_json::Value;

/// What a counter must be. Paths use `counters::leaf` syntax; `{client}` and
/// `{provider}` are replaced by the topology's role devices.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code, reason = "the suite issue adds rules of every kind")]
pub enum Expect {
    Eq(&'static str, i64),
    AtLeast(&'static str, i64),
    AtMost(&'static str, i64),
}

pub struct Rule {
    pub case: &'static str,
    /// Only on topologies whose p2plab devices can count (qemu-nvme has no counters).
    pub needs_p2plab_roles: bool,
    pub expect: &'static [Expect],
}

/// The table (empty for now; issue #6 fills it).
pub const RULES: &[Rule] = &[];

pub fn check(case: &str, topo: &Topology, delta: &Value) -> Vec<String> {
    check_rules(RULES, case, topo, delta)
}

fn check_rules(rules: &[Rule], case: &str, topo: &Topology, delta: &Value) -> Vec<String> {
    let role_is_p2plab = |r: &Option<String>| r.as_deref().and_then(|n| topo.device(n)).is_some_and(|d| d.kind.is_p2plab());
    let subst = |p: &str| {
        p.replace("{client}", topo.roles.client.as_deref().unwrap_or("?"))
            .replace("{provider}", topo.roles.provider.as_deref().unwrap_or("?"))
    };
    let mut fails = vec![];
    for r in rules.iter().filter(|r| r.case == case) {
        if r.needs_p2plab_roles && !(role_is_p2plab(&topo.roles.client) && role_is_p2plab(&topo.roles.provider)) {
            continue;
        }
        for e in r.expect {
            let (path, ok, want): (&str, fn(i64, i64) -> bool, String) = match *e {
                Expect::Eq(p, v) => (p, |s, v| s == v, format!("== {v}")),
                Expect::AtLeast(p, v) => (p, |s, v| s >= v, format!(">= {v}")),
                Expect::AtMost(p, v) => (p, |s, v| s <= v, format!("<= {v}")),
            };
            let v = match *e {
                Expect::Eq(_, v) | Expect::AtLeast(_, v) | Expect::AtMost(_, v) => v,
            };
            let path = subst(path);
            match leaf(delta, &path) {
                Some(seen) if ok(seen, v) => {}
                Some(seen) => fails.push(format!("counter {path}: expected {want}, seen {seen}")),
                None => fails.push(format!("counter {path}: expected {want}, seen nothing (no such counter)")),
            }
        }
    }
    fails
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn topo() -> Topology {
        let mut t: Topology = toml::from_str(
            "[roles]\nclient='nvme0'\nprovider='gpu0'\n[[device]]\nname='nvme0'\nkind='nvme'\n[[device]]\nname='gpu0'\nkind='gpu'\n",
        )
        .unwrap();
        t.name = "t".into();
        t
    }

    #[test]
    fn failure_names_counter_expected_and_seen() {
        const R: &[Rule] = &[Rule {
            case: "p2p-read",
            needs_p2plab_roles: true,
            expect: &[Expect::AtLeast("devices[{client}].dma.peers.{provider}.write_bytes", 64)],
        }];
        let d = json!({"devices": [{"name": "nvme0", "dma": {"peers": {"gpu0": {"write_bytes": 3}}}}]});
        let f = check_rules(R, "p2p-read", &topo(), &d);
        assert_eq!(f, vec!["counter devices[nvme0].dma.peers.gpu0.write_bytes: expected >= 64, seen 3".to_string()]);
        assert!(check_rules(R, "other", &topo(), &d).is_empty());
    }
}
