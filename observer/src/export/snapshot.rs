//! What the API reads: an immutable snapshot of the session table's list views, made by
//! the scoring loop after each pass (and after each write), so that no API read does work
//! proportional to the table under the lock the capture pipeline takes per batch.

use std::time::SystemTime;

use crate::session::{
    findings::Finding, privacy::PrivacyReport, view::Ranked, FrozenItem, ListQuery, SessionSummary,
    SessionTable,
};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every listed session, riskiest first (the order of [`SessionTable::list`]). Their
    /// summaries are made on reading (only those a read returns), from parts shared with
    /// the table while unchanged.
    pub sessions: Vec<Ranked>,
    pub findings: Vec<Finding>,
    pub frozen: Vec<FrozenItem>,
    /// The table's part of `/privacy`; `None` before the first publication.
    pub privacy: Option<PrivacyReport>,
}

impl Snapshot {
    /// Made under the table's lock (by the scoring loop).
    pub fn of(table: &SessionTable, now: SystemTime) -> Self {
        Self {
            sessions: table.ranked(),
            findings: table.findings().list(),
            frozen: table.frozen(),
            privacy: Some(table.privacy_report(now)),
        }
    }

    /// The sessions matching `q`, in order, at most `q.limit` (default 100).
    pub fn list(&self, q: &ListQuery) -> Vec<SessionSummary> {
        self.sessions
            .iter()
            .filter(|s| q.state.is_none_or(|st| s.state() == st))
            .filter(|s| q.kind.as_deref().is_none_or(|k| s.kind() == k))
            .filter(|s| q.direction.is_none_or(|d| s.direction() == d))
            .take(q.limit.unwrap_or(100))
            .map(Ranked::summary)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::FingerprintKey,
        session::{
            testutil::{at, ExchangeBuilder},
            Direction, SessionTableConfig,
        },
    };

    #[test]
    fn list_filters_like_the_table() {
        let mut table = SessionTable::new(
            SessionTableConfig::default(),
            FingerprintKey::random().unwrap(),
        );
        let now = at(1.0);
        for i in 0..5 {
            let ex = ExchangeBuilder::new()
                .bearer(&format!("opaque-token-{i}"))
                .build();
            table.observe(&ex, now);
        }
        table.score(now);
        let snap = Snapshot::of(&table, now);
        for q in [
            ListQuery::default(),
            ListQuery {
                limit: Some(2),
                ..Default::default()
            },
            ListQuery {
                direction: Some(Direction::Outbound),
                ..Default::default()
            },
            ListQuery {
                kind: Some("bearer".into()),
                ..Default::default()
            },
        ] {
            let a: Vec<String> = table.list(&q).into_iter().map(|s| s.id).collect();
            let b: Vec<String> = snap.list(&q).into_iter().map(|s| s.id.clone()).collect();
            assert_eq!(a, b, "{q:?}");
        }
        assert!(snap.privacy.is_some());
    }
}
