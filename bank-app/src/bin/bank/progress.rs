//! Progress bars on stderr.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr for a script of `transfers` transfers.
pub(crate) fn run_progress_bar(transfers: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(transfers as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:25}] {pos}/{len} transfers {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Writes whole lines to `inner` with the progress bar hidden meanwhile, so lines and
/// bar do not overwrite each other on a terminal.
pub(crate) struct BarWriter {
    inner: Box<dyn Write + Send>,
    bar: ProgressBar,
    pending: Vec<u8>,
}

impl BarWriter {
    pub(crate) fn new(inner: Box<dyn Write + Send>, bar: ProgressBar) -> BarWriter {
        BarWriter {
            inner,
            bar,
            pending: Vec::new(),
        }
    }

    fn write_through(&mut self, upto: usize) -> std::io::Result<()> {
        let chunk: Vec<u8> = self.pending.drain(..upto).collect();
        let inner = &mut self.inner;
        self.bar.suspend(|| {
            inner.write_all(&chunk)?;
            inner.flush()
        })
    }
}

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.write_through(last + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let all = self.pending.len();
        if all > 0 {
            self.write_through(all)?;
        }
        Ok(())
    }
}
