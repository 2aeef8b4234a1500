//! A run's states and the moves between them (DESIGN §4). The store enforces these in its statements; this
//! module is where the rules are named, so the API and the agent agree on them.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// Where a run is: waiting, running, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
    Skipped,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Cancelled,
        RunStatus::Lost,
        RunStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Lost => "lost",
            RunStatus::Skipped => "skipped",
        }
    }

    /// A terminal run never changes again; a late report about it is accepted and ignored.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    /// Whether a run that ended this way is retried when the task has retries left.
    pub fn is_retryable(self) -> bool {
        matches!(self, RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown run status '{s}'"))
    }
}

/// Reads a stored status: the store's rows hold the text `as_str` gives.
impl TryFrom<String> for RunStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// What caused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Manual,
    Schedule,
    Api,
    Retry,
    /// A webhook (`POST /hooks/{token}`): the run records the hook's id.
    Hook,
    /// Another task's run ended in a status this task waits for: the run records that upstream run's id.
    After,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Api => "api",
            Trigger::Retry => "retry",
            Trigger::Hook => "hook",
            Trigger::After => "after",
        }
    }
}

impl FromStr for Trigger {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Trigger::Manual, Trigger::Schedule, Trigger::Api, Trigger::Retry, Trigger::Hook, Trigger::After]
            .into_iter()
            .find(|trigger| trigger.as_str() == s)
            .ok_or_else(|| format!("unknown trigger '{s}'"))
    }
}

/// Reads a stored trigger: the store's rows hold the text `as_str` gives.
impl TryFrom<String> for Trigger {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_classify() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), status);
        }
        assert!(!RunStatus::Running.is_terminal());
        assert!(RunStatus::Lost.is_terminal());
        assert!(RunStatus::Lost.is_retryable());
        assert!(!RunStatus::Cancelled.is_retryable());
    }
}
