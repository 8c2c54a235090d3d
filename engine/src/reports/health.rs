//! Pool health: every problem an operator should know of, each with what to do about
//! it. Critical problems make the pool unhealthy (`dfs health` exits non-zero, the
//! daemon's `/health` answers 503); warnings do not.
//!
//! Unhealthy means redundancy or service is below what was asked: the pool is read-only,
//! a disk that data still depends on failed or is missing, extents are short of their
//! policy or lost. A failed disk that nothing depends on any more (everything rebuilt
//! elsewhere) is only a warning: remove it.

use serde::Serialize;

use crate::meta::state::DiskState;
use crate::pool::Pool;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    Warning,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// One problem and the way out of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// What it concerns: `pool`, a disk id, `extents`, `scrub`, …
    pub subject: String,
    pub what: String,
    pub action: String,
}

/// The pool's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// No critical problem.
    pub healthy: bool,
    /// Most severe first.
    pub problems: Vec<Problem>,
}

/// Where an action names the pool: `HealthReport::naming_pool` puts the pool directory
/// there, so every action is a command that runs as printed.
const POOL_ARGUMENT: &str = "--pool POOL";

impl HealthReport {
    /// The report with each action's `--pool POOL` naming `pool_dir` (quoted for a shell
    /// when it must be).
    pub fn naming_pool(mut self, pool_dir: &std::path::Path) -> HealthReport {
        let path = pool_dir.display().to_string();
        let quoted = if path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
            path
        } else {
            format!("'{}'", path.replace('\'', "'\\''"))
        };
        for problem in &mut self.problems {
            problem.action = problem.action.replace(POOL_ARGUMENT, &format!("--pool {quoted}"));
        }
        self
    }
}

/// Fill ratio above which a disk is a warning, and above which it is critical.
const FULL_WARNING: f64 = 0.90;
const FULL_CRITICAL: f64 = 0.98;

impl Pool {
    /// Assesses the pool from metadata and device reachability (no fragment reads;
    /// `dfs scrub` verifies contents).
    pub fn pool_health(&self) -> HealthReport {
        self.health_report(true)
    }

    /// `pool_health` from what the pool knows, without listing any disk (lost extents by
    /// `known_health`): what `/health` and the metrics serve at every poll.
    pub fn known_pool_health(&self) -> HealthReport {
        self.health_report(false)
    }

    /// The health report; `listed` counts lost extents by listing every disk's fragments.
    fn health_report(&self, listed: bool) -> HealthReport {
        let mut problems = Vec::new();
        let mut add = |severity, subject: &str, what: String, action: &str| {
            problems.push(Problem { severity, subject: subject.to_string(), what, action: action.to_string() });
        };
        if let Some(reason) = &self.read_only {
            add(
                Severity::Critical,
                "pool",
                format!("the pool is read-only: {reason}"),
                "check the disks (dfs list-disks --pool POOL, the daemon log), then unmount and mount again to recover",
            );
        }
        let infos = self.disk_infos();
        for disk in self.state.disks.values() {
            let id = disk.id.to_string();
            let info = infos.iter().find(|i| i.id == id);
            let depended_on = info.is_some_and(|i| i.fragments > 0);
            match disk.state {
                DiskState::Failed if depended_on => add(
                    Severity::Critical,
                    &id,
                    format!("disk {id} failed and {} fragment(s) still lived there", info.map_or(0, |i| i.fragments)),
                    "add a replacement (dfs add-disk --pool POOL --disk DIR) and run dfs rebuild --pool POOL (a mounted pool rebuilds by itself); if the disk itself is back, add its directory the same way: what it still holds is used again",
                ),
                DiskState::Failed => add(
                    Severity::Warning,
                    &id,
                    format!("disk {id} failed; everything on it was rebuilt elsewhere"),
                    &format!("remove it: dfs remove-disk --pool POOL --disk {id}"),
                ),
                DiskState::Draining => add(
                    Severity::Warning,
                    &id,
                    format!("disk {id} is draining ({} fragment(s) left)", info.map_or(0, |i| i.fragments)),
                    "nothing to do: dfs list-disks --pool POOL shows the progress",
                ),
                DiskState::Active | DiskState::Removed => {}
            }
            let legacy = self.devices.get(&disk.id).map_or(0, |d| d.legacy_blocks());
            if legacy > 0 {
                add(
                    Severity::Warning,
                    &id,
                    format!(
                        "disk {id} keeps {legacy} fragment(s) in files of their own (the layout before segments): \
                         they are served as they are, at an inode each"
                    ),
                    "pack them into segments: dfs upgrade --pool POOL (resumable; works on a mounted pool)",
                );
            }
            if let Some(offline) = self.state.offline.get(&disk.id).filter(|_| disk.state.readable()) {
                let grace = self.state.availability.grace_secs;
                let left = (offline.since.secs + grace as i64 - self.clock.wall().secs).max(0);
                add(
                    Severity::Warning,
                    &id,
                    format!(
                        "disk {id} is offline ({}); reads go around it and writes continue without it; it is marked \
                         failed and rebuilt elsewhere in {left} s unless it comes back",
                        offline.reason
                    ),
                    &format!(
                        "bring it back (mount its filesystem or reconnect it: it rejoins by itself), or if it is gone \
                         for good: dfs fail-disk --pool POOL --disk {id}"
                    ),
                );
                continue;
            }
            if disk.state == DiskState::Active {
                if let Some(info) = info {
                    if info.full && info.reachable {
                        let declared = disk.capacity_bytes.filter(|c| *c > info.capacity_bytes);
                        add(
                            Severity::Critical,
                            &id,
                            match declared {
                                Some(declared) => format!(
                                    "disk {id} is full: the filesystem it lives on ({}) has no room left, though \
                                     {} were declared",
                                    info.path,
                                    crate::base::units::human(declared)
                                ),
                                None => format!("disk {id} is full"),
                            },
                            "free space on that filesystem, or add disks (dfs add-disk --pool POOL --disk DIR, then \
                             dfs rebalance --pool POOL)",
                        );
                        continue;
                    }
                    if !info.reachable {
                        add(
                            Severity::Critical,
                            &id,
                            format!("disk {id} ({}) cannot be reached", info.path),
                            &format!("check that its filesystem is mounted; if it is gone for good: dfs fail-disk --pool POOL --disk {id}"),
                        );
                    } else if info.capacity_bytes > 0 {
                        let fill = info.used_bytes as f64 / info.capacity_bytes as f64;
                        if fill >= FULL_WARNING {
                            add(
                                if fill >= FULL_CRITICAL { Severity::Critical } else { Severity::Warning },
                                &id,
                                format!("disk {id} is {:.0}% full", fill * 100.0),
                                "add disks (dfs add-disk --pool POOL --disk DIR, then dfs rebalance --pool POOL) or free space",
                            );
                        }
                    }
                }
            }
        }
        if self.read_only.is_none() && !self.state.disks.is_empty() {
            if let Err(error) = self.check_writable(self.state.default_policy) {
                add(
                    Severity::Critical,
                    "pool",
                    format!("the pool cannot accept writes: {error}"),
                    "add a disk with room (dfs add-disk --pool POOL --disk DIR), or store new data under a policy \
                     the disks can place (dfs change-policy --pool POOL --policy …)",
                );
            }
        }
        let lost = if listed { self.lost_extents() } else { self.known_lost_extents() };
        if !lost.is_empty() {
            add(
                Severity::Critical,
                "extents",
                format!("{} extent(s) lost: fewer fragments than their policy needs", lost.len()),
                "dfs list-extents --pool POOL shows which files; restore them from a backup",
            );
        }
        let degraded = self.rebuild_queue_len().saturating_sub(lost.len());
        if degraded > 0 {
            add(
                Severity::Critical,
                "extents",
                format!("{degraded} extent(s) short of their policy's fragments (still readable)"),
                "dfs rebuild --pool POOL (a mounted pool rebuilds in the background); dfs rebuild-status --pool POOL shows the queue",
            );
        }
        let journals = self.journal_disks().len();
        let active = self.state.disks.values().filter(|d| d.state == DiskState::Active).count();
        if journals < crate::meta::state::JOURNAL_REPLICAS.min(active.max(1)) {
            add(
                Severity::Warning,
                "journal",
                format!("metadata has {journals} replica(s)"),
                "add disks: the journal is kept on three",
            );
        }
        for transition in self.state.transitions.values() {
            if transition.state == crate::meta::state::TransitionState::Failed {
                add(
                    Severity::Warning,
                    "policy",
                    format!(
                        "policy transition {} to {} failed: {}",
                        transition.id,
                        transition.policy,
                        transition.error.clone().unwrap_or_default()
                    ),
                    "fix the cause (space, disks) and run dfs change-policy --pool POOL again",
                );
            }
        }
        if let Some(last) = self.state.scrub.last_full_pass {
            if last.stats.unrecoverable > 0 {
                add(
                    Severity::Critical,
                    "scrub",
                    format!("the last scrub pass found {} unrecoverable extent(s)", last.stats.unrecoverable),
                    "dfs scrub --pool POOL lists them by file and offset; restore those files from a backup",
                );
            }
        }
        problems.sort_by_key(|p| std::cmp::Reverse(p.severity));
        HealthReport { healthy: problems.iter().all(|p| p.severity != Severity::Critical), problems }
    }
}
