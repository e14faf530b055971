//! Proxy latency and throughput against the upstream alone (to be built).
fn main() {}
