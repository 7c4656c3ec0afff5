//! Starts the test run's shared Cassandra node (`testkit::cassandra`) for `cargo xtask test`:
//! prints its CQL address on the first line of stdout, then keeps it until stdin closes.

use std::io::{Read, Write};

fn main() -> anyhow::Result<()> {
    let node = testkit::CassandraServer::start()?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", node.host())?;
    out.flush()?;
    // Until the parent closes stdin (or dies): then the node goes with `node`.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(node);
    Ok(())
}
