//! JSON-lines streams: exchanges (debugging and tests) and session state changes (alerts).

use std::io::Write;

use anyhow::Context as _;

pub struct JsonLines {
    out: Box<dyn Write + Send>,
}

impl JsonLines {
    /// `-` is stdout; anything else a file opened for appending.
    pub fn open(target: &str) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .with_context(|| format!("opening {target} for a JSON-lines stream"))?,
            )
        };
        Ok(Self {
            out: Box::new(std::io::LineWriter::new(out)),
        })
    }

    pub fn write<T: serde::Serialize>(&mut self, record: &T) {
        if let Err(e) = serde_json::to_writer(&mut self.out, record)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
        {
            tracing::warn!("writing a JSON-lines stream failed: {e}");
        }
    }
}
