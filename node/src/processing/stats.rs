//! The engine's metrics (exported in Prometheus form by the daemon): bundles received,
//! forwarded, delivered, expired, deleted by RFC 9171 §6.1.1 reason, discarded as invalid
//! (§5.6), duplicates, status reports (§6.1), store use, bundles waiting for a route or link
//! (§5.4.1), and per-neighbour output and failures.

use super::BundleEngine;
use crate::api::{Metric, MetricKind, NodeStats};

impl BundleEngine {
    pub(super) fn collect_stats(&self) -> NodeStats {
        use MetricKind::{Counter, Gauge};
        let c = &self.counters;
        let mut m = vec![
            Metric::new(
                "dtn_bundles_received_total",
                "Bundles received from neighbours and accepted for processing",
                Counter,
                &[],
                c.received as f64,
            ),
            Metric::new(
                "dtn_bundles_originated_total",
                "Bundles created at this node (applications, status reports, echo replies)",
                Counter,
                &[],
                c.originated as f64,
            ),
            Metric::new(
                "dtn_bundles_forwarded_total",
                "Bundles forwarded and confirmed by the convergence layer",
                Counter,
                &[],
                c.forwarded as f64,
            ),
            Metric::new(
                "dtn_bundles_delivered_total",
                "Bundles delivered to applications and acknowledged (and echo requests answered)",
                Counter,
                &[],
                c.delivered as f64,
            ),
            Metric::new(
                "dtn_bundles_expired_total",
                "Bundles whose lifetime expired at this node",
                Counter,
                &[],
                c.expired as f64,
            ),
            Metric::new(
                "dtn_bundles_duplicate_total",
                "Received bundles already held or already delivered",
                Counter,
                &[],
                c.duplicate as f64,
            ),
            Metric::new(
                "dtn_status_reports_sent_total",
                "Bundle status reports generated",
                Counter,
                &[],
                c.reports_sent as f64,
            ),
            Metric::new(
                "dtn_status_reports_suppressed_total",
                "Bundle status reports not generated (rate limit, store full)",
                Counter,
                &[],
                c.reports_suppressed as f64,
            ),
            Metric::new(
                "dtn_admin_records_received_total",
                "Administrative records addressed to this node",
                Counter,
                &[],
                c.admin_received as f64,
            ),
        ];
        for (reason, v) in &c.deleted {
            m.push(Metric::new(
                "dtn_bundles_deleted_total",
                "Bundles deleted, by RFC 9171 reason",
                Counter,
                &[("reason", reason)],
                *v as f64,
            ));
        }
        if c.deleted.is_empty() {
            m.push(Metric::new(
                "dtn_bundles_deleted_total",
                "Bundles deleted, by RFC 9171 reason",
                Counter,
                &[("reason", "lifetime_expired")],
                0.0,
            ));
        }
        for (reason, v) in &c.discarded {
            m.push(Metric::new(
                "dtn_bundles_discarded_total",
                "Invalid bundles discarded on reception",
                Counter,
                &[("reason", reason)],
                *v as f64,
            ));
        }
        if c.discarded.is_empty() {
            m.push(Metric::new(
                "dtn_bundles_discarded_total",
                "Invalid bundles discarded on reception",
                Counter,
                &[("reason", "invalid")],
                0.0,
            ));
        }
        for (reason, v) in &c.refused {
            m.push(Metric::new(
                "dtn_bundles_refused_total",
                "Received bundles refused (store full, reassembly limit)",
                Counter,
                &[("reason", reason)],
                *v as f64,
            ));
        }
        let usage = self.store.usage();
        m.push(Metric::new(
            "dtn_store_bundles",
            "Bundles held in the store",
            Gauge,
            &[],
            usage.bundles as f64,
        ));
        m.push(Metric::new(
            "dtn_store_bytes",
            "Bytes of bundles held in the store",
            Gauge,
            &[],
            usage.bytes as f64,
        ));
        m.push(Metric::new(
            "dtn_store_quota_bundles",
            "Store quota in bundles",
            Gauge,
            &[],
            usage.quota_bundles as f64,
        ));
        m.push(Metric::new(
            "dtn_store_quota_bytes",
            "Store quota in bytes",
            Gauge,
            &[],
            usage.quota_bytes as f64,
        ));
        let w = self.store.counters();
        m.push(Metric::new(
            "dtn_store_syncs_total",
            "Store syncs to disk (sled flush and fdatasync)",
            Counter,
            &[],
            w.syncs as f64,
        ));
        m.push(Metric::new(
            "dtn_store_entries_written_total",
            "Store entries (puts and deletes; three per bundle) applied to sled",
            Counter,
            &[],
            w.entries_written as f64,
        ));
        for (outcome, n) in [("released", w.held_released), ("flushed", w.held_flushed)] {
            m.push(Metric::new(
                "dtn_store_held_total",
                "Bundles in transit held out of the group commit: released (left the store unwritten) or flushed",
                Counter,
                &[("outcome", outcome)],
                n as f64,
            ));
        }
        m.push(Metric::new(
            "dtn_bundles_waiting",
            "Bundles waiting for a route or a link",
            Gauge,
            &[],
            self.waiting.len() as f64,
        ));
        m.push(Metric::new(
            "dtn_registrations",
            "Registered application endpoints",
            Gauge,
            &[],
            self.registrations.len() as f64,
        ));
        m.push(Metric::new(
            "dtn_reassembly_bytes",
            "Payload bytes held by the fragment reassembler",
            Gauge,
            &[],
            self.reassembler.bytes_held() as f64,
        ));
        for n in &self.neighbours {
            let name = n.cfg.name.as_str();
            m.push(Metric::new(
                "dtn_neighbour_bundles_out_total",
                "Bundles (or fragments) transferred to the neighbour",
                Counter,
                &[("neighbour", name)],
                n.bundles_out as f64,
            ));
            m.push(Metric::new(
                "dtn_neighbour_bytes_out_total",
                "Bytes transferred to the neighbour",
                Counter,
                &[("neighbour", name)],
                n.bytes_out as f64,
            ));
            m.push(Metric::new(
                "dtn_neighbour_queued",
                "Bundles queued for the neighbour",
                Gauge,
                &[("neighbour", name)],
                n.queued() as f64,
            ));
            m.push(Metric::new(
                "dtn_neighbour_in_flight",
                "Transfers handed to the neighbour's adapter and not yet reported",
                Gauge,
                &[("neighbour", name)],
                n.in_flight as f64,
            ));
            m.push(Metric::new(
                "dtn_neighbour_up",
                "Whether the neighbour's link is usable",
                Gauge,
                &[("neighbour", name)],
                if n.up { 1.0 } else { 0.0 },
            ));
            for (reason, v) in &n.failures {
                m.push(Metric::new(
                    "dtn_neighbour_failures_total",
                    "Failed transfers to the neighbour, by reason",
                    Counter,
                    &[("neighbour", name), ("reason", reason)],
                    *v as f64,
                ));
            }
        }
        NodeStats { metrics: m }
    }
}
