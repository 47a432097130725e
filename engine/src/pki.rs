//! Throwaway PKI for the demo and tests. (Placeholder.)
