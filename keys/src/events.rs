//! Control-plane events a key backend reports for the audit trail (issue
//! 18): HSM logins (and their failures), and anything else an operator must
//! be able to attribute later. A backend calls [`emit_event`]; the server
//! installs the sink ([`set_event_sink`]) that forwards to its audit writer.
//!
//! Must not: be called on the data path (the sink may allocate and takes a
//! read lock), or carry a secret (fields are names, results and error texts;
//! never a PIN, a token or key material). Without a sink, events are
//! dropped.
//!
//! One sink per process (the last one set wins): a process runs one server;
//! tests that start several in one process see the latest one's events.

use std::sync::{Arc, RwLock};

/// Where events go: the event's `type` and its flat text fields.
pub type EventSink = Arc<dyn Fn(&str, &[(&str, &str)]) + Send + Sync>;

static SINK: RwLock<Option<EventSink>> = RwLock::new(None);

/// Install (or with `None`, remove) the process's event sink.
pub fn set_event_sink(sink: Option<EventSink>) {
    *SINK.write().unwrap_or_else(|p| p.into_inner()) = sink;
}

/// Report an event (control plane only).
pub fn emit_event(kind: &str, fields: &[(&str, &str)]) {
    let sink = SINK.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(s) = sink {
        s(kind, fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn events_reach_the_sink_and_are_dropped_without_one() {
        emit_event("nobody_listens", &[]);
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        set_event_sink(Some(Arc::new(move |kind, fields| {
            s.lock().unwrap().push(format!("{kind} {}", fields.len()));
        })));
        emit_event("hsm_login", &[("partition", "p"), ("result", "ok")]);
        set_event_sink(None);
        emit_event("after", &[]);
        assert_eq!(*seen.lock().unwrap(), ["hsm_login 2"]);
    }
}
