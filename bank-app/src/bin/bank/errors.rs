//! Errors: usage errors (exit code 2) and how errors are printed.

use std::process::ExitCode;

use anyhow::anyhow;

/// Exit code for usage errors (bad arguments).
pub(crate) const EXIT_USAGE: u8 = 2;

/// An error in the command line (exit code 2), found after parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(String);

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow!(UsageError(message.into()))
}

/// The error and its causes, `: `-separated, skipping a cause its parent's message
/// already quotes (many library errors show their source inline).
pub(crate) fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Collapses a message onto one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version go to stdout as usual; a usage error is one line.
pub(crate) fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            // Clap's message: a paragraph, tips, then "Usage: ...". Keep the first
            // paragraph and the usage, on one line.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .collect();
            let message = one_line(&message.join(" "));
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let message = message.trim_end_matches(':');
            let usage = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Usage: "))
                .map(|u| format!(" (usage: {})", one_line(u)))
                .unwrap_or_default();
            eprintln!("error: {message}{usage}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
