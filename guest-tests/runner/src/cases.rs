//! The case table. To add a case: write `fn run(&mut Ctx) -> Result<(), String>` in a
//! module under `cases/` (one module per family), then add one `Case` row here saying
//! where it applies. The host (`p2plab run`) reads this table through `--list-json` to
//! pick the default cases of a topology, so the row is the only registration.

mod nvme;
mod p2p;

use crate::console::Console;
use crate::devices::Env;

/// Where a case applies, judged by the host from the topology.
#[derive(Clone, Copy)]
pub enum When {
    /// Any topology that has the case's roles.
    Any,
    /// Client and provider may do P2P: both below the switch, or an AMD host bridge.
    P2pAllowed,
    /// Client and provider may not do P2P (separate root ports, no whitelisted bridge).
    P2pRefused,
}

impl When {
    fn as_str(self) -> &'static str {
        match self {
            When::Any => "any",
            When::P2pAllowed => "p2p-allowed",
            When::P2pRefused => "p2p-refused",
        }
    }
}

pub struct Case {
    pub name: &'static str,
    pub description: &'static str,
    pub when: When,
    /// Roles the topology must define ("client", "provider").
    pub roles: &'static [&'static str],
    /// Optional image layers the case needs ("fio").
    pub tools: &'static [&'static str],
    pub run: fn(&mut Ctx) -> Result<(), String>,
}

pub struct Ctx<'a> {
    pub env: &'a Env,
    pub con: &'a mut Console,
}

impl Ctx<'_> {
    /// A KTAP diagnostic line.
    pub fn diag(&mut self, s: &str) {
        self.con.line(&format!("# {s}"));
    }
}

pub const CASES: &[Case] = &[
    Case {
        name: "nvme-identify",
        description: "the client NVMe controller is bound to nvme, live, with the topology's serial and a namespace",
        when: When::Any,
        roles: &["client"],
        tools: &[],
        run: nvme::identify,
    },
    Case {
        name: "cmb-p2pmem",
        description: "every NVMe CMB of the client/provider is published as p2pmem (>= 64 MiB, dmesg says so)",
        when: When::Any,
        roles: &["client"],
        tools: &[],
        run: nvme::cmb_p2pmem,
    },
    Case {
        name: "p2p-read",
        description: "O_DIRECT pread 64 MiB (1 MiB chunks) from the client namespace into the provider's p2pmem, verified",
        when: When::P2pAllowed,
        roles: &["client", "provider"],
        tools: &[],
        run: p2p::read,
    },
    Case {
        name: "p2p-write",
        description: "O_DIRECT pwrite 64 MiB from the provider's p2pmem to the client namespace, read back and verified",
        when: When::P2pAllowed,
        roles: &["client", "provider"],
        tools: &[],
        run: p2p::write,
    },
    Case {
        name: "p2p-refused",
        description: "O_DIRECT pread from the client namespace into the provider's p2pmem fails with EINVAL",
        when: When::P2pRefused,
        roles: &["client", "provider"],
        tools: &[],
        run: p2p::refused,
    },
];

pub fn table_json() -> serde_json::Value {
    serde_json::Value::Array(
        CASES
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "description": c.description,
                    "when": c.when.as_str(),
                    "roles": c.roles,
                    "tools": c.tools,
                })
            })
            .collect(),
    )
}
