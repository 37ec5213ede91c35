//! The parts the eBPF build needs, installed idempotently:
//! - a nightly toolchain with `rust-src` (for `-Z build-std=core`);
//! - `bpf-linker`, built from crates.io and linked against the nightly's own libLLVM
//!   (no system LLVM of the right version exists on Debian 12).
//!
//! bpf-linker is cached per (LLVM major, nightly commit) under
//! `~/.cache/observer-tools/`, so a nightly update rebuilds it and a second run is instant.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13.0 has features for.
const SUPPORTED_LLVM: &[u32] = &[21, 22, 23];

/// What later cargo calls need: a PATH with bpf-linker on it.
pub struct Env {
    pub path: String,
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_version() -> Result<String> {
    output(Command::new("rustc").args(["+nightly", "-vV"]))
}

fn ensure_nightly() -> Result<String> {
    if let Ok(v) = nightly_version() {
        return Ok(v);
    }
    eprintln!("xtask: installing the nightly toolchain (minimal, with rust-src)");
    let status = Command::new("rustup")
        .args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("rustup could not install the nightly toolchain");
    }
    nightly_version()
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("rustup could not add rust-src");
    }
    Ok(())
}

/// `(llvm major, short commit hash)` from `rustc -vV` output.
pub fn parse_version(verbose: &str) -> Result<(u32, String)> {
    let field = |name: &str| {
        verbose
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .with_context(|| format!("`{name}` missing from rustc -vV"))
    };
    let llvm = field("LLVM version:")?;
    let major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("bad LLVM version {llvm}"))?;
    let commit = field("commit-hash:")?;
    Ok((major, commit.chars().take(9).collect()))
}

fn sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

/// The real shared object (not the linker script) among the nightly's libLLVM files.
fn find_libllvm(lib: &Path) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

fn cache_root() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache/observer-tools")
}

fn bpf_linker_works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_bpf_linker(verbose: &str) -> Result<PathBuf> {
    let (major, commit) = parse_version(verbose)?;
    if !SUPPORTED_LLVM.contains(&major) {
        bail!("nightly uses LLVM {major}; bpf-linker {BPF_LINKER_VERSION} supports {SUPPORTED_LLVM:?}");
    }
    let root = cache_root().join(format!("llvm{major}-{commit}"));
    let bin_dir = root.join("bin");
    if bpf_linker_works(&bin_dir.join("bpf-linker")) {
        return Ok(bin_dir);
    }
    let libllvm = find_libllvm(&sysroot()?.join("lib"))?;
    let prefix = root.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    // `libLLVM.so` for the build; the SONAME for the binary's rpath at run time.
    let soname = libllvm.file_name().context("libLLVM has a file name")?;
    for link in [
        prefix.join("lib/libLLVM.so"),
        prefix.join("lib").join(soname),
    ] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--root",
        ])
        .arg(&root)
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() || !bpf_linker_works(&bin_dir.join("bpf-linker")) {
        bail!("building bpf-linker failed");
    }
    Ok(bin_dir)
}

/// Make sure every part is present; return the environment for cargo.
pub fn ensure() -> Result<Env> {
    let verbose = ensure_nightly()?;
    ensure_rust_src()?;
    let bin_dir = ensure_bpf_linker(&verbose)?;
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Ok(Env { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_fields() {
        let v = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\ncommit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\nLLVM version: 22.1.4\n";
        assert_eq!(parse_version(v).unwrap(), (22, "e50aa6fba".to_string()));
        assert!(parse_version("rustc 1.0\n").is_err());
    }
}
