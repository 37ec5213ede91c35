//! The JSON-lines stream of exchanges (debugging and tests).

use std::io::Write;

use anyhow::Context as _;

use crate::exchange::Exchange;

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
                    .with_context(|| format!("opening {target} for the exchange stream"))?,
            )
        };
        Ok(Self {
            out: Box::new(std::io::LineWriter::new(out)),
        })
    }

    pub fn write(&mut self, ex: &Exchange) {
        let record = ex.record();
        if let Err(e) = serde_json::to_writer(&mut self.out, &record)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
        {
            tracing::warn!("writing the exchange stream failed: {e}");
        }
    }
}
