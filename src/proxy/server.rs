//! The proxy's UDP and TCP listeners and the upstream forwarding (to be built).
