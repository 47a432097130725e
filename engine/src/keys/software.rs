//! Software keys (aws-lc-rs). (Placeholder until the keys work item lands.)
