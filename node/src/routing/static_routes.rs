//! Static routes: a fallback table from destination node number (or a pattern of node numbers) to
//! a next hop, used when Contact Graph Routing finds no route (as ION's `ipnadmin` "plans" and
//! HDTN's static routes do). The table has a configured size limit; adding beyond it is refused.

use thiserror::Error;

/// A pattern of destination node numbers that a static route applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePattern {
    /// Exactly this node number.
    Exact(u64),
    /// Every node number from `lo` to `hi` inclusive.
    Range {
        /// Lowest node number matched.
        lo: u64,
        /// Highest node number matched.
        hi: u64,
    },
    /// Every node number (a default route).
    Any,
}

impl NodePattern {
    /// Whether `node` matches this pattern.
    pub fn matches(&self, node: u64) -> bool {
        match *self {
            NodePattern::Exact(n) => n == node,
            NodePattern::Range { lo, hi } => (lo..=hi).contains(&node),
            NodePattern::Any => true,
        }
    }

    /// How specific the pattern is (lower is more specific): exact, then narrower ranges, then any.
    fn specificity(&self) -> u128 {
        match *self {
            NodePattern::Exact(_) => 0,
            NodePattern::Range { lo, hi } => 1 + u128::from(hi - lo),
            NodePattern::Any => u128::MAX,
        }
    }
}

impl std::str::FromStr for NodePattern {
    type Err = StaticRouteError;

    /// Parses `N`, `ipn:N` (optionally `ipn:N.*`), `LO-HI` or `*`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StaticRouteError::BadPattern(s.to_string());
        let t = s.trim();
        if t == "*" || t == "ipn:*" || t == "ipn:*.*" {
            return Ok(NodePattern::Any);
        }
        let t = t.strip_prefix("ipn:").unwrap_or(t);
        let t = t.strip_suffix(".*").unwrap_or(t);
        if let Some((lo, hi)) = t.split_once('-') {
            let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            return Ok(NodePattern::Range { lo, hi });
        }
        t.parse().map(NodePattern::Exact).map_err(|_| bad())
    }
}

/// One static route: destinations matching `pattern` are forwarded to `next_hop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    /// The destinations this route applies to.
    pub pattern: NodePattern,
    /// The neighbour to forward to.
    pub next_hop: u64,
}

/// Errors of the static route table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StaticRouteError {
    /// The table already holds its configured maximum number of routes.
    #[error("static route table is full ({0} routes)")]
    Full(usize),
    /// A destination pattern could not be parsed.
    #[error("bad destination pattern {0:?} (expected N, ipn:N, LO-HI or *)")]
    BadPattern(String),
}

/// Default maximum number of static routes.
pub const DEFAULT_MAX_STATIC_ROUTES: usize = 4096;

/// A bounded table of static routes; the most specific matching pattern wins.
#[derive(Debug, Clone)]
pub struct StaticRoutes {
    routes: Vec<StaticRoute>,
    limit: usize,
}

impl Default for StaticRoutes {
    fn default() -> Self {
        Self::with_limit(DEFAULT_MAX_STATIC_ROUTES)
    }
}

impl StaticRoutes {
    /// An empty table holding at most `limit` routes.
    pub fn with_limit(limit: usize) -> Self {
        StaticRoutes {
            routes: Vec::new(),
            limit,
        }
    }

    /// Adds a route; a route with the same pattern is replaced. Fails when the table is full.
    pub fn add(&mut self, pattern: NodePattern, next_hop: u64) -> Result<(), StaticRouteError> {
        if let Some(r) = self.routes.iter_mut().find(|r| r.pattern == pattern) {
            r.next_hop = next_hop;
            return Ok(());
        }
        if self.routes.len() >= self.limit {
            return Err(StaticRouteError::Full(self.limit));
        }
        self.routes.push(StaticRoute { pattern, next_hop });
        Ok(())
    }

    /// Removes the route with exactly this pattern; returns whether one was removed.
    pub fn remove(&mut self, pattern: NodePattern) -> bool {
        let before = self.routes.len();
        self.routes.retain(|r| r.pattern != pattern);
        before != self.routes.len()
    }

    /// All routes in insertion order.
    pub fn routes(&self) -> &[StaticRoute] {
        &self.routes
    }

    /// The next hop for `dest`: the most specific matching route whose next hop is not in
    /// `exclude` (an excluded next hop is still used when it is the destination itself).
    pub fn lookup(&self, dest: u64, exclude: &[u64]) -> Option<u64> {
        self.routes
            .iter()
            .filter(|r| r.pattern.matches(dest))
            .filter(|r| r.next_hop == dest || !exclude.contains(&r.next_hop))
            .min_by_key(|r| r.pattern.specificity())
            .map(|r| r.next_hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_wins() {
        let mut t = StaticRoutes::default();
        t.add(NodePattern::Any, 1).unwrap();
        t.add("10-20".parse().unwrap(), 2).unwrap();
        t.add("12-13".parse().unwrap(), 3).unwrap();
        t.add("ipn:12".parse().unwrap(), 4).unwrap();
        assert_eq!(t.lookup(12, &[]), Some(4));
        assert_eq!(t.lookup(13, &[]), Some(3));
        assert_eq!(t.lookup(15, &[]), Some(2));
        assert_eq!(t.lookup(99, &[]), Some(1));
        // Excluded next hop falls back to a less specific route.
        assert_eq!(t.lookup(12, &[4]), Some(3));
        // ...unless it is the destination itself.
        t.add(NodePattern::Exact(30), 30).unwrap();
        assert_eq!(t.lookup(30, &[30]), Some(30));
    }

    #[test]
    fn limit_and_bad_patterns() {
        let mut t = StaticRoutes::with_limit(1);
        t.add(NodePattern::Exact(1), 1).unwrap();
        t.add(NodePattern::Exact(1), 2).unwrap(); // replacement is not growth
        assert_eq!(t.lookup(1, &[]), Some(2));
        assert_eq!(
            t.add(NodePattern::Exact(2), 1),
            Err(StaticRouteError::Full(1))
        );
        assert!("5-3".parse::<NodePattern>().is_err());
        assert!("x".parse::<NodePattern>().is_err());
        assert_eq!("ipn:7.*".parse::<NodePattern>(), Ok(NodePattern::Exact(7)));
        assert!(t.remove(NodePattern::Exact(1)));
        assert_eq!(t.lookup(1, &[]), None);
    }
}
