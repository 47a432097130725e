//! Reactors, TLS listeners and connections. (Placeholder.)
