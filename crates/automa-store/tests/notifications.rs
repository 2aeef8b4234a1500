//! The notification outbox in the store on both backends: when its worker next has something to claim.

use automa_store::{Actor, AttemptOutcome, NewChannel, Store};
use chrono::Duration;

#[macro_use]
mod support;

use support::*;

/// The worker sleeps until `next_delivery_at`: a pending delivery's due time, or the end of a claim that got
/// no outcome (its sender stopped), so that such a delivery is sent again without any periodic look.
async fn the_outbox_says_when_it_next_has_work(store: &Store) {
    assert_eq!(store.next_delivery_at().await.unwrap(), None, "an empty outbox");
    let channel = NewChannel {
        name: "ops".into(),
        kind: "webhook".into(),
        url: Some("http://127.0.0.1:9/hook".into()),
        recipients: Vec::new(),
        secret: None,
        is_default: true,
        events: vec!["agent_offline".into()],
    };
    store.create_notification_channel(&Actor::system(), channel).await.unwrap();
    assert_eq!(store.queue_notice("agent_offline", &serde_json::json!({}), "first").await.unwrap(), 1);
    let due = store.next_delivery_at().await.unwrap().expect("a pending delivery");
    assert!(due <= automa_store::now());

    let lease = Duration::seconds(60);
    let [claimed] = store.claim_deliveries(lease, 10).await.unwrap().try_into().expect("one delivery");
    let lease_until = claimed.lease_until.expect("a claimed delivery is leased");
    assert_eq!(store.next_delivery_at().await.unwrap(), Some(lease_until), "the claim's end, should it get no outcome");

    let retry_at = automa_store::now() + Duration::seconds(30);
    let outcome = AttemptOutcome {
        delivered: false,
        retry_at: Some(retry_at),
        error: Some("refused".into()),
        response_code: None,
    };
    store.record_attempt(claimed.id, &outcome).await.unwrap();
    let next = store.next_delivery_at().await.unwrap().expect("a retry");
    assert!((next - retry_at).num_milliseconds().abs() <= 1, "{next} is the retry's time {retry_at}");

    assert!(store.claim_deliveries(lease, 10).await.unwrap().is_empty(), "the retry is not due yet");
}
both_backends!(next_delivery, the_outbox_says_when_it_next_has_work);
