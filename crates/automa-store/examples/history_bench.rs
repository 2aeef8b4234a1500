use std::time::Instant;

use automa_core::{RunStatus, Trigger};
use automa_store::{RunFilter, RunPage, Store};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    if args.get(2).map(String::as_str) == Some("seed") {
        let runs: u64 = args[3].parse().unwrap();
        let started = Instant::now();
        let report = store.seed_history(10_000, runs).await.unwrap();
        println!("seeded {runs} runs, script {} in {:?}", report.script_id, started.elapsed());
        return;
    }
    let reps: usize = args.get(2).map(|r| r.parse().unwrap()).unwrap_or(50);
    let task_id = 5000;
    let since = chrono::Utc::now() - chrono::Duration::days(30);
    let until = chrono::Utc::now() - chrono::Duration::days(29);
    let page = RunPage::new(None);
    let deep = RunPage { before: Some(100_000), ..page };
    let exact = RunPage { exact_total: true, ..page };
    let cases: Vec<(&str, RunFilter, RunPage)> = vec![
        ("newest 50", RunFilter::default(), page),
        ("status=failed", RunFilter { status: Some(RunStatus::Failed), ..Default::default() }, page),
        (
            "task_id+status",
            RunFilter { task_id: Some(task_id), status: Some(RunStatus::Failed), ..Default::default() },
            page,
        ),
        ("task_id", RunFilter { task_id: Some(task_id), ..Default::default() }, page),
        ("script_id", RunFilter { script_id: Some(1), ..Default::default() }, page),
        ("agent_id", RunFilter { agent_id: Some(2), ..Default::default() }, page),
        ("trigger=retry", RunFilter { trigger: Some(Trigger::Retry), ..Default::default() }, page),
        ("since/until 1 day", RunFilter { since: Some(since), until: Some(until), ..Default::default() }, page),
        (
            "status=cancelled+agent",
            RunFilter { status: Some(RunStatus::Cancelled), agent_id: Some(2), ..Default::default() },
            page,
        ),
        (
            "until 60 days ago",
            RunFilter { until: Some(chrono::Utc::now() - chrono::Duration::days(60)), ..Default::default() },
            page,
        ),
        (
            "since 1 day",
            RunFilter { since: Some(chrono::Utc::now() - chrono::Duration::days(1)), ..Default::default() },
            page,
        ),
        ("cursor 900000 deep", RunFilter::default(), deep),
        ("cursor deep status=failed", RunFilter { status: Some(RunStatus::Failed), ..Default::default() }, deep),
        ("offset 900000", RunFilter::default(), RunPage { offset: 900_000, ..page }),
        ("count=exact all", RunFilter::default(), exact),
        ("count=exact failed", RunFilter { status: Some(RunStatus::Failed), ..Default::default() }, exact),
    ];
    for (name, filter, page) in cases {
        let mut times = Vec::new();
        let mut n = 0;
        let mut total = (0, false);
        for _ in 0..reps {
            let t = Instant::now();
            let listed = store.list_runs(&filter, page).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            n = listed.items.len();
            total = (listed.total, listed.total_exact);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
        println!("{name:28} items {n:3} total {total:?}  p50 {:8.2} ms  p99 {:8.2} ms", p(0.5), p(0.99));
    }
}
