//! What the suite prints: each measurement beside the baseline measured in the same run, their ratio, the
//! target and whether it was met, as Markdown tables that read in a terminal and paste into the README.

use std::fmt::Write;

/// A goal from issue 12, checked against a measurement.
#[derive(Clone, Copy)]
pub enum Target {
    /// The value itself is at most this.
    AtMost(f64),
    /// The value itself is at least this.
    AtLeast(f64),
    /// value ÷ baseline is at most this.
    RatioAtMost(f64),
    /// value − baseline is at most this.
    AboveBaselineAtMost(f64),
}

/// One line of a table.
pub struct Measurement {
    pub what: String,
    pub value: f64,
    pub unit: &'static str,
    /// The same quantity for the thing compared against (the bare interpreter, an unauthenticated route, an
    /// empty database), measured in the same run.
    pub baseline: Option<f64>,
    pub target: Option<Target>,
}

impl Measurement {
    pub fn new(what: impl Into<String>, value: f64, unit: &'static str) -> Measurement {
        Measurement { what: what.into(), value, unit, baseline: None, target: None }
    }

    pub fn against(mut self, baseline: f64) -> Measurement {
        self.baseline = Some(baseline);
        self
    }

    pub fn target(mut self, target: Target) -> Measurement {
        self.target = Some(target);
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|baseline| *baseline != 0.0).map(|baseline| self.value / baseline)
    }

    /// `None` when there is no target or it needs a baseline that was not measured.
    fn met(&self) -> Option<bool> {
        Some(match self.target? {
            Target::AtMost(limit) => self.value <= limit,
            Target::AtLeast(limit) => self.value >= limit,
            Target::RatioAtMost(limit) => self.ratio()? <= limit,
            Target::AboveBaselineAtMost(limit) => self.value - self.baseline? <= limit,
        })
    }

    fn target_text(&self) -> String {
        let unit = self.unit;
        match self.target {
            None => String::new(),
            Some(Target::AtMost(limit)) => format!("≤ {} {unit}", number(limit)),
            Some(Target::AtLeast(limit)) => format!("≥ {} {unit}", number(limit)),
            Some(Target::RatioAtMost(limit)) => format!("ratio ≤ {limit:.2}"),
            Some(Target::AboveBaselineAtMost(limit)) => format!("≤ baseline + {} {unit}", number(limit)),
        }
    }
}

/// A phase's measurements, and the whole run's for the closing summary.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, Measurement)>,
}

impl Report {
    pub fn add(&mut self, phase: &str, measurement: Measurement) {
        self.rows.push((phase.to_owned(), measurement));
    }

    /// Prints the rows of `phase` as a table.
    pub fn print_phase(&self, phase: &str) {
        let rows: Vec<(&str, &Measurement)> =
            self.rows.iter().filter(|(p, _)| p == phase).map(|(_, m)| ("", m)).collect();
        println!("\n{}", table(&rows));
    }

    /// Every row of the run, with its phase, as one Markdown table.
    pub fn summary(&self) -> String {
        let rows: Vec<(&str, &Measurement)> = self.rows.iter().map(|(p, m)| (p.as_str(), m)).collect();
        table(&rows)
    }
}

/// A Markdown table of the rows; with a first column for their phases when any is named.
fn table(rows: &[(&str, &Measurement)]) -> String {
    let phases = rows.iter().any(|(phase, _)| !phase.is_empty());
    let mut out = String::new();
    if phases {
        out.push_str("| phase ");
    }
    out.push_str("| measurement | value | baseline | ratio | target | met |\n");
    if phases {
        out.push_str("| --- ");
    }
    out.push_str("| --- | ---: | ---: | ---: | --- | --- |\n");
    for (phase, row) in rows {
        if phases {
            let _ = write!(out, "| {phase} ");
        }
        let baseline = row.baseline.map(|b| format!("{} {}", number(b), row.unit)).unwrap_or_default();
        let ratio = row.ratio().map(|r| format!("{r:.2}")).unwrap_or_default();
        let met = match row.met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} {} | {baseline} | {ratio} | {} | {met} |",
            row.what,
            number(row.value),
            row.unit,
            row.target_text()
        );
    }
    out
}

/// Three significant digits or so, without a fraction for large values.
fn number(value: f64) -> String {
    match value.abs() {
        v if v >= 1000.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// Latencies and the like, sorted once, read by nearest rank.
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new(mut values: Vec<f64>) -> Samples {
        assert!(!values.is_empty(), "no samples");
        values.sort_by(f64::total_cmp);
        Samples(values)
    }

    pub fn percentile(&self, p: f64) -> f64 {
        let rank = (self.0.len() as f64 * p).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        self.percentile(0.5)
    }

    pub fn max(&self) -> f64 {
        self.0[self.0.len() - 1]
    }
}
