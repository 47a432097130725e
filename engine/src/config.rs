//! Configuration: gokeyless.yaml, `KEYLESS_*` environment, flags → [`Config`].
//! (Owned by the config work item; placeholder until it lands.)
