//! What `/metrics` reads at scrape time: numbers about the shared database, the same from every server, and
//! this process's connection pool. Each is one cheap query (an index or a small table).

use std::collections::HashMap;

use crate::{Agent, Backend, Store, StoreResult, agents::AGENT_COLUMNS, dispatch};

/// This process's connection pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolUse {
    /// Connections open now.
    pub open: u32,
    /// Open connections waiting for work.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

impl Store {
    /// Runs waiting for an agent (`runs_status_queued_at` answers it from the index).
    pub async fn queued_runs(&self) -> StoreResult<i64> {
        dispatch!(self, pool => {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE status = 'queued'").fetch_one(pool).await?)
        })
    }

    /// Every agent not retired: a handful of rows, whose liveness the caller judges.
    pub async fn all_agents(&self) -> StoreResult<Vec<Agent>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(crate::composed(format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE retired_at IS NULL ORDER BY id"
            )))
                .fetch_all(pool)
                .await?)
        })
    }

    /// The current names of these tasks; deleted ones are absent.
    pub async fn task_names(&self, ids: &[i64]) -> StoreResult<HashMap<i64, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        dispatch!(self, pool => {
            let mut select = sqlx::QueryBuilder::new("SELECT id, name FROM tasks WHERE id IN (");
            let mut list = select.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            select.push(")");
            let rows: Vec<(i64, String)> = select.build_query_as().fetch_all(pool).await?;
            Ok(rows.into_iter().collect())
        })
    }

    pub fn pool_use(&self) -> PoolUse {
        let (open, idle, max) = match &*self.backend {
            Backend::Sqlite(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
            Backend::Postgres(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
        };
        PoolUse { open, idle: u32::try_from(idle).unwrap_or(u32::MAX), max }
    }
}
