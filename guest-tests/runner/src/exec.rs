//! The `exec` case: a developer's own command (`p2plab run --exec CMD`), run after the
//! lab's cases. Its exit status is the case's result; its output goes to the console,
//! where the host files it under `cases/exec/output.log`.
//!
//! The command runs with `sh -c` in the lab's busybox image, or (`--userland`) with
//! `bash -c` chrooted into the toolroot's Debian userland at `/userland`. Its working
//! directory is `/host` (the `--share` directory) when there is one. The environment
//! names the lab's devices so scripts need not search for them: `P2PLAB_<NAME>_PCI`,
//! `P2PLAB_<NAME>_NVME` (controller), `P2PLAB_<NAME>_NS` (namespace block device), and
//! `P2PLAB_CLIENT_NS`, `P2PLAB_PROVIDER_PCI` for the roles.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::cases::Ctx;
use crate::devices::Role;

fn var(name: &str, what: &str) -> String {
    let up: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("P2PLAB_{up}_{what}")
}

/// The `exec` case (`p2plab_guest_abi::CaseId::Exec`, which the host adds to the run's
/// cases when `--exec` is given).
pub fn run(ctx: &mut Ctx) -> Result<(), String> {
    let cfg = ctx
        .exec
        .ok_or("run.json has no exec command (p2plab run --exec CMD)")?;
    let in_userland = cfg.userland && Path::new("/userland/bin/bash").exists();
    if cfg.userland && !in_userland {
        return Err("--userland: /userland has no bash (was the toolroot shared?)".into());
    }
    let cwd = if Path::new("/host").is_dir() {
        "/host"
    } else {
        "/"
    };
    let mut c = if in_userland {
        let mut c = Command::new("chroot");
        c.args(["/userland", "/bin/bash", "-c"])
            .arg(format!("cd {cwd} && {}", cfg.command));
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&cfg.command).current_dir(cwd);
        c
    };
    c.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env("HOME", "/root")
    .stdin(Stdio::null());
    for d in &ctx.env.devices {
        if let Some(b) = &d.bdf {
            c.env(var(&d.info.name, "PCI"), b);
        }
        if let Some(n) = &d.ctrl {
            c.env(var(&d.info.name, "NVME"), format!("/dev/{n}"));
        }
        if let Some(n) = &d.ns {
            c.env(var(&d.info.name, "NS"), n);
        }
    }
    if let Some(ns) = ctx.env.role(Role::Client).ok().and_then(|d| d.ns.clone()) {
        c.env("P2PLAB_CLIENT_NS", ns);
    }
    if let Some(b) = ctx
        .env
        .role(Role::Provider)
        .ok()
        .and_then(|d| d.bdf.clone())
    {
        c.env("P2PLAB_PROVIDER_PCI", b);
    }
    ctx.diag(&format!(
        "exec{}: {}",
        if in_userland { " (userland)" } else { "" },
        cfg.command
    ));
    let status = c
        .status()
        .map_err(|e| format!("cannot start the command: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("killed ({status})"),
        })
    }
}
