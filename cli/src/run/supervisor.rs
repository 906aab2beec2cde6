//! The supervisor's state and its event loop: one thread owns every instance, reaps them, and
//! acts on signals, control commands, readiness reports and deadlines in turn.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use super::args::{Ready, RunArgs};
use super::control::{Answer, Request};
use super::instance::{Exit, Instance, rfc3339};
use super::log::log;
use super::readiness::{Check, NotifySocket};
use super::restart::{self, Backoff};
use super::sockets::Sockets;
use super::spawn::{Launch, spawn};
use super::{notify, reexec};

/// What tasks tell the event loop.
pub enum Event {
    Ready(u64),
    Control(Request, oneshot::Sender<Answer>),
    /// The preflight run of the supervisor's new binary is over.
    Preflight(Result<String, String>, Option<oneshot::Sender<Answer>>),
}

pub(super) struct Candidate {
    pub(super) instance: Instance,
    began: Instant,
    deadline: Instant,
    waiters: Vec<oneshot::Sender<Answer>>,
}

pub(super) struct Stopping {
    waiters: Vec<oneshot::Sender<Answer>>,
    /// The exit status of the supervisor, once known.
    code: Option<u8>,
}

pub struct Supervisor {
    pub args: RunArgs,
    pub sockets: Sockets,
    /// Where the notify sockets live; private to this supervisor.
    pub dir: PathBuf,
    pub events: mpsc::UnboundedSender<Event>,
    pub serving: Option<Instance>,
    pub(super) candidate: Option<Candidate>,
    pub(super) retiring: Vec<Instance>,
    pub(super) restart_at: Option<Instant>,
    pub backoff: Backoff,
    pub restarts: u64,
    pub last_exit: Option<Exit>,
    pub last_upgrade: Option<Value>,
    pub(super) stopping: Option<Stopping>,
    pub next_id: u64,
    pub started: Instant,
    /// Counts the images of this supervisor: 1, then one more at each re-exec.
    pub generation: u64,
    /// Files this supervisor created and removes at exit (socket files, pid file).
    pub created: Vec<PathBuf>,
    /// Whether READY=1 was sent to systemd.
    pub announced: bool,
    reexec_pending: bool,
}

impl Supervisor {
    pub fn new(
        args: RunArgs,
        sockets: Sockets,
        dir: PathBuf,
        events: mpsc::UnboundedSender<Event>,
    ) -> Supervisor {
        Supervisor {
            args,
            sockets,
            dir,
            events,
            serving: None,
            candidate: None,
            retiring: Vec::new(),
            restart_at: None,
            backoff: Backoff::default(),
            restarts: 0,
            last_exit: None,
            last_upgrade: None,
            stopping: None,
            next_id: 1,
            started: Instant::now(),
            generation: 1,
            created: Vec::new(),
            announced: false,
            reexec_pending: false,
        }
    }

    /// Runs until the supervisor is to exit; returns its exit status.
    pub async fn run(&mut self, mut events: mpsc::UnboundedReceiver<Event>) -> u8 {
        let (Ok(mut child), Ok(mut hup), Ok(mut usr2), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::child()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined2()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log!("cannot install the signal handlers; exiting");
            return 1;
        };
        // Signals that arrived while a previous image re-executed this one were held blocked.
        reexec::unblock_signals();
        self.reap();
        if self.serving.is_none() && self.stopping.is_none() {
            self.start_serving();
        }
        loop {
            let wake = self.next_deadline();
            tokio::select! {
                _ = child.recv() => {}
                _ = hup.recv() => {
                    log!("signal received: SIGHUP; upgrading the instance");
                    self.upgrade(None, None);
                }
                _ = usr2.recv() => {
                    log!("signal received: SIGUSR2; upgrading the supervisor");
                    self.upgrade_supervisor(None);
                }
                _ = term.recv() => self.stop("SIGTERM", None),
                _ = int.recv() => self.stop("SIGINT", None),
                Some(event) = events.recv() => self.on_event(event).await,
                () = sleep_until(wake) => {}
            }
            self.reap();
            self.on_deadlines();
            if let Some((code, answered)) = self.finished() {
                // `stop --wait` clients get their answer before the process exits.
                for written in answered {
                    let _ = tokio::time::timeout(Duration::from_secs(2), written).await;
                }
                return code;
            }
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Ready(id) => self.on_ready(id),
            Event::Control(Request::Status, reply) => {
                let _ = reply.send(Answer::ok(self.status()));
            }
            Event::Control(Request::Upgrade { timeout }, reply) => {
                self.upgrade(timeout, Some(reply))
            }
            Event::Control(Request::UpgradeSupervisor, reply) => {
                self.upgrade_supervisor(Some(reply))
            }
            Event::Control(Request::Stop { wait }, reply) => {
                let me = std::process::id();
                if wait {
                    self.stop("a control command", Some(reply));
                } else {
                    self.stop("a control command", None);
                    let _ = reply.send(Answer::ok(json!({"pid": me, "state": "stopping"})));
                }
            }
            Event::Preflight(result, reply) => self.after_preflight(result, reply).await,
        }
    }

    fn launch(&mut self) -> std::io::Result<Instance> {
        let id = self.next_id;
        self.next_id += 1;
        let notify = match self.args.ready {
            Ready::Notify => Some(NotifySocket::bind(
                self.dir.join(format!("notify-{id}.sock")),
            )?),
            _ => None,
        };
        let launch = Launch {
            command: &self.args.command,
            sockets: self
                .sockets
                .listeners
                .iter()
                .map(|s| std::os::fd::AsFd::as_fd(&s.fd))
                .collect(),
            names: self
                .sockets
                .listeners
                .iter()
                .map(|s| s.name.as_str())
                .collect(),
            notify: notify.as_ref().map(NotifySocket::path),
            orphan_signal: self.args.stop_signal,
        };
        let pid = spawn(&launch)?;
        let mut instance = Instance::new(id, pid);
        instance.notify_fd = notify.as_ref().map(NotifySocket::raw_fd);
        let check = self.check_for(pid, notify);
        instance.check = Some(self.watch(check, id, pid));
        Ok(instance)
    }

    /// The readiness check of instance `pid` by the `--ready` mode.
    pub fn check_for(&self, pid: u32, notify: Option<NotifySocket>) -> Check {
        let first_tcp = self.sockets.listeners.iter().find_map(|s| s.tcp);
        let inodes = self
            .sockets
            .listeners
            .iter()
            .filter_map(|s| inode(&s.fd))
            .collect();
        Check::new(&self.args.ready, pid, notify, first_tcp, inodes)
    }

    pub fn retiring_instances(&self) -> impl Iterator<Item = &Instance> {
        self.retiring.iter()
    }

    pub fn adopt_retiring(&mut self, instance: Instance) {
        self.retiring.push(instance);
    }

    /// Runs `check` for instance `id` in a task that reports its readiness to the loop.
    pub fn watch(&self, check: Check, id: u64, pid: u32) -> tokio::task::AbortHandle {
        let events = self.events.clone();
        tokio::spawn(check.run(pid, move || {
            let _ = events.send(Event::Ready(id));
        }))
        .abort_handle()
    }

    /// Starts the instance that serves: at first start and after a crash.
    fn start_serving(&mut self) {
        match self.launch() {
            Ok(instance) => {
                log!("instance {} started: {}", instance.pid, self.program());
                self.serving = Some(instance);
            }
            Err(e) => {
                let delay = self.backoff.after_exit(None);
                log!(
                    "cannot start {}: {e}; trying again in {delay:?} ({} failures in a row)",
                    self.program(),
                    self.backoff.in_a_row
                );
                self.restart_at = Some(Instant::now() + delay);
            }
        }
    }

    fn program(&self) -> String {
        self.args.command[0].to_string_lossy().into_owned()
    }

    fn upgrade(&mut self, timeout: Option<Duration>, reply: Option<oneshot::Sender<Answer>>) {
        let refuse = |reply: Option<oneshot::Sender<Answer>>, reason: &str, error: String| {
            log!("upgrade refused: {error}");
            if let Some(reply) = reply {
                let _ = reply.send(Answer::failed(json!({"reason": reason, "error": error})));
            }
        };
        if self.stopping.is_some() || self.reexec_pending {
            return refuse(
                reply,
                "stopping",
                "the supervisor is stopping or re-executing; upgrade refused".into(),
            );
        }
        if let Some(candidate) = &mut self.candidate {
            let pid = candidate.instance.pid;
            return refuse(
                reply,
                "in_progress",
                format!(
                    "an upgrade is already in progress (new instance {pid}); try again once it is over"
                ),
            );
        }
        let began = Instant::now();
        match self.launch() {
            Ok(instance) => {
                log!(
                    "new instance {} started for an upgrade: {}",
                    instance.pid,
                    self.program()
                );
                notify::send("RELOADING=1");
                // An upgrade while a crashed instance waits for its restart replaces the restart.
                if self.serving.is_none() {
                    self.restart_at = None;
                }
                let limit = timeout.unwrap_or(self.args.upgrade_timeout);
                self.candidate = Some(Candidate {
                    instance,
                    began,
                    deadline: began + limit,
                    waiters: reply.into_iter().collect(),
                });
            }
            Err(e) => {
                let error = format!(
                    "cannot start the new instance {}: {e}; check that the file exists and is executable",
                    self.program()
                );
                log!("upgrade failed; the old instance keeps serving: {error}");
                let fields = json!({"reason": "spawn", "error": error});
                self.record_upgrade(fields.clone(), began);
                if let Some(reply) = reply {
                    let _ = reply.send(Answer::failed(fields));
                }
            }
        }
    }

    fn record_upgrade(&mut self, mut fields: Value, began: Instant) {
        fields["ok"] = fields.get("ok").cloned().unwrap_or(false.into());
        fields["duration_ms"] = millis(began.elapsed()).into();
        fields["at"] = rfc3339(SystemTime::now()).into();
        self.last_upgrade = Some(fields);
    }

    fn on_ready(&mut self, id: u64) {
        let now = Instant::now();
        if self
            .candidate
            .as_ref()
            .is_some_and(|c| c.instance.id == id && !c.instance.killed)
        {
            let Some(mut candidate) = self.candidate.take() else {
                return;
            };
            candidate.instance.ready_at = Some(now);
            let new = candidate.instance.pid;
            let old = self.serving.replace(candidate.instance);
            let old_pid = old.as_ref().map(|o| o.pid);
            let took = now - candidate.began;
            match old {
                Some(mut old) => {
                    log!(
                        "new instance {new} ready after {} ms; stopping old instance {} (signal {})",
                        took.as_millis(),
                        old.pid,
                        self.args.stop_signal
                    );
                    old.stop(self.args.stop_signal, now + self.args.stop_timeout);
                    self.retiring.push(old);
                }
                None => log!(
                    "new instance {new} ready after {} ms; it serves alone",
                    took.as_millis()
                ),
            }
            let fields = json!({"ok": true, "pid": new, "old_pid": old_pid, "duration_ms": millis(took), "old": "draining"});
            self.record_upgrade(fields.clone(), candidate.began);
            for waiter in candidate.waiters {
                let _ = waiter.send(Answer::ok(fields.clone()));
            }
            self.announce();
        } else if let Some(serving) = self
            .serving
            .as_mut()
            .filter(|s| s.id == id && s.ready_at.is_none())
        {
            serving.ready_at = Some(now);
            log!(
                "instance {} ready after {} ms",
                serving.pid,
                (now - serving.started).as_millis()
            );
            self.announce();
        }
    }

    /// Tells systemd the service is ready (again, after an upgrade).
    fn announce(&mut self) {
        notify::send(&format!("READY=1\nMAINPID={}", std::process::id()));
        self.announced = true;
    }

    fn stop(&mut self, why: &str, reply: Option<oneshot::Sender<Answer>>) {
        if let Some(stopping) = &mut self.stopping {
            log!("already stopping ({why}); waiting for the instances to exit");
            stopping.waiters.extend(reply);
            return;
        }
        log!(
            "stopping, asked by {why}: signal {} to every instance, SIGKILL after {:?}",
            self.args.stop_signal,
            self.args.stop_timeout
        );
        notify::send("STOPPING=1");
        let kill_at = Instant::now() + self.args.stop_timeout;
        self.restart_at = None;
        let signal = self.args.stop_signal;
        let code = match &self.serving {
            Some(_) => None,
            None => Some(self.last_exit.map_or(0, |e| e.code(None))),
        };
        for instance in self.instances_mut() {
            instance.stop(signal, kill_at);
        }
        self.stopping = Some(Stopping {
            waiters: reply.into_iter().collect(),
            code,
        });
    }

    fn instances_mut(&mut self) -> impl Iterator<Item = &mut Instance> {
        self.serving
            .iter_mut()
            .chain(self.candidate.iter_mut().map(|c| &mut c.instance))
            .chain(self.retiring.iter_mut())
    }

    /// Reaps every instance that exited and acts on it.
    fn reap(&mut self) {
        if let Some(exit) = self.candidate.as_ref().and_then(|c| c.instance.try_reap()) {
            if let Some(mut candidate) = self.candidate.take() {
                candidate.instance.cleanup();
                self.candidate_failed(candidate, exit);
            }
        }
        if let Some(exit) = self.serving.as_ref().and_then(Instance::try_reap) {
            if let Some(mut serving) = self.serving.take() {
                serving.cleanup();
                self.serving_exited(serving, exit);
            }
        }
        let mut index = 0;
        while index < self.retiring.len() {
            match self.retiring[index].try_reap() {
                Some(exit) => {
                    let mut old = self.retiring.swap_remove(index);
                    old.cleanup();
                    log!("old instance {} exited ({exit})", old.pid);
                }
                None => index += 1,
            }
        }
    }

    fn candidate_failed(&mut self, candidate: Candidate, exit: Exit) {
        let pid = candidate.instance.pid;
        let seconds = (candidate.deadline - candidate.began).as_secs_f64();
        let fields = if self.stopping.is_some() {
            json!({"reason": "cancelled", "pid": pid, "error": format!("the supervisor began stopping before new instance {pid} was ready; it was stopped and reaped")})
        } else if candidate.instance.killed {
            json!({"reason": "timeout", "pid": pid, "error": format!("new instance {pid} was not ready within {seconds}s; it was killed and reaped")})
        } else {
            let mut fields = exit.json();
            fields["reason"] = "exited".into();
            fields["error"] =
                format!("new instance {pid} exited before it was ready ({exit})").into();
            fields
        };
        let error = fields["error"].as_str().unwrap_or_default().to_string();
        match &self.serving {
            Some(old) => log!(
                "upgrade failed; old instance {} keeps serving: {error}",
                old.pid
            ),
            None => log!("upgrade failed: {error}"),
        }
        self.record_upgrade(fields.clone(), candidate.began);
        for waiter in candidate.waiters {
            let _ = waiter.send(Answer::failed(fields.clone()));
        }
        // The instance this upgrade was to replace may have died meanwhile.
        if self.serving.is_none() && self.stopping.is_none() && self.restart_at.is_none() {
            self.schedule_restart(exit, None);
        }
    }

    fn serving_exited(&mut self, instance: Instance, exit: Exit) {
        self.last_exit = Some(exit);
        if let Some(stopping) = &mut self.stopping {
            log!("instance {} exited ({exit})", instance.pid);
            stopping
                .code
                .get_or_insert(exit.code(Some(self.args.stop_signal)));
            return;
        }
        if self.candidate.is_some() {
            log!(
                "instance {} exited during an upgrade ({exit}); the new instance takes over once ready",
                instance.pid
            );
            return;
        }
        let ready_for = instance.ready_at.map(|at| at.elapsed());
        if restart::restarts(self.args.restart, exit.status.success()) {
            self.schedule_restart(exit, ready_for);
        } else {
            log!(
                "instance {} exited ({exit}); not restarted (--restart {:?}); exiting",
                instance.pid,
                self.args.restart
            );
            self.stopping = Some(Stopping {
                waiters: Vec::new(),
                code: Some(exit.code(None)),
            });
        }
    }

    fn schedule_restart(&mut self, exit: Exit, ready_for: Option<Duration>) {
        let delay = self.backoff.after_exit(ready_for);
        log!(
            "instance {} exited ({exit}); starting it again in {delay:?} ({} in a row without staying ready {:?})",
            exit.pid,
            self.backoff.in_a_row,
            restart::STABLE_AFTER
        );
        self.restart_at = Some(Instant::now() + delay);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let instances = self
            .serving
            .iter()
            .chain(self.retiring.iter())
            .chain(self.candidate.iter().map(|c| &c.instance))
            .filter(|i| !i.killed)
            .filter_map(|i| i.kill_at);
        instances
            .chain(
                self.candidate
                    .iter()
                    .filter(|c| !c.instance.killed)
                    .map(|c| c.deadline),
            )
            .chain(self.restart_at)
            .min()
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        if let Some(candidate) = self
            .candidate
            .as_mut()
            .filter(|c| !c.instance.killed && c.deadline <= now)
        {
            log!(
                "new instance {} not ready in time; killing it",
                candidate.instance.pid
            );
            candidate.instance.kill();
        }
        let stop_timeout = self.args.stop_timeout;
        for instance in self.instances_mut() {
            if !instance.killed && instance.kill_at.is_some_and(|at| at <= now) {
                log!(
                    "instance {} did not exit within {stop_timeout:?} of the stop signal; killing it",
                    instance.pid
                );
                instance.kill();
            }
        }
        if self.restart_at.is_some_and(|at| at <= now) && self.stopping.is_none() {
            self.restart_at = None;
            self.restarts += 1;
            self.start_serving();
        }
    }

    /// The exit status once stopping is over: every instance reaped.
    /// With each `stop --wait` client told, to be awaited until its answer is written.
    fn finished(&mut self) -> Option<(u8, Vec<oneshot::Receiver<()>>)> {
        let stopping = self.stopping.as_mut()?;
        if self.serving.is_some() || self.candidate.is_some() || !self.retiring.is_empty() {
            return None;
        }
        let code = stopping.code.unwrap_or(0);
        let mut answered = Vec::new();
        for waiter in stopping.waiters.drain(..) {
            let (written, done) = oneshot::channel();
            let mut answer = Answer::ok(json!({"pid": std::process::id(), "exit_code": code}));
            answer.written = Some(written);
            if waiter.send(answer).is_ok() {
                answered.push(done);
            }
        }
        Some((code, answered))
    }

    fn upgrade_supervisor(&mut self, reply: Option<oneshot::Sender<Answer>>) {
        let refusal = if self.stopping.is_some() {
            Some((
                "stopping",
                "the supervisor is stopping; upgrade refused".to_string(),
            ))
        } else if let Some(candidate) = &self.candidate {
            Some((
                "in_progress",
                format!(
                    "an upgrade of the instance is in progress (new instance {}); try again once it is over",
                    candidate.instance.pid
                ),
            ))
        } else if self.reexec_pending {
            Some((
                "in_progress",
                "a supervisor upgrade is already in progress".to_string(),
            ))
        } else {
            None
        };
        if let Some((reason, error)) = refusal {
            log!("supervisor upgrade refused: {error}");
            if let Some(reply) = reply {
                let _ = reply.send(Answer::failed(json!({"reason": reason, "error": error})));
            }
            return;
        }
        self.reexec_pending = true;
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = reexec::preflight().await;
            let _ = events.send(Event::Preflight(result, reply));
        });
    }

    async fn after_preflight(
        &mut self,
        result: Result<String, String>,
        reply: Option<oneshot::Sender<Answer>>,
    ) {
        self.reexec_pending = false;
        let version = match result {
            Ok(version) => version,
            Err(error) => {
                log!("supervisor upgrade refused; this one goes on: {error}");
                if let Some(reply) = reply {
                    let _ = reply.send(Answer::failed(
                        json!({"reason": "preflight", "error": error}),
                    ));
                }
                return;
            }
        };
        if self.stopping.is_some() || self.candidate.is_some() {
            if let Some(reply) = reply {
                let _ = reply.send(Answer::failed(json!({"reason": "in_progress", "error": "an upgrade or a stop began during the preflight; supervisor upgrade refused"})));
            }
            return;
        }
        log!("supervisor binary checked ({version}); re-executing in place");
        if let Some(reply) = reply {
            let (written, done) = oneshot::channel();
            let answer = json!({"pid": std::process::id(), "supervisor": true, "version": version, "generation": self.generation,
                "instance": self.serving.as_ref().map(|s| s.pid)});
            let _ = reply.send(Answer {
                ok: true,
                fields: answer,
                written: Some(written),
            });
            // The control client is answered before this image is replaced.
            let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
        }
        let error = reexec::exec(self);
        log!("supervisor upgrade failed; this one goes on: {error}");
    }

    /// Removes what this supervisor created and closes the sockets.
    pub fn finish(self) {
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.sockets.close();
    }
}

/// The inode of a socket, as /proc shows it (`socket:[INODE]`, `ino:` in fdinfo).
fn inode(fd: &std::os::fd::OwnedFd) -> Option<u64> {
    rustix::fs::fstat(fd).ok().map(|stat| stat.st_ino)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
