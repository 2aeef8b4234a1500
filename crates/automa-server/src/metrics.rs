//! What `/metrics` reports, in the Prometheus text format (version 0.0.4). Counters and histograms count what
//! this process did (several servers on one database each count their own; Prometheus sums them); gauges that
//! describe the shared database (queued runs, agents) are read from it at scrape time, so every server gives
//! the same answer. The exposition is written here rather than through the `metrics` crates: a registry per
//! `Application` (tests start several in one process) and the few types needed are a page of code, while the
//! global recorder of those crates is one per process.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use automa_core::RunStatus;
use automa_store::Run;

/// Tasks that get their own `task` label in `automa_task_runs_finished_total`, in the order this process first
/// counted them; runs of later tasks are counted under [`OTHER_TASKS`], so a thousand tasks cannot make a
/// thousand series per status.
pub const MAX_TASK_SERIES: usize = 100;

/// The label of tasks past [`MAX_TASK_SERIES`] and of deleted tasks. Task names cannot contain parentheses,
/// so no task's own label can be this.
pub const OTHER_TASKS: &str = "(other)";

/// The `route` label of requests that matched no route: never the raw path, which a client chooses.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// Seconds, from tens of milliseconds (a quick script, an HTTP request) to an hour (a long run).
const RUN_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
const WAIT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];
const SETUP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug, Clone)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Histogram {
        Histogram { buckets, counts: vec![0; buckets.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        let value = value.max(0.0);
        if let Some(index) = self.buckets.iter().position(|bound| value <= *bound) {
            self.counts[index] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// One metric's series, by label values.
struct Family<T> {
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, T>>,
}

impl<T: Clone> Family<T> {
    fn new(labels: &'static [&'static str]) -> Family<T> {
        Family { labels, series: Mutex::default() }
    }

    fn update(&self, values: &[&str], init: impl FnOnce() -> T, change: impl FnOnce(&mut T)) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        change(series.entry(key).or_insert_with(init));
    }

    fn snapshot(&self) -> Vec<(Vec<String>, T)> {
        self.series.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Per-task counts with their bounded set of labelled tasks.
#[derive(Default)]
struct TaskRuns {
    /// (task id, status) → count, for the first [`MAX_TASK_SERIES`] tasks.
    named: BTreeMap<(i64, String), u64>,
    tasks: Vec<i64>,
    /// status → count for the others.
    other: BTreeMap<String, u64>,
}

/// This process's counters and histograms. Cheap to update from any task.
pub struct Metrics {
    runs_finished: Family<u64>,
    task_runs: Mutex<TaskRuns>,
    run_duration: Family<Histogram>,
    queue_wait: Family<Histogram>,
    scheduler_lateness: Family<Histogram>,
    skipped_fires: Family<u64>,
    http_requests: Family<u64>,
    http_duration: Family<Histogram>,
    sandbox_setup: Family<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            runs_finished: Family::new(&["status"]),
            task_runs: Mutex::default(),
            run_duration: Family::new(&["status"]),
            queue_wait: Family::new(&[]),
            scheduler_lateness: Family::new(&[]),
            skipped_fires: Family::new(&[]),
            http_requests: Family::new(&["method", "route", "status"]),
            http_duration: Family::new(&["method", "route"]),
            sandbox_setup: Family::new(&[]),
        }
    }
}

fn seconds(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

impl Metrics {
    /// Counts a run that reached its final status here: finished by an agent, lost, cancelled while queued, or
    /// recorded as a skipped or refused fire.
    pub fn run_finished(&self, run: &Run) {
        let status = run.status.as_str();
        self.runs_finished.update(&[status], || 0, |count| *count += 1);
        if let (Some(started), Some(finished)) = (run.started_at, run.finished_at) {
            self.run_duration.update(
                &[status],
                || Histogram::new(RUN_BUCKETS),
                |h| h.observe(seconds(started, finished)),
            );
        }
        if let Some(task_id) = run.task_id {
            let mut tasks = self.task_runs.lock().unwrap_or_else(|e| e.into_inner());
            if !tasks.tasks.contains(&task_id) && tasks.tasks.len() < MAX_TASK_SERIES {
                tasks.tasks.push(task_id);
            }
            if tasks.tasks.contains(&task_id) {
                *tasks.named.entry((task_id, status.to_owned())).or_default() += 1;
            } else {
                *tasks.other.entry(status.to_owned()).or_default() += 1;
            }
        }
    }

    /// A run was handed to an agent: how long it waited since it became due (`not_before`).
    pub fn run_started(&self, run: &Run) {
        if let Some(started) = run.started_at {
            self.queue_wait.update(
                &[],
                || Histogram::new(WAIT_BUCKETS),
                |h| h.observe(seconds(run.not_before, started)),
            );
        }
    }

    /// A fire the scheduler recorded: queued ones measure its lateness (enqueued − planned), skipped ones count.
    pub fn fired(&self, run: &Run) {
        match (run.status, run.scheduled_for) {
            (RunStatus::Queued, Some(planned)) => self.scheduler_lateness.update(
                &[],
                || Histogram::new(WAIT_BUCKETS),
                |h| h.observe(seconds(planned, run.queued_at)),
            ),
            (RunStatus::Skipped, _) => self.skipped_fires.update(&[], || 0, |count| *count += 1),
            _ => {}
        }
    }

    /// The time an agent reported between starting the sandbox and the script starting.
    pub fn sandbox_setup(&self, setup: Duration) {
        self.sandbox_setup.update(&[], || Histogram::new(SETUP_BUCKETS), |h| h.observe(setup.as_secs_f64()));
    }

    /// One answered request. `route` is a route template or [`UNMATCHED_ROUTE`]; `method` one of the methods
    /// the API uses or `other`.
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        self.http_requests.update(&[method, route, &status], || 0, |count| *count += 1);
        self.http_duration.update(
            &[method, route],
            || Histogram::new(HTTP_BUCKETS),
            |h| h.observe(elapsed.as_secs_f64()),
        );
    }

    /// The task ids with their own label, for the caller to name.
    pub fn labelled_tasks(&self) -> Vec<i64> {
        self.task_runs.lock().unwrap_or_else(|e| e.into_inner()).tasks.clone()
    }

    /// Writes this process's series. `task_names` names the labelled tasks (see [`Metrics::labelled_tasks`]);
    /// a task missing from it (deleted since) is counted under [`OTHER_TASKS`].
    pub fn render(&self, out: &mut String, task_names: &HashMap<i64, String>) {
        write_counter(out, "automa_runs_finished_total", "Runs that ended here, by final status.", &self.runs_finished);
        self.render_task_runs(out, task_names);
        write_histogram(
            out,
            "automa_run_duration_seconds",
            "Run durations (start to end) of runs that ended here, by final status.",
            &self.run_duration,
        );
        write_histogram(
            out,
            "automa_run_queue_wait_seconds",
            "Time runs waited between becoming due and being handed to an agent.",
            &self.queue_wait,
        );
        write_histogram(
            out,
            "automa_scheduler_lateness_seconds",
            "Time between a fire's planned time and its run being queued, for this server's fires.",
            &self.scheduler_lateness,
        );
        write_counter(
            out,
            "automa_scheduler_skipped_fires_total",
            "Fires recorded as skipped (misfire, coalesced, max instances, or a summarised outage).",
            &self.skipped_fires,
        );
        write_counter(
            out,
            "automa_http_requests_total",
            "HTTP requests answered, by route template.",
            &self.http_requests,
        );
        write_histogram(
            out,
            "automa_http_request_duration_seconds",
            "Time to answer an HTTP request (to the response head: event streams and long-polls count until \
             their response starts).",
            &self.http_duration,
        );
        write_histogram(
            out,
            "automa_sandbox_setup_seconds",
            "Time from starting a run's sandbox to its script starting, as reported by agents.",
            &self.sandbox_setup,
        );
    }

    fn render_task_runs(&self, out: &mut String, task_names: &HashMap<i64, String>) {
        let tasks = self.task_runs.lock().unwrap_or_else(|e| e.into_inner());
        // Merged by label: a deleted task's counts join the others'.
        let mut merged: BTreeMap<(String, String), u64> = BTreeMap::new();
        for ((task_id, status), count) in &tasks.named {
            let name = task_names.get(task_id).map_or(OTHER_TASKS, String::as_str);
            *merged.entry((name.to_owned(), status.clone())).or_default() += count;
        }
        for (status, count) in &tasks.other {
            *merged.entry((OTHER_TASKS.to_owned(), status.clone())).or_default() += count;
        }
        let help = format!(
            "Task runs that ended here, by task name (the first {MAX_TASK_SERIES} tasks counted; the rest as \
             \"{OTHER_TASKS}\") and status."
        );
        header(out, "automa_task_runs_finished_total", "counter", &help);
        for ((task, status), count) in merged {
            let _ = writeln!(
                out,
                "automa_task_runs_finished_total{{task=\"{}\",status=\"{}\"}} {count}",
                escape(&task),
                escape(&status)
            );
        }
    }
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format needs it.
pub(crate) fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `{a="x",b="y"}`, with `extra` pairs appended; empty when there are no labels.
fn label_set(names: &[&str], values: &[String], extra: &[(&str, String)]) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .chain(extra.iter().map(|(name, value)| format!("{name}=\"{}\"", escape(value))))
        .collect();
    if pairs.is_empty() { String::new() } else { format!("{{{}}}", pairs.join(",")) }
}

/// A gauge with one series per label set.
pub(crate) fn write_gauge(out: &mut String, name: &str, help: &str, label: &str, series: &[(&str, f64)]) {
    header(out, name, "gauge", help);
    for (value, number) in series {
        let labels = if label.is_empty() { String::new() } else { format!("{{{label}=\"{}\"}}", escape(value)) };
        let _ = writeln!(out, "{name}{labels} {}", format_number(*number));
    }
}

fn write_counter(out: &mut String, name: &str, help: &str, family: &Family<u64>) {
    header(out, name, "counter", help);
    for (values, count) in family.snapshot() {
        let _ = writeln!(out, "{name}{} {count}", label_set(family.labels, &values, &[]));
    }
}

fn write_histogram(out: &mut String, name: &str, help: &str, family: &Family<Histogram>) {
    header(out, name, "histogram", help);
    for (values, histogram) in family.snapshot() {
        let mut cumulative = 0;
        for (bound, count) in histogram.buckets.iter().zip(&histogram.counts) {
            cumulative += count;
            let labels = label_set(family.labels, &values, &[("le", format_number(*bound))]);
            let _ = writeln!(out, "{name}_bucket{labels} {cumulative}");
        }
        let labels = label_set(family.labels, &values, &[("le", "+Inf".to_owned())]);
        let _ = writeln!(out, "{name}_bucket{labels} {}", histogram.count);
        let labels = label_set(family.labels, &values, &[]);
        let _ = writeln!(out, "{name}_sum{labels} {}", format_number(histogram.sum));
        let _ = writeln!(out, "{name}_count{labels} {}", histogram.count);
    }
}

fn format_number(value: f64) -> String {
    if value.is_finite() { format!("{value}") } else { "NaN".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_what_is_past_the_last_bucket() {
        let family = Family::new(&["status"]);
        for value in [0.05, 0.3, 7200.0] {
            family.update(&["failed"], || Histogram::new(RUN_BUCKETS), |h| h.observe(value));
        }
        let mut out = String::new();
        write_histogram(&mut out, "x_seconds", "help", &family);
        assert!(out.contains("x_seconds_bucket{status=\"failed\",le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{status=\"failed\",le=\"0.5\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{status=\"failed\",le=\"3600\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{status=\"failed\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count{status=\"failed\"} 3\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
