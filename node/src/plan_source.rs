//! The configured contact plan (`[contact_plan]`): reading it from its file or the inline text,
//! building the Contact Graph Router over it, and noticing when the file changed so that the
//! daemon reloads it while running.
//!
//! Relative plan times (`+N` in ION lines, HDTN JSON seconds) count from the node's start (the
//! `reference` given here), also on reload, so that a reloaded plan means the same instants as
//! the one it replaces; an ION `@ yyyy/mm/dd-hh:mm:ss` line sets an absolute reference for the
//! lines after it, which is how several nodes share one plan. Reading is all-or-nothing
//! ([`ContactPlan::load`]): a plan with a bad line is refused whole with `FILE:LINE: reason`, and a
//! failed reload leaves the running plan as it was.

use std::path::Path;
use std::time::SystemTime;

use crate::config::{ContactPlanSection, PlanSource};
use crate::routing::{
    ContactPlan, DtnMillis, HdtnTimeBase, PlanError, PlanOptions, Router, RouterConfig,
};

/// Label of an inline plan in error messages.
pub const INLINE_LABEL: &str = "[contact_plan] text";

/// Reads the plan `section` names, relative times counted from `reference`.
pub fn read_plan(
    section: &ContactPlanSection,
    reference: DtnMillis,
) -> Result<ContactPlan, PlanError> {
    let mut opts = PlanOptions::new(reference);
    if section.hdtn_unix_time {
        opts.hdtn_time_base = HdtnTimeBase::UnixSeconds;
    }
    match &section.source {
        PlanSource::File(path) => ContactPlan::load(path, &opts),
        PlanSource::Inline(text) if text.trim_start().starts_with('{') => {
            ContactPlan::parse_hdtn_json(text, INLINE_LABEL, &opts)
        }
        PlanSource::Inline(text) => ContactPlan::parse_ion(text, INLINE_LABEL, &opts),
    }
}

/// A Contact Graph Router for node `local` over `plan` with the section's settings.
pub fn router(section: &ContactPlanSection, local: u64, plan: ContactPlan) -> Router {
    Router::with_config(
        local,
        plan,
        RouterConfig {
            k: section.alternate_routes.max(1),
            ..RouterConfig::default()
        },
    )
}

/// What identifies a version of the plan file: its modification time and length.
pub type FileStamp = (SystemTime, u64);

/// Reads of a file written in place while it is read, before [`read_settled`] gives up.
const READ_ATTEMPTS: usize = 3;

/// A read of the plan and the version of the file it came from.
#[derive(Debug)]
pub struct PlanRead {
    /// The plan, or why it was refused.
    pub plan: Result<ContactPlan, PlanError>,
    /// The file's stamp when it was read (`None` for an inline plan or an unreadable file):
    /// a later different stamp means the file changed since.
    pub stamp: Option<FileStamp>,
}

/// Reads the plan like [`read_plan`], taking the file's stamp before and after: a read during
/// which the file changed (written in place, so possibly half written) is not used but read
/// again, up to a few times; `None` if the file kept changing.
pub fn read_settled(section: &ContactPlanSection, reference: DtnMillis) -> Option<PlanRead> {
    for _ in 0..READ_ATTEMPTS {
        let before = modified(section);
        let plan = read_plan(section, reference);
        if modified(section) == before {
            return Some(PlanRead {
                plan,
                stamp: before,
            });
        }
    }
    None
}

/// The plan file's [`FileStamp`] (`None` for an inline plan or an unreadable file). The daemon
/// reloads when it changes.
pub fn modified(section: &ContactPlanSection) -> Option<FileStamp> {
    match &section.source {
        PlanSource::File(path) => file_stamp(path),
        PlanSource::Inline(_) => None,
    }
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ContactEndPolicy;

    fn section(source: PlanSource) -> ContactPlanSection {
        ContactPlanSection {
            source,
            reload_check: None,
            on_contact_end: ContactEndPolicy::Suspend,
            alternate_routes: 2,
            hdtn_unix_time: false,
        }
    }

    #[test]
    fn inline_ion_and_json_relative_to_the_reference() {
        let s = section(PlanSource::Inline(
            "a contact +10 +20 1 2 1000\na range +0 +100 1 2 3\n".into(),
        ));
        let plan = read_plan(&s, 1_000_000).unwrap();
        let c = plan.contacts().next().unwrap();
        assert_eq!((c.start, c.end, c.rate), (1_010_000, 1_020_000, 1000));
        assert_eq!(plan.owlt(2, 1, 1_050_000), Some(3000));

        let s = section(PlanSource::Inline(
            r#"{"contacts":[{"contact":0,"source":1,"dest":2,"startTime":5,"endTime":6,"rateBitsPerSec":8000,"owlt":1}]}"#.into(),
        ));
        let plan = read_plan(&s, 0).unwrap();
        let c = plan.contacts().next().unwrap();
        assert_eq!((c.start, c.end, c.rate), (5_000, 6_000, 1000));
    }

    #[test]
    fn bad_line_names_the_source_and_line() {
        let s = section(PlanSource::Inline(
            "a contact +0 +10 1 2 100\nbogus\n".into(),
        ));
        let e = read_plan(&s, 0).unwrap_err().to_string();
        assert!(e.starts_with("[contact_plan] text:2:"), "{e}");
        let dir = std::env::temp_dir().join(format!("plan-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plan.txt");
        std::fs::write(&path, "a contact +0 +x 1 2 100\n").unwrap();
        let s = section(PlanSource::File(path.clone()));
        let e = read_plan(&s, 0).unwrap_err().to_string();
        assert!(e.contains("plan.txt:1:"), "{e}");
        assert!(modified(&s).is_some());
        let read = read_settled(&s, 0).unwrap();
        assert_eq!(read.stamp, modified(&s));
        assert!(read.plan.is_err());
        let missing = section(PlanSource::File(dir.join("none.txt")));
        assert!(read_plan(&missing, 0).is_err());
        assert!(modified(&missing).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn router_uses_the_section_settings() {
        let s = section(PlanSource::Inline("a contact +0 +10 1 2 100\n".into()));
        let r = router(&s, 1, read_plan(&s, 0).unwrap());
        assert_eq!(r.local(), 1);
        assert_eq!(r.plan().contact_count(), 1);
    }
}
