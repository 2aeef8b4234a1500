//! Whether the agent's interpreter satisfies a script's `requires-python` (a PEP 440 specifier set such as
//! `>=3.10,<4` or `~=3.11`), compared on release numbers, which is all an interpreter's version has.

/// True when `version` (e.g. `3.11.7`) satisfies every clause of `specifiers`; an error names a clause that
/// is not a version specifier.
pub(super) fn satisfied_by(specifiers: &str, version: &str) -> Result<bool, String> {
    let have = release(version).ok_or_else(|| format!("the interpreter's version {version:?} is not a version"))?;
    let mut all = true;
    for clause in specifiers.split(',').map(str::trim) {
        all &= clause_holds(clause, version, &have)
            .ok_or_else(|| format!("requires-python {specifiers:?}: {clause:?} is not a version specifier"))?;
    }
    Ok(all)
}

fn clause_holds(clause: &str, version: &str, have: &[u64]) -> Option<bool> {
    const OPERATORS: [&str; 8] = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"];
    let operator = OPERATORS.iter().find(|op| clause.starts_with(**op))?;
    let wanted = clause[operator.len()..].trim();
    if *operator == "===" {
        return Some(wanted == version);
    }
    let (wanted, wildcard) = match wanted.strip_suffix(".*") {
        Some(prefix) => (prefix, true),
        None => (wanted, false),
    };
    let want = release(wanted)?;
    if wildcard && !matches!(*operator, "==" | "!=") {
        return None;
    }
    let prefix_matches = || have.iter().chain(std::iter::repeat(&0)).zip(&want).all(|(h, w)| h == w);
    let order = compare(have, &want);
    Some(match *operator {
        "==" if wildcard => prefix_matches(),
        "!=" if wildcard => !prefix_matches(),
        "==" => order.is_eq(),
        "!=" => order.is_ne(),
        "<=" => order.is_le(),
        ">=" => order.is_ge(),
        "<" => order.is_lt(),
        ">" => order.is_gt(),
        // `~=3.11.2` is `>=3.11.2, ==3.11.*`; it needs at least two numbers.
        "~=" if want.len() >= 2 => {
            order.is_ge() && have.iter().chain(std::iter::repeat(&0)).zip(&want[..want.len() - 1]).all(|(h, w)| h == w)
        }
        _ => return None,
    })
}

/// The release numbers of a version (`3.11.7` → [3, 11, 7]); a pre-, post- or dev-release suffix on the last
/// number is ignored.
fn release(version: &str) -> Option<Vec<u64>> {
    let version = version.trim().trim_start_matches(['v', 'V']);
    let mut numbers = Vec::new();
    for part in version.split('.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return None;
        }
        numbers.push(digits.parse().ok()?);
        if digits.len() != part.len() {
            break;
        }
    }
    Some(numbers)
}

/// Compares release numbers, the shorter padded with zeros (`3.11` == `3.11.0`).
fn compare(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    let padded = |v: &[u64]| (0..len).map(|i| v.get(i).copied().unwrap_or(0)).collect::<Vec<_>>();
    padded(a).cmp(&padded(b))
}

#[cfg(test)]
mod tests {
    use super::satisfied_by;

    #[test]
    fn specifier_sets_are_checked_clause_by_clause() {
        let holds = |spec: &str| satisfied_by(spec, "3.11.7").expect(spec);
        for yes in [
            ">=3.10",
            ">=3.10,<4",
            "~=3.11",
            "~=3.11.2",
            "==3.11.*",
            "!=3.12.*",
            "==3.11.7",
            "<3.12",
            ">3.11",
            "===3.11.7",
        ] {
            assert!(holds(yes), "{yes}");
        }
        for no in [">=3.12", "<3.11", "~=3.12", "~=3.11.8", "==3.10.*", "!=3.11.*", "==3.11", ">=3.8, <3.11"] {
            assert!(!holds(no), "{no}");
        }
    }

    #[test]
    fn a_malformed_specifier_is_named() {
        assert_eq!(
            satisfied_by(">=3.10, python3", "3.11.7").expect_err("malformed"),
            "requires-python \">=3.10, python3\": \"python3\" is not a version specifier"
        );
        assert!(satisfied_by(">=3.*", "3.11.7").is_err());
        assert!(satisfied_by("~=3", "3.11.7").is_err());
    }
}
