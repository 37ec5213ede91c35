//! Go programs: find functions through `.gopclntab` (Go's own function table, present
//! even in stripped binaries) and the `RET` instructions of a function, where the agent
//! probes returns instead of using uretprobes (which break Go's movable stacks).
//!
//! Layout of the table (Go 1.18 and later, `runtime/symtab.go`): a header
//! `{magic u32, pad u16, minLC u8, ptrSize u8, nfunc int, nfiles uint, textStart,
//! funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset uintptr}`, then at
//! `pclnOffset` `nfunc + 1` pairs `{entryOff u32, funcOff u32}` (the last entry gives the
//! end of the last function) and the `_func` records, each starting
//! `{entryOff u32, nameOff i32}` with names at `funcnameOffset`.

use std::ops::Range;

/// Header magic of Go 1.18 and 1.19.
const MAGIC_GO118: u32 = 0xFFFF_FFF0;
/// Header magic of Go 1.20 and later.
const MAGIC_GO120: u32 = 0xFFFF_FFF1;
/// Go 1.16 and 1.17 (older table layout; 1.16 also predates the register ABI).
const MAGIC_GO116: u32 = 0xFFFF_FFFA;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoSymError {
    #[error("function table too short")]
    Short,
    #[error(
        "Go function table of Go 1.16/1.17 (magic {0:#x}): only Go 1.18 and later are supported"
    )]
    TooOld(u32),
    #[error("not a Go function table (magic {0:#x})")]
    BadMagic(u32),
    #[error("unsupported pointer size {0}")]
    PtrSize(u8),
    #[error("function table entry {0} is out of bounds")]
    OutOfBounds(usize),
}

/// A parsed `.gopclntab`.
pub struct PcLnTab<'a> {
    data: &'a [u8],
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    functab: usize,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, GoSymError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or(GoSymError::OutOfBounds(at))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, GoSymError> {
    data.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or(GoSymError::OutOfBounds(at))
}

impl<'a> PcLnTab<'a> {
    /// Parse the header. `text_fallback` is the `.text` address, used when the table's
    /// own text start is zero (position-independent builds relocate it at load time).
    pub fn parse(data: &'a [u8], text_fallback: u64) -> Result<Self, GoSymError> {
        if data.len() < 8 + 8 * 8 {
            return Err(GoSymError::Short);
        }
        let magic = u32_at(data, 0)?;
        match magic {
            MAGIC_GO118 | MAGIC_GO120 => {}
            MAGIC_GO116 => return Err(GoSymError::TooOld(magic)),
            other => return Err(GoSymError::BadMagic(other)),
        }
        if data[7] != 8 {
            return Err(GoSymError::PtrSize(data[7]));
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i);
        let nfunc = word(0)? as usize;
        let text_start = match word(2)? {
            0 => text_fallback,
            t => t,
        };
        let funcnames = word(3)? as usize;
        let functab = word(7)? as usize;
        if functab.saturating_add(nfunc.saturating_add(1).saturating_mul(8)) > data.len() {
            return Err(GoSymError::OutOfBounds(functab));
        }
        Ok(Self {
            data,
            nfunc,
            text_start,
            funcnames,
            functab,
        })
    }

    /// Number of functions in the table.
    pub fn function_count(&self) -> usize {
        self.nfunc
    }

    fn entry(&self, i: usize) -> Result<(u32, u32), GoSymError> {
        let at = self.functab + 8 * i;
        Ok((u32_at(self.data, at)?, u32_at(self.data, at + 4)?))
    }

    fn name(&self, i: usize) -> Result<&'a [u8], GoSymError> {
        let (_, func_off) = self.entry(i)?;
        let record = self.functab + func_off as usize;
        let name_off = u32_at(self.data, record + 4)? as usize;
        let start = self.funcnames + name_off;
        let rest = self
            .data
            .get(start..)
            .ok_or(GoSymError::OutOfBounds(start))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Ok(&rest[..end])
    }

    /// Virtual address range of the function called `name`.
    pub fn find(&self, name: &str) -> Result<Option<Range<u64>>, GoSymError> {
        for i in 0..self.nfunc {
            if self.name(i)? == name.as_bytes() {
                let (start, _) = self.entry(i)?;
                let (end, _) = self.entry(i + 1)?;
                return Ok(Some(
                    self.text_start + u64::from(start)..self.text_start + u64::from(end),
                ));
            }
        }
        Ok(None)
    }
}

/// Offsets (from the start of `code`) of every `RET` instruction in one x86-64 function.
pub fn ret_offsets(code: &[u8], address: u64) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut out = Vec::new();
    for instruction in &mut decoder {
        if instruction.mnemonic() == Mnemonic::Ret {
            out.push(instruction.ip() - address);
        }
    }
    out
}

/// The Go toolchain version in `.go.buildinfo` (`go1.19.8`), when it can be read.
///
/// Since Go 1.18 the section starts with `\xff Go buildinf:`, a pointer size, a flags
/// byte whose bit 1 says the strings are inline, then (inline form) the version as a
/// varint-length-prefixed string at offset 32.
pub fn build_version(buildinfo: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !buildinfo.starts_with(MAGIC) || buildinfo.len() < 33 {
        return None;
    }
    if buildinfo[15] & 0x2 == 0 {
        return None; // pointer form (Go 1.17 and older)
    }
    let len = buildinfo[32] as usize; // < 128: one-byte varint
    let version = buildinfo.get(33..33 + len)?;
    std::str::from_utf8(version).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with two functions, built the way the Go linker lays it out.
    fn table(magic: u32, text_start: u64) -> Vec<u8> {
        let names = b"main.main\0crypto/tls.(*Conn).Read\0";
        let header_len = 8 + 8 * 8;
        let funcnames = header_len;
        let functab = funcnames + names.len();
        // functab: 3 pairs (2 functions + end), then two _func records {entry, nameOff}.
        let func0 = 3 * 8;
        let func1 = func0 + 8;
        let mut data = Vec::new();
        data.extend_from_slice(&magic.to_le_bytes());
        data.extend_from_slice(&[0, 0, 1, 8]);
        for word in [
            2u64,
            1,
            text_start,
            funcnames as u64,
            0,
            0,
            0,
            functab as u64,
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(names);
        for (entry, func) in [(0x0u32, func0 as u32), (0x40, func1 as u32), (0x90, 0)] {
            data.extend_from_slice(&entry.to_le_bytes());
            data.extend_from_slice(&func.to_le_bytes());
        }
        for (entry, name) in [(0x0u32, 0u32), (0x40, 10)] {
            data.extend_from_slice(&entry.to_le_bytes());
            data.extend_from_slice(&name.to_le_bytes());
        }
        data
    }

    #[test]
    fn finds_a_function_and_its_extent() {
        let data = table(MAGIC_GO118, 0x401000);
        let tab = PcLnTab::parse(&data, 0).unwrap();
        assert_eq!(tab.function_count(), 2);
        assert_eq!(
            tab.find("crypto/tls.(*Conn).Read").unwrap(),
            Some(0x401040..0x401090)
        );
        assert_eq!(tab.find("main.main").unwrap(), Some(0x401000..0x401040));
        assert_eq!(tab.find("crypto/tls.(*Conn).Write").unwrap(), None);
    }

    #[test]
    fn zero_text_start_falls_back_to_the_text_section() {
        let data = table(MAGIC_GO120, 0);
        let tab = PcLnTab::parse(&data, 0x2000).unwrap();
        assert_eq!(tab.find("main.main").unwrap(), Some(0x2000..0x2040));
    }

    #[test]
    fn old_and_foreign_tables_are_refused_with_a_reason() {
        let data = table(MAGIC_GO116, 0x401000);
        assert_eq!(
            PcLnTab::parse(&data, 0).err(),
            Some(GoSymError::TooOld(MAGIC_GO116))
        );
        let data = table(0x1234_5678, 0x401000);
        assert_eq!(
            PcLnTab::parse(&data, 0).err(),
            Some(GoSymError::BadMagic(0x1234_5678))
        );
        assert_eq!(
            PcLnTab::parse(&[0xf0; 10], 0).err(),
            Some(GoSymError::Short)
        );
    }

    #[test]
    fn truncated_table_is_an_error_not_a_panic() {
        let mut data = table(MAGIC_GO118, 0x401000);
        data.truncate(data.len() - 12);
        let tab = PcLnTab::parse(&data, 0).unwrap();
        assert!(tab.find("crypto/tls.(*Conn).Read").is_err());
    }

    #[test]
    fn finds_every_ret_and_only_rets() {
        // push rbp; mov rbp,rsp; test eax,eax; je +1; ret; mov eax,0xc3 (c3 inside an
        // immediate is not a RET); pop rbp; ret
        let code = [
            0x55, 0x48, 0x89, 0xe5, 0x85, 0xc0, 0x74, 0x01, 0xc3, 0xb8, 0xc3, 0x00, 0x00, 0x00,
            0x5d, 0xc3,
        ];
        assert_eq!(ret_offsets(&code, 0x1000), vec![8, 15]);
    }

    #[test]
    fn reads_the_inline_build_version() {
        let mut info = b"\xff Go buildinf:".to_vec();
        info.extend_from_slice(&[8, 2]);
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.19.8");
        assert_eq!(build_version(&info).as_deref(), Some("go1.19.8"));
        assert_eq!(build_version(b"nothing"), None);
    }
}
