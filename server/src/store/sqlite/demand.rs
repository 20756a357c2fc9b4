//! The demand reports of [`Store::exchange_demand`](super::super::Store::exchange_demand),
//! in memory: one process serves a SQLite file, so its reports have no one
//! to reach, and keeping them here costs the file no write (and no fsync)
//! per tick. The answers are those of PostgreSQL's `rate_demand` table.

use std::collections::{BTreeMap, HashMap};

use keygate::KeyId;

use super::super::{DemandReport, PeerDemand};

/// Every instance's last heartbeat and demand, as the tables would hold them.
#[derive(Debug, Default)]
pub(super) struct DemandTable {
    /// Instance to the time of its last report.
    instances: HashMap<String, i64>,
    /// (meter, instance) to (demand, time of the report).
    rows: HashMap<(KeyId, String), (f64, i64)>,
}

impl DemandTable {
    /// The other instances' fresh reports as they were, then `report` written.
    pub(super) fn exchange(&mut self, report: &DemandReport) -> PeerDemand {
        let fresh = |at: i64| at >= report.fresh_since_ms;
        let instances = self
            .instances
            .iter()
            .filter(|(id, at)| **id != report.instance && fresh(**at))
            .count();
        let mut demand: BTreeMap<&str, (KeyId, f64)> = BTreeMap::new();
        for ((meter, instance), (d, at)) in &self.rows {
            if *instance != report.instance && fresh(*at) {
                demand.entry(meter.as_str()).or_insert((*meter, 0.0)).1 += d;
            }
        }
        let peers = PeerDemand {
            instances: u32::try_from(instances).unwrap_or(u32::MAX),
            demand: demand.into_values().collect(),
        };
        self.instances.insert(report.instance.clone(), report.at_ms);
        for (meter, d) in &report.demand {
            self.rows
                .insert((*meter, report.instance.clone()), (*d, report.at_ms));
        }
        if let Some(before) = report.purge_before_ms {
            self.instances.retain(|_, at| *at >= before);
            self.rows.retain(|_, (_, at)| *at >= before);
        }
        peers
    }

    /// Forgets `instance`'s reports.
    pub(super) fn withdraw(&mut self, instance: &str) {
        self.instances.remove(instance);
        self.rows.retain(|(_, i), _| i != instance);
    }
}
