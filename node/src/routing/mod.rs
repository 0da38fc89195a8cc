//! Routing: contact plans (ION `ionrc(5)` text and HDTN JSON), Contact Graph Routing as CCSDS
//! SABR (734.3-B-1) and ION define it, and static routes as a fallback.
//!
//! Everything here is pure: no clock and no I/O except reading a plan file given its path. Times
//! are DTN time in milliseconds since 2000-01-01T00:00:00Z (RFC 9171 §4.2.6), node ids are `ipn`
//! node numbers.

pub mod cgr;
pub mod contact_plan;
pub mod static_routes;

pub use cgr::{BookError, Booking, Route, RouteSource, Router, RouterConfig};
pub use contact_plan::{
    Contact, ContactKey, ContactPlan, DtnMillis, HdtnTimeBase, PlanConflict, PlanError,
    PlanOptions, Range,
};
pub use static_routes::{NodePattern, StaticRoute, StaticRouteError, StaticRoutes};
