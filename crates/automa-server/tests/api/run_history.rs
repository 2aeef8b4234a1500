//! GET /runs over a long history: pages by cursor, a bounded total, and cursors that are data from the
//! client (anything the server did not give out is a 422, never a 500).

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, on_both_backends, spawn_app};

on_both_backends!(runs_page_by_cursor, bad_cursors_are_refused);

/// Follows `next_cursor` from `path` (which has a query already) and returns every run id and each page.
async fn follow(app: &crate::helpers::TestApp, token: &str, path: &str) -> (Vec<i64>, Vec<Value>) {
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    let mut next = path.to_owned();
    loop {
        let reply = app.get(&next, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{next}: {:?}", reply.body);
        ids.extend(reply.body["items"].as_array().unwrap().iter().map(|run| run["id"].as_i64().unwrap()));
        let cursor = reply.body["next_cursor"].clone();
        pages.push(reply.body);
        match cursor.as_str() {
            Some(cursor) => next = format!("{path}&cursor={cursor}"),
            None => return (ids, pages),
        }
    }
}

async fn runs_page_by_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let store = automa_store::Store::connect(&app.database_url).await.unwrap();
    let seeded = store.seed_history(4, 10_120).await.unwrap();
    store.close().await;

    let (ids, pages) = follow(&app, &admin, "/runs?limit=500").await;
    assert_eq!(ids.len(), 10_120);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "each run once");
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "newest first");
    assert_eq!(pages.len(), 21);
    for page in &pages {
        assert_eq!(
            (&page["total"], &page["total_exact"]),
            (&Value::from(10_000), &Value::from(false)),
            "more than 10,000"
        );
    }
    assert!(pages.last().unwrap()["next_cursor"].is_null());

    let exact = app.get("/runs?limit=1&count=true", &admin).await.body;
    assert_eq!((&exact["total"], &exact["total_exact"]), (&Value::from(10_120), &Value::from(true)));

    let task = seeded.task_ids[1];
    let (failed, pages) = follow(&app, &admin, &format!("/runs?task_id={task}&status=failed&limit=7")).await;
    let expected = &pages[0]["total"];
    assert_eq!(Value::from(failed.len()), *expected);
    assert_eq!(pages[0]["total_exact"], true);
    for id in &failed {
        let run = app.get(&format!("/runs/{id}"), &admin).await.body;
        assert_eq!((&run["task_id"], &run["status"]), (&Value::from(task), &Value::from("failed")));
    }

    // The old offset paging still answers, with the same runs.
    let by_offset = app.get("/runs?limit=50&offset=500", &admin).await.body;
    let offset_ids: Vec<i64> =
        by_offset["items"].as_array().unwrap().iter().map(|run| run["id"].as_i64().unwrap()).collect();
    assert_eq!(offset_ids, ids[500..550]);
}

async fn bad_cursors_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let store = automa_store::Store::connect(&app.database_url).await.unwrap();
    store.seed_history(1, 30).await.unwrap();
    store.close().await;
    let first = app.get("/runs?limit=10", &admin).await.body;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let forged = [
        "",
        "not-base64!",
        "YmVmb3JlOg",                               // "before:"
        "YmVmb3JlOi0x",                             // "before:-1"
        "YmVmb3JlOjA",                              // "before:0"
        "YmVmb3JlOjk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", // past i64
        "YWZ0ZXI6MTI",                              // "after:12"
    ];
    for cursor in forged {
        let reply = app.get(&format!("/runs?cursor={cursor}"), &admin).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{cursor}: {:?}", reply.body);
        assert_eq!(reply.body["field"], "cursor", "{cursor}");
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(detail.contains("not a cursor this server gave out"), "{cursor}: {detail}");
    }
    let nul = app.get("/runs?cursor=%00", &admin).await;
    assert_eq!((nul.status, &nul.body["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &Value::from("cursor")));
    let both = app.get(&format!("/runs?cursor={cursor}&offset=10"), &admin).await;
    assert_eq!((both.status, &both.body["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &Value::from("offset")));
    // An offset page reads every run it skips: deeper than 10,000 is for the cursor, which the refusal names.
    let deepest = app.get("/runs?offset=10000", &admin).await;
    assert_eq!(deepest.status, StatusCode::OK, "{:?}", deepest.body);
    let too_deep = app.get("/runs?offset=10001", &admin).await;
    assert_eq!((too_deep.status, &too_deep.body["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &Value::from("offset")));
    assert!(too_deep.body["detail"].as_str().unwrap().contains("cursor"), "{:?}", too_deep.body);
    let bad_count = app.get("/runs?count=maybe", &admin).await;
    assert!(bad_count.status.is_client_error(), "{:?}", bad_count.body);
    let second = app.get(&format!("/runs?limit=10&cursor={cursor}"), &admin).await.body;
    assert_eq!(second["items"].as_array().unwrap().len(), 10);
    assert!(second["items"][0]["id"].as_i64() < first["items"][9]["id"].as_i64());
}
