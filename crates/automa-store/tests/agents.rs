//! Agents in the store on both backends: the concurrency an agent is given (its reported slots within the
//! admin's cap), disabling one (its running runs end cancelled, saying why) and retiring one (history kept).

use automa_core::RunStatus;
use automa_store::{Actor, AgentUpdate, Page, RunFilter, RunPage, Store};
use chrono::Duration;

#[macro_use]
mod support;

use support::*;

fn lease() -> Duration {
    Duration::seconds(30)
}

async fn report_slots(store: &Store, agent_id: i64, slots: Option<i64>) {
    let capabilities = serde_json::json!({});
    store.agent_seen(agent_id, automa_store::now(), "host", "1", &capabilities, slots).await.unwrap();
}

async fn claims(store: &Store, agent_id: i64) -> usize {
    let mut claimed = 0;
    while store.claim_run(agent_id, lease()).await.unwrap().is_some() {
        claimed += 1;
    }
    claimed
}

async fn claims_take_the_smaller_of_slots_and_cap(store: &Store) {
    let s = script(store).await;
    for _ in 0..12 {
        store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    }
    let uncapped = agent(store, "uncapped", &[], automa_store::NO_CAP).await;
    report_slots(store, uncapped, Some(2)).await;
    assert_eq!(claims(store, uncapped).await, 2, "the agent's own slots bound it when the cap is higher");
    assert!(store.agent_at_capacity(uncapped).await.unwrap());
    let capped = agent(store, "capped", &[], 1).await;
    report_slots(store, capped, Some(4)).await;
    assert_eq!(claims(store, capped).await, 1, "the admin's cap bounds it when lower than its slots");
    assert!(store.agent_at_capacity(capped).await.unwrap());
    let silent = agent(store, "silent", &[], 3).await;
    report_slots(store, silent, None).await;
    assert!(!store.agent_at_capacity(silent).await.unwrap());
    assert_eq!(claims(store, silent).await, 3, "an agent that reports no slots gets the cap");
    let seen = store.get_agent(uncapped).await.unwrap();
    assert_eq!((seen.slots, seen.max_concurrency, seen.effective_concurrency()), (Some(2), automa_store::NO_CAP, 2));
}
both_backends!(effective_concurrency, claims_take_the_smaller_of_slots_and_cap);

async fn disabling_cancels_running_runs_with_the_reason(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "worker-1", &[], 4).await;
    let running = store.create_run(None, new_run(s, &[], None, 3)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let queued = store.create_run(None, new_run(s, &[], Some(a), 0)).await.unwrap();
    let update = AgentUpdate { disabled: Some(true), ..AgentUpdate::default() };
    let updated = store.update_agent(&Actor::system(), a, update).await.unwrap();
    assert!(updated.agent.disabled);
    assert_eq!(updated.cancelled.len(), 1);
    let ended = &updated.cancelled[0];
    assert_eq!((ended.run.id, ended.run.status), (running.id, RunStatus::Cancelled));
    assert!(ended.retry.is_none(), "a run its agent's admin stopped is not retried");
    let reason = "cancelled: agent 'worker-1' was disabled by system";
    assert_eq!(store.get_run(running.id).await.unwrap().error.as_deref(), Some(reason));
    let logs = store.run_logs(running.id, 0, 100).await.unwrap();
    let last = logs.last().expect("a system line");
    assert_eq!((last.stream.as_str(), last.data.as_str()), ("system", format!("{reason}\n").as_str()));
    assert_eq!(store.get_run(queued.id).await.unwrap().status, RunStatus::Queued, "a queued run is left to wait");
    assert!(store.claim_run(a, lease()).await.unwrap().is_none(), "a disabled agent claims nothing");
    assert!(store.authenticate_agent("hash-worker-1").await.unwrap().is_none());
}
both_backends!(disable, disabling_cancels_running_runs_with_the_reason);

async fn retiring_keeps_history_and_unpins(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "old-box", &[], 4).await;
    let done = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let refused = store.retire_agent(&Actor::system(), a).await.unwrap_err();
    assert_eq!(refused.to_string(), "agent 'old-box' is running 1 run: drain or disable it first");
    store.finish_run(done.id, Some(a), &automa_store::RunEnd::new(RunStatus::Succeeded)).await.unwrap();
    let pinned = store.create_run(None, new_run(s, &[], Some(a), 0)).await.unwrap();
    let retired = store.retire_agent(&Actor::system(), a).await.unwrap();
    assert!(retired.retired_at.is_some());
    assert_eq!(store.get_run(done.id).await.unwrap().agent_id, Some(a), "a past run keeps its agent");
    let filter = RunFilter { agent_id: Some(a), ..RunFilter::default() };
    let history = store.list_runs(&filter, RunPage::new(None)).await.unwrap();
    assert_eq!(history.items.iter().map(|r| r.id).collect::<Vec<_>>(), vec![done.id]);
    assert_eq!(store.get_run(pinned.id).await.unwrap().target_agent_id, None, "a queued run is unpinned");
    assert!(store.authenticate_agent("hash-old-box").await.unwrap().is_none(), "its token is refused");
    assert_eq!(store.list_agents(Page::new(None, None), false).await.unwrap().total, 0);
    assert_eq!(store.list_agents(Page::new(None, None), true).await.unwrap().total, 1);
    assert_eq!(store.get_agent(a).await.unwrap().status(automa_store::now(), Duration::seconds(90)), "retired");
    let successor = automa_store::NewAgent {
        name: "old-box".into(),
        description: String::new(),
        labels: vec![],
        max_concurrency: 1,
        token_hash: "another".into(),
        embedded: false,
    };
    let taken = store.create_agent(&Actor::system(), successor.clone()).await.unwrap_err();
    assert!(taken.to_string().contains(&format!("belongs to retired agent {a}")), "{taken}");
    let changed = AgentUpdate { draining: Some(true), ..AgentUpdate::default() };
    let refused = store.update_agent(&Actor::system(), a, changed).await.unwrap_err();
    assert_eq!(refused.to_string(), "agent 'old-box' is retired: only its name can change");
    let renamed = AgentUpdate { name: Some("old-box-retired".into()), ..AgentUpdate::default() };
    store.update_agent(&Actor::system(), a, renamed).await.unwrap();
    store.create_agent(&Actor::system(), successor).await.unwrap();
}
both_backends!(retire, retiring_keeps_history_and_unpins);

async fn a_heartbeat_says_once_that_the_agent_came_back(store: &Store) {
    let a = agent(store, "roamer", &[], 1).await;
    let capabilities = serde_json::json!({"packages": {"uv": null}});
    let heartbeat = |offline_since| store.agent_seen(a, offline_since, "box", "2", &capabilities, Some(3));
    let first = heartbeat(automa_store::now() - Duration::seconds(60)).await.unwrap();
    assert!(first.returned, "an agent never seen comes back with its first heartbeat");
    assert_eq!((first.agent.hostname.as_deref(), first.agent.slots), (Some("box"), Some(3)));
    assert!(first.agent.last_seen_at.is_some() && first.agent.disconnected_at.is_none());
    let second = heartbeat(automa_store::now() - Duration::seconds(60)).await.unwrap();
    assert!(!second.returned, "seen a moment ago: not coming back");

    store.agent_goodbye(a).await.unwrap();
    assert!(store.get_agent(a).await.unwrap().disconnected_at.is_some());
    let back = heartbeat(automa_store::now() - Duration::seconds(60)).await.unwrap();
    assert!(back.returned, "after a goodbye");
    assert!(back.agent.disconnected_at.is_none(), "the disconnection is cleared");
    assert!(!heartbeat(automa_store::now() - Duration::seconds(60)).await.unwrap().returned);

    let silent_too_long = heartbeat(automa_store::now() + Duration::seconds(1)).await.unwrap();
    assert!(silent_too_long.returned, "last seen before the offline threshold");

    // An agent online that moved and was upgraded: recorded, and still not a return.
    let moved =
        store.agent_seen(a, automa_store::now() - Duration::seconds(60), "new-box", "3", &capabilities, Some(5));
    let moved = moved.await.unwrap();
    assert!(!moved.returned);
    assert_eq!(
        (moved.agent.hostname.as_deref(), moved.agent.version.as_deref(), moved.agent.slots),
        (Some("new-box"), Some("3"), Some(5))
    );

    // Heartbeats arriving together after a goodbye: exactly one of them is the return.
    store.agent_goodbye(a).await.unwrap();
    let online_since = automa_store::now() - Duration::seconds(60);
    let seen = tokio::join!(
        heartbeat(online_since),
        heartbeat(online_since),
        heartbeat(online_since),
        heartbeat(online_since),
        heartbeat(online_since),
        heartbeat(online_since)
    );
    let together = [seen.0, seen.1, seen.2, seen.3, seen.4, seen.5].map(|seen| seen.unwrap().returned);
    assert_eq!(together.iter().filter(|returned| **returned).count(), 1, "{together:?}");
    assert!(matches!(
        store.agent_seen(a + 1000, automa_store::now(), "box", "2", &capabilities, None).await,
        Err(automa_store::StoreError::NotFound)
    ));
}
both_backends!(heartbeat_return, a_heartbeat_says_once_that_the_agent_came_back);

/// The reaper sleeps until `next_reap_at`: the earliest lease of a running run, or the moment the agent heard
/// from longest ago (among those still counted connected) crosses the offline threshold.
async fn the_reaper_is_told_when_it_next_has_work(store: &Store) {
    let offline_after = Duration::seconds(90);
    let a = agent(store, "reaped", &[], 2).await;
    assert_eq!(store.next_reap_at(offline_after).await.unwrap(), None, "an agent never seen cannot go silent");

    report_slots(store, a, Some(2)).await;
    let seen = store.get_agent(a).await.unwrap().last_seen_at.unwrap();
    assert_eq!(store.next_reap_at(offline_after).await.unwrap(), Some(seen + offline_after));

    let s = script(store).await;
    store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    let short = Duration::seconds(5);
    let claimed = store.claim_run(a, short).await.unwrap().expect("a queued run");
    let lease_until = claimed.run.lease_until.expect("a claimed run is leased");
    assert_eq!(store.next_reap_at(offline_after).await.unwrap(), Some(lease_until), "the lease ends first");

    // Gone, disabled or retired agents are not waited for; the running run's lease still is.
    store.agent_goodbye(a).await.unwrap();
    let other = agent(store, "other", &[], 1).await;
    report_slots(store, other, None).await;
    let update = AgentUpdate { disabled: Some(true), ..AgentUpdate::default() };
    store.update_agent(&Actor::system(), other, update).await.unwrap();
    let retired = agent(store, "retired", &[], 1).await;
    report_slots(store, retired, None).await;
    store.retire_agent(&Actor::system(), retired).await.unwrap();
    assert_eq!(store.next_reap_at(Duration::seconds(1)).await.unwrap(), Some(lease_until));
}
both_backends!(next_reap, the_reaper_is_told_when_it_next_has_work);
