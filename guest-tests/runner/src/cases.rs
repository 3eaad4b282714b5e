//! The case table. To add a case: write `fn run(&mut Ctx) -> Result<(), String>` in a
//! module under `cases/` (one module per family), then add one `Case` row here saying
//! where it applies. The host (`p2plab run`) reads this table through `--list-json` to
//! pick the default cases of a topology, so the row is the only registration.

mod bench;
mod dmabuf;
mod gpu;
mod nvme;
mod p2p;
mod pci;
mod uring;
mod uring_dmabuf;

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
    /// Set by [`Ctx::skip`]: the case could not run on this kernel (reported
    /// `ok N name # SKIP reason`, counted as skipped, never as passed).
    pub skipped: Option<String>,
}

impl Ctx<'_> {
    /// End the case as skipped: `return ctx.skip("why")`.
    pub fn skip(&mut self, why: &str) -> Result<(), String> {
        self.diag(&format!("SKIP: {why}"));
        self.skipped = Some(why.to_string());
        Ok(())
    }

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
    Case {
        name: "cmb-read",
        description: "O_DIRECT pread 64 MiB from the client namespace into the client's OWN CMB p2pmem, verified",
        when: When::Any,
        roles: &["client"],
        tools: &[],
        run: nvme::cmb_read,
    },
    Case {
        name: "sqs-in-cmb",
        description: "the driver put the client's I/O SQs in its CMB (use_cmb_sqes, p2pmem in use); 1000 x 4 KiB O_DIRECT reads verified",
        when: When::Any,
        roles: &["client"],
        tools: &[],
        run: nvme::sqs_in_cmb,
    },
    Case {
        name: "vendor-log",
        description: "nvme get-log 0xC0 returns the fabric's counters JSON; the client's host-memory writes grow by a known O_DIRECT read",
        when: When::Any,
        roles: &["client"],
        tools: &[],
        run: nvme::vendor_log_case,
    },
    Case {
        name: "fio-verify",
        description: "fio randwrite + crc32c verify over 256 MiB of the client namespace at QD 1 and 32 (libaio, direct), zero errors",
        when: When::Any,
        roles: &["client"],
        tools: &["fio"],
        run: nvme::fio_verify,
    },
    Case {
        name: "nvme-nvme-copy",
        description: "client namespace -> peer NVMe CMB p2pmem -> peer namespace (64 MiB, like p2pmem-test), read back and verified",
        when: When::Any,
        roles: &["client", "peer"],
        tools: &[],
        run: nvme::nvme_nvme_copy,
    },
    Case {
        name: "p2p-host-bridge",
        description: "client and provider on different root ports of an AMD (EPYC) host bridge: the P2P read works, verified",
        when: When::P2pAllowed,
        roles: &["client", "provider"],
        tools: &[],
        run: nvme::p2p_host_bridge,
    },
    Case {
        name: "pci-config",
        description: "the p2plab devices' config space as designed: IDs, class, BAR sizes/flags, PM/MSI-X/PCIe caps, DSN, ReBAR",
        when: When::Any,
        roles: &[],
        tools: &[],
        run: pci::config,
    },
    Case {
        name: "flr-reset",
        description: "the client NVMe controller, nvme unbound, goes through an FLR (sysfs reset, reset_method flr): registers back to power-on; rebound, Identify and a 4 MiB O_DIRECT write+read verify work",
        when: When::Any,
        roles: &["client"],
        tools: &[],
        run: pci::flr_reset,
    },
    Case {
        name: "copy-engine",
        description: "GPU copy engine: RAM -> VRAM -> client CMB -> VRAM -> RAM (64 MiB), verified in RAM and by the checksum engine",
        when: When::P2pAllowed,
        roles: &["client", "provider"],
        tools: &[],
        run: gpu::copy_engine,
    },
    Case {
        name: "dmabuf-export",
        description: "export a VRAM range as a page-less dma-buf; attach+map as the GPU and as the client: DMA address = BAR2 bus address + offset",
        when: When::P2pAllowed,
        roles: &["client", "provider"],
        tools: &[],
        run: gpu::dmabuf_export,
    },
    Case {
        name: "io-uring-p2p",
        description: "io_uring READ/WRITE (O_DIRECT, non-fixed) 64 MiB namespace <-> GPU p2pmem, verified by the checksum engine",
        when: When::P2pAllowed,
        roles: &["client", "provider"],
        tools: &[],
        run: uring::io_uring_p2p,
    },
    Case {
        name: "cpu-copy",
        description: "the CPU stores 64 MiB into GPU p2pmem (64-bit stores) and loads it back, verified (CPU witness contrast case)",
        when: When::Any,
        roles: &["provider"],
        tools: &[],
        run: gpu::cpu_copy,
    },
    Case {
        name: "dmabuf-peer-copy",
        description: "page-less: the importer GPU's copy engine writes 64 MiB into the exporter GPU's VRAM through an imported dma-buf (exporter has no p2pmem), checksum-verified; map counts back to 0",
        when: When::Any,
        roles: &["importer", "exporter"],
        tools: &[],
        run: dmabuf::peer_copy,
    },
    Case {
        name: "dmabuf-revoke",
        description: "page-less: exporter invalidates -> the importer re-maps on the next copy; exporter revokes -> the next copy fails with ENODEV and moves nothing",
        when: When::Any,
        roles: &["importer", "exporter"],
        tools: &[],
        run: dmabuf::revoke,
    },
    Case {
        name: "dmabuf-unbind",
        description: "page-less: unbind the exporter while the importer holds a mapping and a copy is in flight: no hang, no leak, rebind works",
        when: When::Any,
        roles: &["importer", "exporter"],
        tools: &[],
        run: dmabuf::unbind,
    },
    Case {
        name: "uring-dmabuf-read",
        description: "series: a p2pgpu dma-buf registered as an io_uring buffer for the client namespace; 64 MiB READ_FIXED at QD 1/8/32 and shifted offsets, checked by the checksum engine (SKIP without the series)",
        when: When::Any,
        roles: &["client", "exporter"],
        tools: &[],
        run: uring_dmabuf::read,
    },
    Case {
        name: "uring-dmabuf-write",
        description: "series: WRITE_FIXED 64 MiB from the dma-buf to the namespace, read back through RAM and compared (SKIP without the series)",
        when: When::Any,
        roles: &["client", "exporter"],
        tools: &[],
        run: uring_dmabuf::write,
    },
    Case {
        name: "uring-dmabuf-invalidate",
        description: "series: the exporter invalidates during 64 MiB of reads (all complete, right data, -EAGAIN reissued, mapping rebuilt); revoke -> ENODEV; unregister -> 0 maps (SKIP without the series)",
        when: When::Any,
        roles: &["client", "exporter"],
        tools: &[],
        run: uring_dmabuf::invalidate,
    },
    Case {
        name: "uring-dmabuf-errors",
        description: "series: refused registrations (not a dma-buf, tmpfs target, size/reserved set, bad fd) and I/O (past/straddling the end, misaligned, another fd) fail with the series' errnos (SKIP without the series)",
        when: When::Any,
        roles: &["client", "exporter"],
        tools: &[],
        run: uring_dmabuf::errors,
    },
    Case {
        name: "uring-dmabuf-refused",
        description: "series: client and GPU on separate root ports: the first READ_FIXED into the dma-buf fails with EINVAL, nothing moves (SKIP without the series)",
        when: When::P2pRefused,
        roles: &["client", "provider"],
        tools: &[],
        run: uring_dmabuf::refused,
    },
    Case {
        name: "uring-dmabuf-buffered",
        description: "series regression: O_DIRECT cleared after registration: READ/WRITE_FIXED must fail or move the right bytes (VRAM and the disk block checked) (SKIP without the series)",
        when: When::Any,
        roles: &["client", "exporter"],
        tools: &[],
        run: uring_dmabuf::buffered,
    },
    Case {
        name: "uring-dmabuf-large",
        description: "series regression: 4 and 8 MiB inline READ/WRITE_FIXED, then revoke within 30 s (a hang is reported with the blocked tasks, the run goes on) (SKIP without the series)",
        when: When::Any,
        roles: &["client", "exporter"],
        tools: &[],
        run: uring_dmabuf::large,
    },
    Case {
        name: "bench",
        description: "figures for `p2plab bench`, 5 samples each (fio randread/sequential, NVMe<->RAM, P2P read/write, own CMB, CPU on p2pmem); on request only",
        when: When::Any,
        roles: &["client", "provider"],
        tools: &["fio"],
        run: bench::bench,
    },
];

/// Further conditions on the topology, by case name (judged by the host, `p2plab run`):
/// - `p2plab-client`: the client is a p2plab NVMe controller (its counters, vendor log, CMB SQs);
/// - `client-cmb`: the client is an NVMe controller with a CMB;
/// - `p2plab-peer`: the peer role is a p2plab NVMe controller with a CMB;
/// - `root-ports`: client and provider are not both below the switch;
/// - `p2plab-device`: the topology has at least one p2plab device;
/// - `gpu-provider`: the provider is a p2plab GPU-like device (p2pgpu driver, checksum engine).
pub const NEEDS: &[(&str, &[&str])] = &[
    ("cmb-read", &["client-cmb"]),
    ("sqs-in-cmb", &["p2plab-client"]),
    ("vendor-log", &["p2plab-client"]),
    ("fio-verify", &["p2plab-client"]),
    ("nvme-nvme-copy", &["p2plab-client", "p2plab-peer"]),
    ("p2p-host-bridge", &["root-ports"]),
    ("pci-config", &["p2plab-device"]),
    ("flr-reset", &["p2plab-client"]),
    ("copy-engine", &["gpu-provider", "client-cmb"]),
    ("dmabuf-export", &["gpu-provider"]),
    ("io-uring-p2p", &["gpu-provider"]),
    ("cpu-copy", &["gpu-provider"]),
    ("uring-dmabuf-read", &["p2plab-client"]),
    ("uring-dmabuf-write", &["p2plab-client"]),
    ("uring-dmabuf-invalidate", &["p2plab-client"]),
    ("uring-dmabuf-errors", &["p2plab-client"]),
    ("uring-dmabuf-refused", &["p2plab-client", "gpu-provider"]),
    ("uring-dmabuf-buffered", &["p2plab-client"]),
    ("uring-dmabuf-large", &["p2plab-client"]),
    ("bench", &["on-request"]),
];

fn needs(case: &str) -> &'static [&'static str] {
    NEEDS.iter().find(|n| n.0 == case).map_or(&[], |n| n.1)
}

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
                    "needs": needs(c.name),
                })
            })
            .collect(),
    )
}
