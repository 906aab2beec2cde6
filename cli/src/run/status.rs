//! The supervisor's `status` answer: its state, instances, restarts and listeners.

use std::time::Instant;

use serde_json::{Value, json};

use super::instance::Instance;
use super::supervisor::{Supervisor, millis};

impl Supervisor {
    pub fn state(&self) -> &'static str {
        if self.stopping.is_some() {
            "stopping"
        } else if self.candidate.is_some() {
            "upgrading"
        } else if self.restart_at.is_some() {
            "restarting"
        } else if self.serving.as_ref().is_some_and(|s| s.ready_at.is_some()) {
            "serving"
        } else {
            "starting"
        }
    }

    /// The `status` answer.
    pub fn status(&self) -> Value {
        let instance = |i: &Instance, role: &str| {
            json!({
                "pid": i.pid,
                "role": role,
                "ready": i.ready_at.is_some(),
                "uptime_ms": millis(i.started.elapsed()),
            })
        };
        let instances: Vec<Value> = self
            .serving
            .iter()
            .map(|i| instance(i, "serving"))
            .chain(self.candidate.iter().map(|c| instance(&c.instance, "new")))
            .chain(self.retiring.iter().map(|i| instance(i, "old")))
            .collect();
        let listeners: Vec<Value> = self
            .sockets
            .listeners
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"key": s.name, "address": s.actual, "fd": 3 + i}))
            .collect();
        json!({
            "supervisor": true,
            "pid": std::process::id(),
            "state": self.state(),
            "generation": self.generation,
            "uptime_ms": millis(self.started.elapsed()),
            "program": self.args.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "instances": instances,
            "restarts": self.restarts,
            "failures_in_a_row": self.backoff.in_a_row,
            "next_restart_ms": self.restart_at.map(|at| millis(at.saturating_duration_since(Instant::now()))),
            "last_exit": self.last_exit.map(|e| e.json()),
            "last_upgrade": self.last_upgrade,
            "listeners": listeners,
        })
    }
}
