//! The case table: every guest case, where it applies and what it needs.
//!
//! To add a case: one row in `case_table!`'s invocation below (its [`CaseId`]
//! variant, its name, where it applies), then one arm in the runner's `match` from
//! [`CaseId`] to the case's function (`guest-tests/runner/src/cases.rs`); the compiler
//! names a missing arm, an unknown [`Role`], [`Need`] or [`Group`]. The host
//! (`p2plab run`) picks a topology's default cases from [`CASES`]; the runner lists
//! them with `--list` / `--list-json`. A row may name a [`Group`]: `--cases <group>`
//! runs every case of it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::run::Role;

/// Where a case applies, judged by the host from the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    /// Any topology that has the case's roles.
    Any,
    /// Client and provider may do P2P: both below the switch, or an AMD host bridge.
    P2pAllowed,
    /// Client and provider may not do P2P (separate root ports, no whitelisted bridge).
    P2pRefused,
}

/// A further condition on the topology (judged by the host, `p2plab run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// The client is a p2plab NVMe controller (its counters, vendor log, CMB SQs).
    P2plabClient,
    /// The client is an NVMe controller with a CMB.
    ClientCmb,
    /// The peer role is a p2plab NVMe controller with a CMB.
    P2plabPeer,
    /// Client and provider are not both below the switch.
    RootPorts,
    /// The topology has at least one p2plab device.
    P2plabDevice,
    /// The provider is a p2plab GPU-like device (p2pgpu driver, checksum engine).
    GpuProvider,
    /// Runs only when named (`--cases bench`, `p2plab bench`), never by default.
    OnRequest,
    /// Runs only as the `--exec` command's case (`p2plab run --exec CMD` adds it).
    ExecCommand,
}

impl Need {
    /// The word `--list-json` and the host's messages use (`p2plab-client`).
    pub fn as_str(self) -> &'static str {
        match self {
            Need::P2plabClient => "p2plab-client",
            Need::ClientCmb => "client-cmb",
            Need::P2plabPeer => "p2plab-peer",
            Need::RootPorts => "root-ports",
            Need::P2plabDevice => "p2plab-device",
            Need::GpuProvider => "gpu-provider",
            Need::OnRequest => "on-request",
            Need::ExecCommand => "exec-command",
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named set of cases, run together with `--cases <group>` (in table order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// A hostile guest: the runner, with the devices' drivers unbound, drives them
    /// through raw BAR accesses with invalid values (doorbells, queue attributes, data
    /// pointers, copy descriptors) and checks the spec's answers, then resets them and
    /// hands them back to their drivers. Run by the suite on `switch`, before the
    /// topology's other cases.
    Hostile,
}

impl Group {
    /// Every group.
    pub const ALL: &'static [Group] = &[Group::Hostile];

    /// The word `--cases` takes (`hostile`).
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Hostile => "hostile",
        }
    }

    /// The group of this name.
    pub fn from_name(name: &str) -> Option<Group> {
        Group::ALL.iter().copied().find(|g| g.as_str() == name)
    }

    /// Its cases, in table order.
    pub fn cases(self) -> impl Iterator<Item = CaseId> {
        CASES
            .iter()
            .filter(move |c| c.group == Some(self))
            .map(|c| c.id)
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An optional image layer a case needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    /// fio and its libraries (~57 MB).
    Fio,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Case {
    #[serde(rename = "name")]
    pub id: CaseId,
    pub description: &'static str,
    pub when: When,
    /// Roles the topology must define.
    pub roles: &'static [Role],
    /// Optional image layers the case needs.
    pub tools: &'static [Tool],
    /// Further conditions on the topology.
    pub needs: &'static [Need],
    /// The group the case belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

impl Case {
    /// The case's name.
    pub fn name(&self) -> &'static str {
        self.id.name()
    }

    /// Its `--list` line: name, then description (and its group).
    pub fn list_line(&self) -> String {
        match self.group {
            Some(g) => format!("{:<16} [{g}] {}", self.name(), self.description),
            None => format!("{:<16} {}", self.name(), self.description),
        }
    }
}

/// Defines [`CaseId`] (with its names) and [`CASES`] (in the same order) from one list
/// of rows, so a case is named once.
macro_rules! case_table {
    ($(
        $(#[$meta:meta])*
        $id:ident = $name:literal {
            when: $when:ident,
            roles: [$($role:ident),* $(,)?],
            tools: [$($tool:ident),* $(,)?],
            needs: [$($need:ident),* $(,)?],
            $(group: $group:ident,)?
            description: $description:literal $(,)?
        }
    ),* $(,)?) => {
        /// A guest case (serialized as its name, `p2p-read`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum CaseId {
            $($(#[$meta])* $id,)*
        }

        impl CaseId {
            /// Every case, in table order.
            pub const ALL: &'static [CaseId] = &[$(CaseId::$id,)*];

            /// The case's name (`p2p-read`).
            pub fn name(self) -> &'static str {
                match self {
                    $(CaseId::$id => $name,)*
                }
            }
        }

        /// The case table, in run order.
        pub const CASES: &[Case] = &[$(
            Case {
                id: CaseId::$id,
                description: $description,
                when: When::$when,
                roles: &[$(Role::$role),*],
                tools: &[$(Tool::$tool),*],
                needs: &[$(Need::$need),*],
                group: case_group!($($group)?),
            },
        )*];
    };
}

/// A row's optional `group:` as an `Option<Group>`.
macro_rules! case_group {
    () => {
        None
    };
    ($group:ident) => {
        Some(Group::$group)
    };
}

case_table! {
    NvmeIdentify = "nvme-identify" {
        when: Any, roles: [Client], tools: [], needs: [],
        description: "the client NVMe controller is bound to nvme, live, with the topology's serial and a namespace",
    },
    CmbP2pmem = "cmb-p2pmem" {
        when: Any, roles: [Client], tools: [], needs: [],
        description: "every NVMe CMB of the client/provider is published as p2pmem (>= 64 MiB, dmesg says so)",
    },
    P2pRead = "p2p-read" {
        when: P2pAllowed, roles: [Client, Provider], tools: [], needs: [],
        description: "O_DIRECT pread 64 MiB (1 MiB chunks; 16 MiB with a QEMU NVMe end) from the client namespace into the provider's p2pmem, verified",
    },
    P2pWrite = "p2p-write" {
        when: P2pAllowed, roles: [Client, Provider], tools: [], needs: [],
        description: "O_DIRECT pwrite 64 MiB (16 MiB with a QEMU NVMe end) from the provider's p2pmem to the client namespace, read back and verified",
    },
    P2pRefused = "p2p-refused" {
        when: P2pRefused, roles: [Client, Provider], tools: [], needs: [],
        description: "O_DIRECT pread from the client namespace into the provider's p2pmem fails with EINVAL",
    },
    CmbRead = "cmb-read" {
        when: Any, roles: [Client], tools: [], needs: [ClientCmb],
        description: "O_DIRECT pread 64 MiB (16 MiB on a QEMU NVMe) from the client namespace into the client's OWN CMB p2pmem, verified",
    },
    SqsInCmb = "sqs-in-cmb" {
        when: Any, roles: [Client], tools: [], needs: [P2plabClient],
        description: "the driver put the client's I/O SQs in its CMB (use_cmb_sqes, p2pmem in use); 1000 x 4 KiB O_DIRECT reads verified",
    },
    VendorLog = "vendor-log" {
        when: Any, roles: [Client], tools: [], needs: [P2plabClient],
        description: "nvme get-log 0xC0 returns the fabric's counters JSON; the client's host-memory writes grow by a known O_DIRECT read",
    },
    FioVerify = "fio-verify" {
        when: Any, roles: [Client], tools: [Fio], needs: [P2plabClient],
        description: "fio randwrite + xxhash verify over 64 MiB of the client namespace at QD 1 and 32 (libaio, direct), zero errors",
    },
    IrqCoalescing = "irq-coalescing" {
        when: Any, roles: [Client], tools: [Fio], needs: [P2plabClient],
        description: "Set Features Interrupt Coalescing (THR 255, TIME 25.5 ms) on the client: fio 4 KiB randread at QD 32 on CPU 0 completes, at least 24 I/Os per interrupt of its I/O queues (/proc/interrupts; 3-20 without) and at most one interrupt per 25.5 ms of reading (+5); off again after",
    },
    PolledIo = "polled-io" {
        when: Any, roles: [Client], tools: [Fio], needs: [P2plabClient],
        description: "the driver's poll queue on the client (nvme.poll_queues=1 at run time, applied by a controller reset): its CQ has no interrupt; fio io_uring --hipri writes and xxhash-verifies 16 MiB through it while none of the controller's vectors fires; the boot's setting (and another reset) after",
    },
    NvmeNvmeCopy = "nvme-nvme-copy" {
        when: Any, roles: [Client, Peer], tools: [], needs: [P2plabClient, P2plabPeer],
        description: "client namespace -> peer NVMe CMB p2pmem -> peer namespace (64 MiB, like p2pmem-test), read back and verified",
    },
    P2pHostBridge = "p2p-host-bridge" {
        when: P2pAllowed, roles: [Client, Provider], tools: [], needs: [RootPorts],
        description: "client and provider on different root ports of an AMD (EPYC) host bridge: the P2P read works, verified",
    },
    PciConfig = "pci-config" {
        when: Any, roles: [], tools: [], needs: [P2plabDevice],
        description: "the p2plab devices' config space as designed: IDs, class, BAR sizes/flags, PM/MSI-X/PCIe caps, DSN, ReBAR",
    },
    FlrReset = "flr-reset" {
        when: Any, roles: [Client], tools: [], needs: [P2plabClient],
        description: "the client NVMe controller, nvme unbound, goes through an FLR (sysfs reset, reset_method flr): registers back to power-on; rebound, Identify and a 4 MiB O_DIRECT write+read verify work",
    },
    CopyEngine = "copy-engine" {
        when: P2pAllowed, roles: [Client, Provider], tools: [], needs: [GpuProvider, ClientCmb],
        description: "GPU copy engine: RAM -> VRAM -> client CMB -> VRAM -> RAM (64 MiB), verified in RAM and by the checksum engine",
    },
    DmabufExport = "dmabuf-export" {
        when: P2pAllowed, roles: [Client, Provider], tools: [], needs: [GpuProvider],
        description: "export a VRAM range as a page-less dma-buf; attach+map as the GPU and as the client: DMA address = BAR2 bus address + offset",
    },
    IoUringP2p = "io-uring-p2p" {
        when: P2pAllowed, roles: [Client, Provider], tools: [], needs: [GpuProvider],
        description: "io_uring READ/WRITE (O_DIRECT, non-fixed) 64 MiB namespace <-> GPU p2pmem, verified by the checksum engine",
    },
    CpuCopy = "cpu-copy" {
        when: Any, roles: [Provider], tools: [], needs: [GpuProvider],
        description: "the CPU stores 64 MiB into GPU p2pmem (64-bit stores) and loads it back, verified (CPU witness contrast case)",
    },
    DmabufPeerCopy = "dmabuf-peer-copy" {
        when: Any, roles: [Importer, Exporter], tools: [], needs: [],
        description: "page-less: the importer GPU's copy engine writes 64 MiB into the exporter GPU's VRAM through an imported dma-buf (exporter has no p2pmem), checksum-verified; map counts back to 0",
    },
    DmabufRevoke = "dmabuf-revoke" {
        when: Any, roles: [Importer, Exporter], tools: [], needs: [],
        description: "page-less: exporter invalidates -> the importer re-maps on the next copy; exporter revokes -> the next copy fails with ENODEV and moves nothing",
    },
    DmabufUnbind = "dmabuf-unbind" {
        when: Any, roles: [Importer, Exporter], tools: [], needs: [],
        description: "page-less: unbind the exporter while the importer holds a mapping and a copy is in flight: no hang, no leak, rebind works",
    },
    UringDmabufRead = "uring-dmabuf-read" {
        when: Any, roles: [Client, Exporter], tools: [], needs: [P2plabClient],
        description: "series: a p2pgpu dma-buf registered as an io_uring buffer for the client namespace; 64 MiB READ_FIXED at QD 1/8/32 and shifted offsets, checked by the checksum engine (SKIP without the series)",
    },
    UringDmabufWrite = "uring-dmabuf-write" {
        when: Any, roles: [Client, Exporter], tools: [], needs: [P2plabClient],
        description: "series: WRITE_FIXED 64 MiB from the dma-buf to the namespace, read back through RAM and compared (SKIP without the series)",
    },
    UringDmabufInvalidate = "uring-dmabuf-invalidate" {
        when: Any, roles: [Client, Exporter], tools: [], needs: [P2plabClient],
        description: "series: the exporter invalidates during 64 MiB of reads (all complete, right data, -EAGAIN reissued, mapping rebuilt); revoke -> ENODEV; unregister -> 0 maps (SKIP without the series)",
    },
    UringDmabufErrors = "uring-dmabuf-errors" {
        when: Any, roles: [Client, Exporter], tools: [], needs: [P2plabClient],
        description: "series: refused registrations (not a dma-buf, tmpfs target, size/reserved set, bad fd) and I/O (past/straddling the end, misaligned, another fd) fail with the series' errnos (SKIP without the series)",
    },
    UringDmabufRefused = "uring-dmabuf-refused" {
        when: P2pRefused, roles: [Client, Provider], tools: [], needs: [P2plabClient, GpuProvider],
        description: "series: client and GPU on separate root ports: the first READ_FIXED into the dma-buf fails with EINVAL, nothing moves (SKIP without the series)",
    },
    UringDmabufBuffered = "uring-dmabuf-buffered" {
        when: Any, roles: [Client, Exporter], tools: [], needs: [P2plabClient],
        description: "series regression: O_DIRECT cleared after registration: READ/WRITE_FIXED must fail or move the right bytes (VRAM and the disk block checked) (SKIP without the series)",
    },
    UringDmabufLarge = "uring-dmabuf-large" {
        when: Any, roles: [Client, Exporter], tools: [], needs: [P2plabClient],
        description: "series regression: 4 and 8 MiB inline READ/WRITE_FIXED, then revoke within 30 s (a hang is reported with the blocked tasks, the run goes on) (SKIP without the series)",
    },
    HostileNvmeRegs = "hostile-nvme-regs" {
        when: Any, roles: [Client], tools: [], needs: [P2plabClient, ClientCmb, OnRequest],
        group: Hostile,
        description: "nvme unbound, raw BAR0: AQA=0 (CFS); doorbells past a queue's size and of queues that do not exist (AERs: Invalid Doorbell Write Value, Write to Invalid Doorbell Register); CMBMSC pointing at RAM (CBAI, data stays in RAM); CC.EN cleared during I/O (RDY clears, nothing posted after); a controller reset after each, then rebound and live",
    },
    HostileNvmeDma = "hostile-nvme-dma" {
        when: Any, roles: [Client], tools: [], needs: [P2plabClient, ClientCmb, OnRequest],
        group: Hostile,
        description: "nvme unbound, raw queues: PRPs at unmapped and misaligned addresses, a looping PRP list and SGL segment, an SQ running past the CMB's end, bad queue ids and fields (the spec's statuses), an unreachable CQ and ASQ (CFS); nothing written outside the targets, the namespace intact; rebound and live",
    },
    HostileGpuCe = "hostile-gpu-ce" {
        when: Any, roles: [Provider], tools: [], needs: [GpuProvider, OnRequest],
        group: Hostile,
        description: "p2pgpu unbound, raw BAR0: copy descriptors with wild addresses, lengths past VRAM, bad length/flags, one rewriting its own ring (per-descriptor error status); rings in the registers, past the address space, a tail past the ring (halts); checksum past VRAM; nothing written outside the targets; rebound and working",
    },
    Bench = "bench" {
        when: Any, roles: [Client, Provider], tools: [Fio], needs: [OnRequest],
        description: "throughput figures for `p2plab bench` (NVMe<->RAM, P2P read/write, own CMB, CPU on p2pmem); on request only",
    },
    VramRss = "vram-rss" {
        when: Any, roles: [Client, Provider], tools: [], needs: [P2plabClient, GpuProvider, OnRequest],
        description: "for `p2plab bench` on a large-VRAM GPU: p2plab's RSS and the VRAM's resident bytes (vendor log 0xC0) after the CPU touches 0, 64 MiB and 1 GiB of provider p2pmem; on request only",
    },
    /// The developer's `--exec` command: `ok` iff it exits 0 (its output is kept as
    /// `cases/exec/output.log`).
    Exec = "exec" {
        when: Any, roles: [], tools: [Fio], needs: [ExecCommand],
        description: "the --exec command (busybox sh, or bash in the toolroot userland with --userland), after the cases: ok iff it exits 0",
    },
}

impl CaseId {
    /// The case of this name.
    pub fn from_name(name: &str) -> Option<CaseId> {
        CaseId::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Its row of [`CASES`].
    pub fn case(self) -> &'static Case {
        // CASES is generated from the same rows as CaseId, in the same order.
        &CASES[self as usize]
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for CaseId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for CaseId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        CaseId::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown case '{name}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_is_its_own_row() {
        assert_eq!(CaseId::ALL.len(), CASES.len());
        for (i, c) in CASES.iter().enumerate() {
            assert_eq!(c.id as usize, i);
            assert_eq!(c.id.case(), c);
            assert_eq!(CaseId::from_name(c.name()), Some(c.id));
        }
    }

    #[test]
    fn names_are_unique_and_fit_the_list() {
        let mut names: Vec<&str> = CASES.iter().map(Case::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
        assert!(names
            .iter()
            .all(|n| !n.is_empty() && !n.contains(char::is_whitespace)));
    }

    #[test]
    fn the_table_serializes_in_the_list_json_words() {
        let v = serde_json::to_value(CaseId::CopyEngine.case()).unwrap();
        assert_eq!(v["name"], "copy-engine");
        assert_eq!(v["when"], "p2p-allowed");
        assert_eq!(v["roles"], serde_json::json!(["client", "provider"]));
        assert_eq!(
            v["needs"],
            serde_json::json!(["gpu-provider", "client-cmb"])
        );
        assert_eq!(
            serde_json::to_value(CaseId::FioVerify.case()).unwrap()["tools"],
            serde_json::json!(["fio"])
        );
        assert_eq!(
            serde_json::from_str::<CaseId>("\"p2p-read\"").unwrap(),
            CaseId::P2pRead
        );
        assert!(serde_json::from_str::<CaseId>("\"no-such-case\"").is_err());
    }

    #[test]
    fn groups_name_their_cases_in_table_order() {
        let hostile: Vec<CaseId> = Group::Hostile.cases().collect();
        assert_eq!(
            hostile,
            [
                CaseId::HostileNvmeRegs,
                CaseId::HostileNvmeDma,
                CaseId::HostileGpuCe
            ]
        );
        assert_eq!(Group::from_name("hostile"), Some(Group::Hostile));
        assert!(Group::from_name("hostile-nvme-dma").is_none());
        for g in Group::ALL {
            assert!(
                CaseId::from_name(g.as_str()).is_none(),
                "a group is not named like a case"
            );
            // A group's cases are never defaults: they run when the group is named.
            assert!(g.cases().all(|c| c.case().needs.contains(&Need::OnRequest)));
        }
        let v = serde_json::to_value(CaseId::HostileGpuCe.case()).unwrap();
        assert_eq!(v["group"], "hostile");
        assert!(serde_json::to_value(CaseId::P2pRead.case())
            .unwrap()
            .get("group")
            .is_none());
        assert!(CaseId::HostileGpuCe
            .case()
            .list_line()
            .contains("[hostile]"));
    }

    #[test]
    fn need_words_are_their_serde_words() {
        for n in [
            Need::P2plabClient,
            Need::ClientCmb,
            Need::P2plabPeer,
            Need::RootPorts,
            Need::P2plabDevice,
            Need::GpuProvider,
            Need::OnRequest,
            Need::ExecCommand,
        ] {
            assert_eq!(serde_json::to_value(n).unwrap(), n.as_str());
        }
    }
}
