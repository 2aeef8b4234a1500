//! Aligned columns sized to the terminal: when the table is wider than the terminal, the widest columns are
//! cut (ending in `…`) until it fits. Piped output keeps every character, unless COLUMNS says otherwise.

use std::io::IsTerminal;

use serde::{
    Deserialize, Serialize,
    de::{MapAccess, Visitor},
};
use serde_json::Value;

/// Columns are never cut narrower than this.
const MIN_WIDTH: usize = 6;
const GAP: &str = "  ";

pub struct Table {
    /// Empty for a list of fields, which has no header line.
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// An object's fields in the order the API gives them, one per line (`hide` leaves some out), values as plain
/// text or compact JSON.
pub fn fields<T: Serialize>(value: &T, hide: &[&str]) -> anyhow::Result<Table> {
    let Fields(fields) = serde_json::from_str(&serde_json::to_string(value)?)?;
    let rows = fields
        .into_iter()
        .filter(|(key, _)| !hide.contains(&key.as_str()))
        .map(|(key, value)| vec![key, plain(&value)])
        .collect();
    Ok(Table { headers: Vec::new(), rows })
}

/// A JSON object's members in their order (`serde_json::Map` sorts them, which would scatter related fields).
struct Fields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Fields(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

impl Table {
    pub fn print(&self) {
        let columns = self.headers.len().max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let cell = |row: &[String], index: usize| row.get(index).map(|text| one_line(text)).unwrap_or_default();
        let headers: Vec<String> = self.headers.iter().map(|header| header.to_string()).collect();
        let mut lines: Vec<Vec<String>> = Vec::new();
        if !headers.is_empty() {
            lines.push(headers);
        }
        lines.extend(self.rows.iter().map(|row| (0..columns).map(|index| cell(row, index)).collect()));
        let mut widths: Vec<usize> =
            (0..columns).map(|index| lines.iter().map(|line| width(&line[index])).max().unwrap_or(0)).collect();
        if let Some(limit) = terminal_width() {
            fit(&mut widths, limit.saturating_sub(GAP.len() * columns.saturating_sub(1)));
        }
        for line in lines {
            let cells: Vec<String> =
                line.iter().zip(&widths).map(|(text, &width)| pad(&cut(text, width), width)).collect();
            println!("{}", cells.join(GAP).trim_end());
        }
    }
}

/// Narrows the widest column, one character at a time, until the columns fit in `limit` or none can give more.
fn fit(widths: &mut [usize], limit: usize) {
    while widths.iter().sum::<usize>() > limit {
        let Some(widest) = widths.iter_mut().filter(|width| **width > MIN_WIDTH).max_by_key(|width| **width) else {
            return;
        };
        *widest -= 1;
    }
}

/// The terminal's width: COLUMNS when set, else the terminal's own, else none (piped: no cutting).
fn terminal_width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|value| value.parse().ok()) {
        return Some(columns);
    }
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    rustix::termios::tcgetwinsize(&stdout).ok().map(|size| usize::from(size.ws_col)).filter(|columns| *columns > 0)
}

fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn width(text: &str) -> usize {
    text.chars().count()
}

fn cut(text: &str, limit: usize) -> String {
    if width(text) <= limit {
        return text.to_owned();
    }
    let mut kept: String = text.chars().take(limit.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

fn pad(text: &str, limit: usize) -> String {
    format!("{text}{}", " ".repeat(limit.saturating_sub(width(text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_widest_columns_give_way_first_and_cut_cells_say_so() {
        let mut widths = vec![4, 30, 12];
        fit(&mut widths, 30);
        assert_eq!(widths, vec![4, 14, 12]);
        assert_eq!(cut("a long description", 8), "a long …");
        assert_eq!(cut("short", 8), "short");
        let mut narrow = vec![10, 10];
        fit(&mut narrow, 4);
        assert_eq!(narrow, vec![MIN_WIDTH, MIN_WIDTH], "never below the minimum, even if it overflows");
    }
}
