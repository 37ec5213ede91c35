//! Follow a log file as it grows, across rotation: a new inode at the path (rename and
//! create) is opened after the rest of the old file is read; a file that shrank
//! (truncated in place) is read again from its start. A file that exists at start is read
//! from its end: only lines written while the agent runs are reconciled.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use super::parse::MAX_LINE;

/// Most bytes read from one file per poll (the rest waits for the next poll).
const MAX_READ: u64 = 8 * 1024 * 1024;

/// One line handed to the caller: its bytes, or `None` when it was longer than
/// [`MAX_LINE`] (its bytes were not kept).
pub type Line<'a> = Option<&'a [u8]>;

pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    /// (device, inode) of the open file.
    id: (u64, u64),
    /// Offset read up to.
    pos: u64,
    /// The start of a line whose newline has not been written yet.
    partial: Vec<u8>,
    /// The partial line grew past [`MAX_LINE`]; its rest is discarded up to the newline.
    overlong: bool,
    /// Rotations and truncations seen.
    pub reopened: u64,
}

impl Follower {
    /// Follow `path` from its current end (or from the start of a file that appears later).
    pub fn new(path: PathBuf) -> Self {
        let mut f = Self {
            path,
            file: None,
            id: (0, 0),
            pos: 0,
            partial: Vec::new(),
            overlong: false,
            reopened: 0,
        };
        if let Ok(file) = File::open(&f.path) {
            if let Ok(m) = file.metadata() {
                f.id = (m.dev(), m.ino());
                f.pos = m.len();
                f.file = Some(file);
            }
        }
        f
    }

    /// Read what was appended since the last poll, and follow a rotation.
    pub fn poll(&mut self, on_line: &mut dyn FnMut(Line<'_>)) -> std::io::Result<()> {
        self.read_open(on_line)?;
        match std::fs::metadata(&self.path) {
            Ok(m) if self.file.is_none() || (m.dev(), m.ino()) != self.id => {
                // Rotated: the old file was read to its end above; a line left without
                // its newline there is complete.
                if self.file.is_some() {
                    self.end_partial(on_line);
                    self.reopened += 1;
                }
                self.file = None;
                let file = File::open(&self.path)?;
                let m = file.metadata()?;
                self.id = (m.dev(), m.ino());
                self.pos = 0;
                self.file = Some(file);
                self.read_open(on_line)?;
            }
            // Missing (rotated away, not yet recreated): keep reading the old file.
            _ => {}
        }
        Ok(())
    }

    fn end_partial(&mut self, on_line: &mut dyn FnMut(Line<'_>)) {
        if self.overlong {
            on_line(None);
        } else if !self.partial.is_empty() {
            on_line(Some(&self.partial));
        }
        self.partial.clear();
        self.overlong = false;
    }

    fn read_open(&mut self, on_line: &mut dyn FnMut(Line<'_>)) -> std::io::Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let len = file.metadata()?.len();
        if len < self.pos {
            // Truncated in place: what is there now was written after the truncation.
            self.pos = 0;
            self.partial.clear();
            self.overlong = false;
            self.reopened += 1;
        }
        if len == self.pos {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        let n = file.take(MAX_READ).read_to_end(&mut buf)?;
        self.pos += n as u64;
        let mut rest = &buf[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (piece, after) = rest.split_at(nl);
            rest = &after[1..];
            if self.overlong || self.partial.len() + piece.len() > MAX_LINE {
                on_line(None);
            } else if self.partial.is_empty() {
                on_line(Some(piece));
            } else {
                self.partial.extend_from_slice(piece);
                on_line(Some(&self.partial));
            }
            self.partial.clear();
            self.overlong = false;
        }
        if self.overlong || self.partial.len() + rest.len() > MAX_LINE {
            self.overlong = true;
            self.partial.clear();
        } else {
            self.partial.extend_from_slice(rest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn lines(f: &mut Follower) -> Vec<String> {
        let mut out = Vec::new();
        f.poll(&mut |l| {
            out.push(l.map_or("<long>".into(), |l| String::from_utf8_lossy(l).into_owned()))
        })
        .unwrap();
        out
    }

    fn append(path: &std::path::Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("observer-follow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn starts_at_the_end_and_reads_appended_lines() {
        let d = temp_dir("append");
        let log = d.join("access.log");
        append(&log, "old 1\nold 2\n");
        let mut f = Follower::new(log.clone());
        assert!(lines(&mut f).is_empty());
        append(&log, "new 1\nnew 2\npart");
        assert_eq!(lines(&mut f), ["new 1", "new 2"]);
        append(&log, "ial\n");
        assert_eq!(lines(&mut f), ["partial"]);
        append(&log, &format!("{}\nafter\n", "x".repeat(MAX_LINE + 1)));
        assert_eq!(lines(&mut f), ["<long>", "after"]);
        assert!(lines(&mut f).is_empty());
    }

    #[test]
    fn a_file_that_appears_later_is_read_from_its_start() {
        let d = temp_dir("late");
        let log = d.join("access.log");
        let mut f = Follower::new(log.clone());
        assert!(lines(&mut f).is_empty());
        append(&log, "first\n");
        assert_eq!(lines(&mut f), ["first"]);
    }

    #[test]
    fn rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one() {
        let d = temp_dir("rotate");
        let log = d.join("access.log");
        append(&log, "before start\n");
        let mut f = Follower::new(log.clone());
        append(&log, "a\n");
        assert_eq!(lines(&mut f), ["a"]);
        // The server still writes to the renamed file until it reopens.
        let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::fs::rename(&log, d.join("access.log.1")).unwrap();
        old.write_all(b"b\n").unwrap();
        assert_eq!(lines(&mut f), ["b"]);
        old.write_all(b"c\nunfinished").unwrap();
        append(&log, "d\n");
        assert_eq!(lines(&mut f), ["c", "unfinished", "d"]);
        append(&log, "e\n");
        assert_eq!(lines(&mut f), ["e"]);
        assert_eq!(f.reopened, 1);
    }

    #[test]
    fn truncation_in_place_reads_from_the_start_again() {
        let d = temp_dir("truncate");
        let log = d.join("access.log");
        append(&log, "a long line before start\n");
        let mut f = Follower::new(log.clone());
        append(&log, "a\n");
        assert_eq!(lines(&mut f), ["a"]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&log, "b\n");
        assert_eq!(lines(&mut f), ["b"]);
        assert_eq!(f.reopened, 1);
    }
}
