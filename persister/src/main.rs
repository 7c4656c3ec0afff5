//! `persister`: not built yet.
//!
//! The persister will consume stream `CHAT` and write history into SQLite or ScyllaDB (issue 3). Until
//! then this binary says so and exits with an error, so nothing can mistake it for a running persister.
//! Messages are still stored in JetStream, within the stream's retention window.

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().init();
    tracing::error!(
        "the persister is not implemented yet: history lives only in stream CHAT (see ARCHITECTURE.md)"
    );
    std::process::ExitCode::FAILURE
}
