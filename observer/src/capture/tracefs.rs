//! tracefs: make sure it is mounted (and unmount it on exit if we mounted it), and read
//! tracepoint field offsets from its `format` files.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use observer_common::TcpTupleOffsets;

const TRACEFS: &str = "/sys/kernel/tracing";

/// Holds tracefs mounted for as long as the agent runs.
pub struct TracefsGuard {
    root: PathBuf,
    mounted_by_us: bool,
}

impl TracefsGuard {
    /// Find tracefs, mounting it at `/sys/kernel/tracing` when it is missing.
    pub fn ensure() -> anyhow::Result<Self> {
        for root in [TRACEFS, "/sys/kernel/debug/tracing"] {
            match std::fs::metadata(Path::new(root).join("events")) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                    "cannot read tracefs at {root}: missing privileges (run as root, or grant \
                     CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
                ),
                _ => {}
            }
            if Path::new(root).join("events").is_dir() {
                return Ok(Self {
                    root: root.into(),
                    mounted_by_us: false,
                });
            }
        }
        let target = CString::new(TRACEFS).expect("no NUL");
        let fstype = CString::new("tracefs").expect("no NUL");
        // SAFETY: plain mount(2) call with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                bail!(
                    "tracefs is not mounted and mounting it at {TRACEFS} was refused ({err}): \
                     missing privileges (run as root, or mount it first with \
                     `mount -t tracefs nodev {TRACEFS}` and grant CAP_BPF, CAP_PERFMON, \
                     CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
                );
            }
            bail!(
                "tracefs is not mounted and mounting it at {TRACEFS} failed: {err} \
                 (mount it: mount -t tracefs nodev {TRACEFS})"
            );
        }
        tracing::info!("mounted tracefs at {TRACEFS}");
        Ok(Self {
            root: TRACEFS.into(),
            mounted_by_us: true,
        })
    }

    /// Offsets of the address fields of `tcp:tcp_rcv_space_adjust` on this kernel.
    /// Offset of `field` in tracepoint `event` (`category/name`).
    pub fn field_offset(&self, event: &str, field: &str) -> anyhow::Result<u32> {
        let path = self.root.join(format!("events/{event}/format"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        field_offset(&text, field).with_context(|| format!("field {field} missing from {event}"))
    }

    pub fn tcp_tuple_offsets(&self) -> anyhow::Result<TcpTupleOffsets> {
        let path = self.root.join("events/tcp/tcp_rcv_space_adjust/format");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        parse_tuple_offsets(&text)
    }
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        if self.mounted_by_us {
            let target = CString::new(TRACEFS).expect("no NUL");
            // SAFETY: umount2 with a valid path; MNT_DETACH so busy handles do not block.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Offset of field `name` in a tracefs `format` file.
pub fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let field = decl.split_whitespace().last()?;
        let field = field.split('[').next()?;
        if field != name {
            return None;
        }
        let offset = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        offset.trim().parse().ok()
    })
}

pub fn parse_tuple_offsets(format: &str) -> anyhow::Result<TcpTupleOffsets> {
    let get = |name| {
        field_offset(format, name)
            .with_context(|| format!("field {name} missing from tcp_rcv_space_adjust"))
    };
    Ok(TcpTupleOffsets {
        sport: get("sport")?,
        dport: get("dport")?,
        family: get("family")?,
        saddr: get("saddr")?,
        daddr: get("daddr")?,
        saddr_v6: get("saddr_v6")?,
        daddr_v6: get("daddr_v6")?,
        valid: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: tcp_rcv_space_adjust
ID: 2277
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;
";

    #[test]
    fn offsets_from_format_file() {
        let o = parse_tuple_offsets(FORMAT).unwrap();
        assert_eq!(
            (o.sport, o.dport, o.family, o.saddr, o.daddr, o.saddr_v6, o.daddr_v6),
            (16, 18, 20, 22, 26, 30, 46)
        );
        assert_eq!(o.valid, 1);
        assert_eq!(field_offset(FORMAT, "common_pid"), Some(4));
        assert_eq!(field_offset(FORMAT, "nope"), None);
    }

    #[test]
    fn missing_field_is_an_error() {
        let err = parse_tuple_offsets("format:\n\tfield:__u16 sport;\toffset:16;\n").unwrap_err();
        assert!(err.to_string().contains("dport"), "{err}");
    }
}
