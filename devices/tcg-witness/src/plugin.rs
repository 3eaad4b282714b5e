//! The QEMU side: plugin exports, the few API functions used, argument parsing.
//!
//! QEMU API functions are resolved at install time with `dlsym(RTLD_DEFAULT)` (QEMU
//! exports them from its executable) instead of being linked as undefined symbols, so
//! the rlib links into ordinary binaries and tests, and a QEMU lacking one of them is
//! refused with a message instead of a loader error.
//!
//! Declarations are written for plugin API **version 7** as QEMU 11.1.3 implements it,
//! checked against the shipped binary's code (`qemu_plugin_tb_trans_cb` calls
//! `cb(tb, userdata)`; `qemu_plugin_atexit_cb` calls `cb(userdata)`;
//! `qemu_plugin_register_vcpu_mem_cb(insn, cb, flags, rw, userdata)`). Version 7 added
//! `userdata` to all callbacks and dropped the plugin id from the translation and
//! exit callbacks, so v6 plugins' signatures do not apply.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::control;
use crate::table::{Access, Witness};

/// The plugin API version this plugin is written against (`QEMU_PLUGIN_VERSION`).
pub const PLUGIN_API_VERSION: c_int = 7;

/// Exported for QEMU's loader, which refuses plugins outside its `[min, cur]` API range.
#[unsafe(no_mangle)]
pub static qemu_plugin_version: c_int = PLUGIN_API_VERSION;

/// `qemu_plugin_id_t`.
type PluginId = u64;
/// `qemu_plugin_meminfo_t`: opaque packed access description.
type MemInfo = u32;

/// `struct qemu_plugin_tb` (opaque).
#[repr(C)]
struct Tb {
    _opaque: [u8; 0],
}
/// `struct qemu_plugin_insn` (opaque).
#[repr(C)]
struct Insn {
    _opaque: [u8; 0],
}
/// `struct qemu_plugin_hwaddr` (opaque; valid only during the memory callback).
#[repr(C)]
struct Hwaddr {
    _opaque: [u8; 0],
}

/// `qemu_info_t`, as far as this plugin reads it (fields after `system_emulation` are a
/// union QEMU owns; we only read through a pointer, never construct one).
#[repr(C)]
pub struct QemuInfo {
    target_name: *const c_char,
    version_min: c_int,
    version_cur: c_int,
    system_emulation: bool,
}

/// `enum qemu_plugin_cb_flags`: `QEMU_PLUGIN_CB_NO_REGS` (the callback reads no
/// registers, so QEMU need not sync them before calling it).
const CB_NO_REGS: c_int = 0;
/// `enum qemu_plugin_mem_rw`: reads and writes.
const MEM_RW: c_int = 3;

type TbTransCb = extern "C" fn(tb: *mut Tb, userdata: *mut c_void);
type MemCb = extern "C" fn(vcpu: c_uint, info: MemInfo, vaddr: u64, userdata: *mut c_void);
type UdataCb = extern "C" fn(userdata: *mut c_void);

/// The QEMU functions used, resolved once at install.
struct Api {
    register_vcpu_tb_trans_cb: unsafe extern "C" fn(PluginId, TbTransCb, *mut c_void),
    tb_n_insns: unsafe extern "C" fn(*const Tb) -> usize,
    tb_get_insn: unsafe extern "C" fn(*const Tb, usize) -> *mut Insn,
    register_vcpu_mem_cb: unsafe extern "C" fn(*mut Insn, MemCb, c_int, c_int, *mut c_void),
    get_hwaddr: unsafe extern "C" fn(MemInfo, u64) -> *const Hwaddr,
    hwaddr_is_io: unsafe extern "C" fn(*const Hwaddr) -> bool,
    hwaddr_phys_addr: unsafe extern "C" fn(*const Hwaddr) -> u64,
    mem_size_shift: unsafe extern "C" fn(MemInfo) -> c_uint,
    mem_is_store: unsafe extern "C" fn(MemInfo) -> bool,
    register_atexit_cb: unsafe extern "C" fn(PluginId, UdataCb, *mut c_void),
}

/// Look up one QEMU symbol as a function pointer of type `F`.
///
/// # Safety
/// `F` must be an `extern "C"` function pointer type matching the C signature of
/// `name` in the running QEMU.
unsafe fn resolve<F: Copy>(name: &CStr) -> Result<F, String> {
    const { assert!(size_of::<F>() == size_of::<*mut c_void>()) };
    // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT searches the global scope, which
    // includes the QEMU executable's dynamic symbols.
    let ptr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if ptr.is_null() {
        return Err(format!("QEMU does not export {}", name.to_string_lossy()));
    }
    // SAFETY: `ptr` is the address of the function `name`; the caller guarantees `F`
    // is its signature; sizes are equal (checked above).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
}

impl Api {
    fn resolve() -> Result<Self, String> {
        // SAFETY: each type below is the C signature of the named function in QEMU
        // 11.1's plugin API v7 (see the module docs for how it was checked).
        unsafe {
            Ok(Self {
                register_vcpu_tb_trans_cb: resolve(c"qemu_plugin_register_vcpu_tb_trans_cb")?,
                tb_n_insns: resolve(c"qemu_plugin_tb_n_insns")?,
                tb_get_insn: resolve(c"qemu_plugin_tb_get_insn")?,
                register_vcpu_mem_cb: resolve(c"qemu_plugin_register_vcpu_mem_cb")?,
                get_hwaddr: resolve(c"qemu_plugin_get_hwaddr")?,
                hwaddr_is_io: resolve(c"qemu_plugin_hwaddr_is_io")?,
                hwaddr_phys_addr: resolve(c"qemu_plugin_hwaddr_phys_addr")?,
                mem_size_shift: resolve(c"qemu_plugin_mem_size_shift")?,
                mem_is_store: resolve(c"qemu_plugin_mem_is_store")?,
                register_atexit_cb: resolve(c"qemu_plugin_register_atexit_cb")?,
            })
        }
    }
}

/// Parsed `-plugin` arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `ranges=FILE`: ranges JSON, read at install and re-read whenever it changes.
    pub ranges: Option<PathBuf>,
    /// `control=PATH`: UNIX socket for the control protocol.
    pub control: Option<PathBuf>,
    /// `out=FILE`: write the final snapshot here at exit.
    pub out: Option<PathBuf>,
    /// `poll_ms=N`: ranges file poll period (default 200; 0 disables polling).
    pub poll_ms: u64,
}

/// Parse `name=value` plugin arguments.
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Args, String> {
    let mut out = Args {
        poll_ms: 200,
        ..Args::default()
    };
    for arg in args {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("argument {arg:?} is not name=value"))?;
        match name {
            "ranges" => out.ranges = Some(value.into()),
            "control" => out.control = Some(value.into()),
            "out" => out.out = Some(value.into()),
            "poll_ms" => {
                out.poll_ms = value.parse().map_err(|e| format!("poll_ms={value}: {e}"))?
            }
            _ => {
                return Err(format!(
                    "unknown argument {name:?} (ranges, control, out, poll_ms)"
                ))
            }
        }
    }
    Ok(out)
}

struct Plugin {
    api: Api,
    witness: Arc<Witness>,
    args: Args,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

/// Every guest load/store of an instrumented instruction lands here (vCPU thread).
extern "C" fn on_mem(_vcpu: c_uint, info: MemInfo, vaddr: u64, _userdata: *mut c_void) {
    let _ = catch_unwind(|| {
        let Some(p) = PLUGIN.get() else { return };
        if !p.witness.armed() {
            return;
        }
        // SAFETY: called from a memory callback with that callback's `info` and
        // `vaddr`, as the API requires.
        let h = unsafe { (p.api.get_hwaddr)(info, vaddr) };
        if h.is_null() {
            return;
        }
        // SAFETY: `h` is non-null and valid for the duration of this callback.
        let addr = unsafe { (p.api.hwaddr_phys_addr)(h) };
        p.witness.record_with(addr, || {
            // SAFETY: `info` is this callback's meminfo; `h` is non-null and still
            // valid (we are inside the callback).
            unsafe {
                let bytes = 1u64 << ((p.api.mem_size_shift)(info) & 63);
                let access = if (p.api.mem_is_store)(info) {
                    Access::Store
                } else {
                    Access::Load
                };
                (bytes, access, (p.api.hwaddr_is_io)(h))
            }
        });
    });
}

/// Instrument every instruction of a newly translated block (vCPU thread).
extern "C" fn on_tb_trans(tb: *mut Tb, _userdata: *mut c_void) {
    let _ = catch_unwind(|| {
        let Some(p) = PLUGIN.get() else { return };
        // SAFETY: `tb` is the handle QEMU passed to this translation callback.
        let n = unsafe { (p.api.tb_n_insns)(tb) };
        for i in 0..n {
            // SAFETY: `i < n`, and `tb` is valid during the translation callback; the
            // returned insn handle is used before the callback returns.
            unsafe {
                let insn = (p.api.tb_get_insn)(tb, i);
                (p.api.register_vcpu_mem_cb)(
                    insn,
                    on_mem,
                    CB_NO_REGS,
                    MEM_RW,
                    std::ptr::null_mut(),
                );
            }
        }
    });
}

/// QEMU is exiting: dump the final snapshot, remove the control socket.
extern "C" fn on_exit(_userdata: *mut c_void) {
    let _ = catch_unwind(|| {
        let Some(p) = PLUGIN.get() else { return };
        if let Some(out) = &p.args.out {
            let result = serde_json::to_vec(&p.witness.snapshot())
                .map_err(std::io::Error::other)
                .and_then(|json| std::fs::write(out, json));
            if let Err(e) = result {
                eprintln!("tcg-witness: writing {}: {e}", out.display());
            }
        }
        if let Some(sock) = &p.args.control {
            let _ = std::fs::remove_file(sock);
        }
    });
}

fn install(id: PluginId, info: &QemuInfo, args: Vec<&str>) -> Result<(), String> {
    if !info.system_emulation {
        return Err("needs system emulation (guest physical addresses)".into());
    }
    let args = parse_args(args)?;
    let api = Api::resolve()?;
    let witness = Arc::new(Witness::new());
    if let Some(file) = &args.ranges {
        control::load_ranges_file(&witness, file).map_err(|e| e.to_string())?;
        if args.poll_ms > 0 {
            control::spawn_file_watcher(
                Arc::clone(&witness),
                file.clone(),
                Duration::from_millis(args.poll_ms),
            )
            .map_err(|e| format!("ranges file watcher: {e}"))?;
        }
    }
    if let Some(sock) = &args.control {
        control::spawn_server(Arc::clone(&witness), sock, args.ranges.clone())
            .map_err(|e| format!("control socket {}: {e}", sock.display()))?;
    }
    let plugin = PLUGIN.get_or_init(|| Plugin { api, witness, args });
    // SAFETY: `id` is the id QEMU passed to `qemu_plugin_install`; the callbacks have
    // the v7 signatures (module docs) and ignore their null userdata.
    unsafe {
        (plugin.api.register_vcpu_tb_trans_cb)(id, on_tb_trans, std::ptr::null_mut());
        (plugin.api.register_atexit_cb)(id, on_exit, std::ptr::null_mut());
    }
    Ok(())
}

/// Plugin entry point, called once by QEMU's loader. Returns 0 on success.
///
/// # Safety
/// Called by QEMU only: `info` points to a valid `qemu_info_t` for the call, `argv`
/// to `argc` NUL-terminated strings that outlive the plugin.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qemu_plugin_install(
    id: PluginId,
    info: *const QemuInfo,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per this function's contract.
        let info = unsafe { info.as_ref() }.ok_or("no qemu_info_t")?;
        let argc = usize::try_from(argc).unwrap_or(0);
        let args = (0..argc)
            .map(|i| {
                // SAFETY: `i < argc` and each argv entry is a valid C string (contract).
                unsafe { CStr::from_ptr(*argv.add(i)) }
                    .to_str()
                    .map_err(|_| "non-UTF-8 argument".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        install(id, info, args)
    }));
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("tcg-witness: {e}");
            1
        }
        Err(_) => {
            eprintln!("tcg-witness: panic during install");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_arguments() {
        let a = parse_args([
            "ranges=/r.json",
            "control=/w.sock",
            "out=/o.json",
            "poll_ms=0",
        ])
        .unwrap();
        assert_eq!(
            a,
            Args {
                ranges: Some("/r.json".into()),
                control: Some("/w.sock".into()),
                out: Some("/o.json".into()),
                poll_ms: 0,
            }
        );
    }

    #[test]
    fn no_arguments_is_valid() {
        assert_eq!(parse_args([]).unwrap().poll_ms, 200);
    }

    #[test]
    fn rejects_unknown_and_malformed_arguments() {
        assert!(parse_args(["bogus=1"]).is_err());
        assert!(parse_args(["ranges"]).is_err());
        assert!(parse_args(["poll_ms=x"]).is_err());
    }
}
