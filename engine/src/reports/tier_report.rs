//! Read-only views of temperature: the rows of `dfs list-hot` / `dfs list-cold` and the
//! detail of `dfs extent-stats`. Statistics are the live ones (not yet persisted
//! accesses included); classes are those of the last pass.

use serde::Serialize;

use crate::base::error::{Error, Result};
use crate::meta::state::{ChunkSlot, EXTENT_BYTES_MAX};
use crate::pool::Pool;
use crate::temperature::tracker::Temperature;
use crate::temperature::Class;

/// One classified extent, as `list-hot` and `list-cold` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TemperatureRow {
    pub extent: String,
    pub file: String,
    pub offset: u64,
    pub class: Class,
    /// P(class | history), from the HMM's forward filter (1 for the thresholds).
    pub confidence: f64,
    pub ops_per_day: f64,
    /// UTC, or `None` when never accessed.
    pub last_access: Option<String>,
    pub policy: String,
    /// The policy tiering wants (the pinned one for a pinned file).
    pub target: String,
    pub pinned: bool,
}

/// What one pass saw of an extent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PassView {
    /// When the pass ran (UTC).
    pub at: String,
    /// Accesses since the previous pass.
    pub accesses: u32,
    /// The threshold class at the pass.
    pub observed: Class,
    /// The classifier's state there (the HMM's most likely path).
    pub state: Class,
}

/// One re-encoding of the extent's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyChangeView {
    pub at: String,
    pub from: String,
    pub to: String,
    pub cause: String,
}

/// Everything `extent-stats` shows of one extent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExtentStats {
    pub row: TemperatureRow,
    pub len: u32,
    pub total_accesses: u64,
    /// Passes that observed this extent, oldest first.
    pub passes: Vec<PassView>,
    pub policy_history: Vec<PolicyChangeView>,
}

fn utc(secs: i64) -> String {
    crate::base::clock::WallTime { secs, nanos: 0 }.to_string()
}

impl Pool {
    fn temperature_row(&self, slot: ChunkSlot, file: String, temperature: &Temperature) -> Option<TemperatureRow> {
        let record = self.state.slot_extent(slot)?;
        let stats = self.access_stats_over(slot, Some(temperature));
        let now = self.clock.wall().secs;
        Some(TemperatureRow {
            extent: slot.to_string(),
            file,
            offset: slot.index * EXTENT_BYTES_MAX,
            class: temperature.class,
            confidence: temperature.belief(&self.state.tiering),
            ops_per_day: stats.ops_per_day(now),
            last_access: stats.last_access_secs.map(utc),
            policy: record.policy.to_string(),
            target: self.target_policy(slot).to_string(),
            pinned: self.is_pinned(slot.ino),
        })
    }

    /// Extents of `class` at the last pass: hot ones busiest first, others least
    /// recently accessed first. Extents no pass has seen yet are not listed.
    pub fn temperature_rows(&self, class: Class) -> Result<Vec<TemperatureRow>> {
        let paths = self.paths();
        let mut rows: Vec<TemperatureRow> = Vec::new();
        self.each_temperature(&mut |slot, temperature| {
            if temperature.classified() == Some(class) {
                let file = paths.get(&slot.ino).cloned().unwrap_or_else(|| format!("(unlinked inode {})", slot.ino.0));
                rows.extend(self.temperature_row(slot, file, temperature));
            }
            true
        })?;
        match class {
            Class::Hot => rows.sort_by(|a, b| b.ops_per_day.total_cmp(&a.ops_per_day).then(a.extent.cmp(&b.extent))),
            _ => rows.sort_by(|a, b| a.last_access.cmp(&b.last_access).then(a.extent.cmp(&b.extent))),
        }
        Ok(rows)
    }

    /// The temperature, pass history and policy history of one extent.
    pub fn extent_stats(&self, slot: ChunkSlot) -> Result<ExtentStats> {
        let paths = self.paths();
        let file = paths.get(&slot.ino).cloned().unwrap_or_else(|| format!("(unlinked inode {})", slot.ino.0));
        let temperature = self.temperature(slot)?.unwrap_or_default();
        let row = self
            .temperature_row(slot, file, &temperature)
            .ok_or_else(|| Error::NotFound(format!("extent {slot} (see `dfs list-extents`)")))?;
        let record = self.slot_record(slot)?.ok_or_else(|| Error::NotFound(format!("extent {slot}")))?;
        let states = temperature.decoded_states(&self.state.tiering);
        // Every pass observes every extent, so the history lines up with the newest passes.
        let skip = self.state.passes.len().saturating_sub(temperature.history.len());
        let passes = temperature
            .history
            .iter()
            .zip(&states)
            .enumerate()
            .map(|(i, (observation, state))| PassView {
                at: self.state.passes.get(skip + i).map_or_else(|| "?".to_string(), |secs| utc(*secs)),
                accesses: observation.accesses,
                observed: observation.observed,
                state: *state,
            })
            .collect();
        Ok(ExtentStats {
            row,
            len: record.len,
            total_accesses: self.access_stats_over(slot, Some(&temperature)).total,
            passes,
            policy_history: record
                .history
                .iter()
                .map(|c| PolicyChangeView {
                    at: c.at.to_string(),
                    from: c.from.to_string(),
                    to: c.to.to_string(),
                    cause: c.cause.to_string(),
                })
                .collect(),
        })
    }
}
