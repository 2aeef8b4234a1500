//! A script's dependencies: read from its PEP 723 inline metadata block (`# /// script` … `# ///`, what
//! `uv run script.py` reads) or given as a list, and validated as PEP 508 requirements and a PEP 440
//! `requires-python` before anything resolves them. Past this module a requirement is known to be well formed
//! and to name a package on the configured index: direct URLs are refused (see [`Requirement::parse`]).

use std::{fmt, str::FromStr, sync::LazyLock};

use pep508_rs::{
    VersionOrUrl,
    pep440_rs::{Operator, Version, VersionSpecifiers},
};
use regex::Regex;

use crate::InvalidField;

/// The most requirements one script may list: far beyond real scripts, and it bounds the resolver's input.
pub const MAX_REQUIREMENTS: usize = 256;
/// The longest single requirement or `requires-python` accepted.
pub const MAX_REQUIREMENT_CHARS: usize = 1000;

/// PEP 723's reference expression, verbatim: a block is a `# /// TYPE` line, comment lines that are `#` alone
/// or `# ` and text, and a `# ///` line. The greedy repetition makes the *last* `# ///` of a run of comment
/// lines the end, as the PEP specifies.
static BLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")
        .expect("PEP 723's expression compiles")
});

/// One PEP 508 requirement naming a package, as the user wrote it (trimmed), with its canonical form.
#[derive(Debug, Clone)]
pub struct Requirement {
    text: String,
    canonical: String,
}

impl Requirement {
    /// Parses one requirement. The message of an error names the requirement and says what is wrong with it.
    ///
    /// Direct references (`name @ https://…`, `name @ file:///…`) are refused: locking runs on the server,
    /// outside any sandbox, and a URL chosen by whoever saves a script would make the server fetch or read
    /// whatever it names. Packages come only from the index, extra indexes and find-links the administrator
    /// configured.
    pub fn parse(raw: &str) -> Result<Requirement, String> {
        let text = raw.trim();
        if text.is_empty() {
            return Err("a requirement must not be empty".into());
        }
        if text.chars().count() > MAX_REQUIREMENT_CHARS {
            return Err(format!("a requirement must be at most {MAX_REQUIREMENT_CHARS} characters"));
        }
        if has_line_breaking_character(text) {
            return Err(format!("{text:?} contains a control character or line break: one requirement per entry"));
        }
        // pep508_rs 0.9.2 panics on some malformed names and extras (`e. >1`, `a[a-`): its scanner accepts a
        // trailing `.`, `-` or `_` that its name type then refuses. A panic there is one more malformed
        // requirement, never a failed request.
        let parsed = std::panic::catch_unwind(|| pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(text));
        let parsed = match parsed {
            Err(_) => {
                return Err(format!(
                    "'{text}' is not a valid PEP 508 requirement: names and extras must end with a letter or digit"
                ));
            }
            Ok(Ok(parsed)) => parsed,
            // The error's own `Display` draws a caret under the input (and asserts on its span); the message
            // and the position say the same on one line.
            Ok(Err(error)) => {
                let at = text.get(..error.start).map_or(0, |before| before.chars().count()) + 1;
                return Err(format!(
                    "'{text}' is not a valid PEP 508 requirement: {} (at character {at})",
                    error.message
                ));
            }
        };
        if let Some(VersionOrUrl::Url(_)) = parsed.version_or_url {
            return Err(format!(
                "'{text}' is a direct reference: name the package and a version instead (packages come only from \
                 the server's configured index and find-links)"
            ));
        }
        Ok(Requirement { text: text.to_owned(), canonical: parsed.to_string() })
    }

    /// The requirement as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Requirements are equal when they mean the same: `requests >= 2` is `requests>=2`.
impl PartialEq for Requirement {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for Requirement {}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Requirements reach uv one per line of its requirements file: a line break inside one (any control character,
/// U+0085 included, or a Unicode line or paragraph separator) could become a line of its own there, an option.
fn has_line_breaking_character(text: &str) -> bool {
    text.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
}

/// A script's `requires-python`: a PEP 440 version specifier set such as `>=3.11`.
#[derive(Debug, Clone)]
pub struct RequiresPython {
    text: String,
    specifiers: VersionSpecifiers,
}

impl RequiresPython {
    /// Parses a specifier set; the error message says what is wrong.
    pub fn parse(raw: &str) -> Result<RequiresPython, String> {
        let text = raw.trim();
        if text.chars().count() > MAX_REQUIREMENT_CHARS {
            return Err(format!("must be at most {MAX_REQUIREMENT_CHARS} characters"));
        }
        if has_line_breaking_character(text) {
            return Err(format!("{text:?} contains a control character or line break"));
        }
        match VersionSpecifiers::from_str(text) {
            Ok(specifiers) if !specifiers.is_empty() => Ok(RequiresPython { text: text.to_owned(), specifiers }),
            Ok(_) => Err("must not be empty (leave it out instead)".into()),
            Err(error) => Err(format!("'{text}' is not a valid version specifier: {error}")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether an interpreter of `version` (`3.11.7`) is admitted, by the same PEP 440 rules the server
    /// validated the specifiers with.
    pub fn admits(&self, version: &str) -> Result<bool, String> {
        let version = Version::from_str(version.trim())
            .map_err(|e| format!("the interpreter's version {version:?} is not a version: {e}"))?;
        Ok(self.specifiers.contains(&version))
    }

    /// The oldest Python the specifiers admit, as `MAJOR.MINOR[.PATCH]`: the version a universal resolution
    /// must still hold for. `None` when they set no lower bound (`<3.13`, `!=3.9.*`).
    pub fn lowest_python(&self) -> Option<String> {
        self.specifiers
            .iter()
            .filter(|specifier| {
                matches!(
                    specifier.operator(),
                    Operator::Equal
                        | Operator::EqualStar
                        | Operator::ExactEqual
                        | Operator::TildeEqual
                        | Operator::GreaterThan
                        | Operator::GreaterThanEqual
                )
            })
            .map(|specifier| {
                let release = specifier.version().release();
                let mut parts: Vec<u64> = release.iter().copied().take(3).collect();
                if parts.len() < 2 {
                    parts.resize(2, 0);
                }
                parts
            })
            .max()
            .map(|parts| parts.iter().map(u64::to_string).collect::<Vec<_>>().join("."))
    }
}

impl PartialEq for RequiresPython {
    fn eq(&self, other: &Self) -> bool {
        self.specifiers == other.specifiers
    }
}

impl Eq for RequiresPython {}

/// Parses a list of requirements; errors name the entry (`FIELD[i]`) and the requirement.
pub fn parse_requirements(field: &str, raw: &[String]) -> Result<Vec<Requirement>, InvalidField> {
    if raw.len() > MAX_REQUIREMENTS {
        return Err(InvalidField::new(field, format!("lists {} requirements; at most {MAX_REQUIREMENTS}", raw.len())));
    }
    raw.iter()
        .enumerate()
        .map(|(index, requirement)| {
            Requirement::parse(requirement).map_err(|message| InvalidField::new(format!("{field}[{index}]"), message))
        })
        .collect()
}

/// What a script's `# /// script` block declares. A key the block leaves out is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptMetadata {
    pub dependencies: Option<Vec<Requirement>>,
    pub requires_python: Option<RequiresPython>,
}

/// Reads the `# /// script` block of a Python source, following PEP 723: `Ok(None)` without one, an error
/// (field `content`) for more than one, for TOML that does not parse, and for a `dependencies` or
/// `requires-python` that is malformed. Other keys (`[tool]`, and any a later PEP adds) are left to their tools.
pub fn read_script_metadata(source: &str) -> Result<Option<ScriptMetadata>, InvalidField> {
    let invalid = |message: String| InvalidField::new("content", message);
    // Python reads a script with universal newlines before the reference expression sees it, so a block in a
    // file saved with CRLF line ends is a block there too.
    let source = source.replace("\r\n", "\n").replace('\r', "\n");
    let mut blocks = BLOCK.captures_iter(&source).filter(|captures| &captures["type"] == "script");
    let Some(block) = blocks.next() else { return Ok(None) };
    if blocks.next().is_some() {
        return Err(invalid("has more than one `# /// script` block (PEP 723 allows one)".into()));
    }
    let first_line = source[..block.get(0).map_or(0, |m| m.start())].matches('\n').count() + 1;
    let toml_text: String = python_lines(&block["content"])
        .map(|line| line.strip_prefix("# ").unwrap_or_else(|| skip_first_char(line)))
        .collect();
    let table: toml::Table = toml_text.parse().map_err(|error: toml::de::Error| {
        let line = error.span().map(|span| toml_text[..span.start].matches('\n').count());
        let at = line.map(|line| format!(" (line {})", first_line + 1 + line)).unwrap_or_default();
        invalid(format!("the `# /// script` block is not valid TOML{at}: {}", error.message()))
    })?;
    let dependencies = match table.get("dependencies") {
        None => None,
        Some(toml::Value::Array(items)) => {
            let texts = items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    toml::Value::String(text) => Ok(text.clone()),
                    _ => Err(invalid(format!("the `# /// script` block's dependencies[{index}] must be a string"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let requirements = parse_requirements("dependencies", &texts)
                .map_err(|error| invalid(format!("the `# /// script` block's {}: {}", error.field, error.message)))?;
            Some(requirements)
        }
        Some(_) => return Err(invalid("the `# /// script` block's dependencies must be a list of strings".into())),
    };
    let requires_python = match table.get("requires-python") {
        None => None,
        Some(toml::Value::String(text)) => Some(
            RequiresPython::parse(text)
                .map_err(|message| invalid(format!("the `# /// script` block's requires-python: {message}")))?,
        ),
        Some(_) => return Err(invalid("the `# /// script` block's requires-python must be a string".into())),
    };
    Ok(Some(ScriptMetadata { dependencies, requires_python }))
}

/// Python's `str.splitlines(keepends=True)`, which the PEP's reference reader uses to take the `#` off each
/// line: it also ends lines at form feeds, vertical tabs and the Unicode separators.
fn python_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .find(|(_, c)| {
                matches!(
                    c,
                    '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}'
                )
            })
            .map_or(
                rest.len(),
                |(index, c)| {
                    if rest[index..].starts_with("\r\n") { index + 2 } else { index + c.len_utf8() }
                },
            );
        let (line, tail) = rest.split_at(end);
        rest = tail;
        Some(line)
    })
}

/// `line[1:]` in Python: the line without its first character.
fn skip_first_char(line: &str) -> &str {
    line.char_indices().nth(1).map_or("", |(index, _)| &line[index..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirements(metadata: &ScriptMetadata) -> Vec<&str> {
        metadata.dependencies.iter().flatten().map(Requirement::as_str).collect()
    }

    #[test]
    fn reads_the_peps_example() {
        let script = "# /// script\n# requires-python = \">=3.11\"\n# dependencies = [\n#   \"requests<3\",\n#   \"rich\",\n# ]\n# ///\n\nimport requests\nfrom rich.pretty import pprint\n";
        let metadata = read_script_metadata(script).unwrap().unwrap();
        assert_eq!(requirements(&metadata), ["requests<3", "rich"]);
        assert_eq!(metadata.requires_python.as_ref().map(RequiresPython::as_str), Some(">=3.11"));
        assert_eq!(metadata.requires_python.unwrap().lowest_python().as_deref(), Some("3.11"));
    }

    #[test]
    fn the_last_closing_line_of_a_comment_run_ends_the_block() {
        // PEP 723's own example: a `# ///` inside a TOML string does not end the block.
        let script = "# /// script\n# embedded-csharp = \"\"\"\n# /// <summary>\n# /// text\n# ///\n# /// </summary>\n# public class MyClass { }\n# \"\"\"\n# ///\n";
        let metadata = read_script_metadata(script).unwrap().unwrap();
        assert_eq!(metadata, ScriptMetadata::default());
    }

    #[test]
    fn a_tool_table_and_other_block_types_are_left_alone() {
        let script = "# /// pyproject\n# [project]\n# ///\n\n# /// script\n# dependencies = [\"rich\"]\n#\n# [tool.my-runner]\n# mode = \"isolated\"\n# ///\nprint(1)\n";
        let metadata = read_script_metadata(script).unwrap().unwrap();
        assert_eq!(requirements(&metadata), ["rich"]);
        assert_eq!(metadata.requires_python, None);
    }

    #[test]
    fn no_block_unclosed_blocks_and_other_comments_are_no_metadata() {
        for script in [
            "print('hello')\n",
            "# /// script\n# dependencies = [\"rich\"]\nprint(1)\n",
            "#/// script\n# dependencies = [\"rich\"]\n# ///\n",
            "# /// script \n# dependencies = [\"rich\"]\n# ///\n",
            "# /// script\n#dependencies = [\"rich\"]\n# ///\n",
            "    # /// script\n    # dependencies = [\"rich\"]\n    # ///\n",
        ] {
            assert_eq!(read_script_metadata(script).unwrap(), None, "{script:?}");
        }
    }

    #[test]
    fn crlf_line_ends_are_read_like_python_reads_the_file() {
        let script = "# /// script\r\n# dependencies = [\"rich\"]\r\n# ///\r\nprint(1)\r\n";
        assert_eq!(requirements(&read_script_metadata(script).unwrap().unwrap()), ["rich"]);
    }

    #[test]
    fn a_block_at_the_very_end_needs_no_final_newline() {
        let script = "print(1)\n# /// script\n# dependencies = []\n# ///";
        assert_eq!(read_script_metadata(script).unwrap().unwrap().dependencies, Some(Vec::new()));
    }

    #[test]
    fn two_script_blocks_are_an_error() {
        let script = "# /// script\n# dependencies = []\n# ///\n\n# /// script\n# dependencies = []\n# ///\n";
        let error = read_script_metadata(script).unwrap_err();
        assert_eq!(error.field, "content");
        assert!(error.message.contains("more than one `# /// script` block"), "{}", error.message);
    }

    #[test]
    fn malformed_blocks_say_what_and_where() {
        let cases = [
            ("# /// script\n# dependencies = [\n# ///\n", "not valid TOML (line"),
            ("# /// script\n# dependencies = \"rich\"\n# ///\n", "dependencies must be a list of strings"),
            ("# /// script\n# dependencies = [1]\n# ///\n", "dependencies[0] must be a string"),
            ("# /// script\n# requires-python = 3.11\n# ///\n", "requires-python must be a string"),
            ("# /// script\n# requires-python = \"three\"\n# ///\n", "'three' is not a valid version specifier"),
            (
                "# /// script\n# dependencies = [\"rich\", \"requests >=\"]\n# ///\n",
                "dependencies[1]: 'requests >=' is not a valid PEP 508 requirement",
            ),
        ];
        for (script, expected) in cases {
            let error = read_script_metadata(script).unwrap_err();
            assert_eq!(error.field, "content");
            assert!(error.message.contains(expected), "{script:?}: {}", error.message);
        }
        let error = read_script_metadata("x = 1\n# /// script\n# a = 1\n# a = 2\n# ///\n").unwrap_err();
        assert!(error.message.contains("(line 4)"), "{}", error.message);
    }

    #[test]
    fn requirements_follow_pep_508() {
        for valid in [
            "requests",
            "requests[security,tests] >= 2.8.1, == 2.8.* ; python_version > \"3.8\"",
            "pip==23.0",
            "name>=3,<2",
            "colorama; sys_platform == 'win32'",
            "  Django~=4.2  ",
        ] {
            assert!(Requirement::parse(valid).is_ok(), "{valid}");
        }
        for (invalid, expected) in [
            ("", "must not be empty"),
            ("requests >=", "'requests >=' is not a valid PEP 508 requirement"),
            ("-e .", "is not a valid PEP 508 requirement"),
            ("requests (>=2", "is not a valid PEP 508 requirement"),
            ("e. >1", "must end with a letter or digit"),
            ("a[a- ]", "must end with a letter or digit"),
            ("numpy; python_version >< '3'", "is not a valid PEP 508 requirement"),
            ("pkg @ https://example.com/pkg.whl", "direct reference"),
            ("pkg @ file:///etc/passwd", "direct reference"),
        ] {
            let message = Requirement::parse(invalid).unwrap_err();
            assert!(message.contains(expected), "{invalid:?}: {message}");
        }
        assert!(Requirement::parse(&"a".repeat(MAX_REQUIREMENT_CHARS + 1)).unwrap_err().contains("at most"));
    }

    #[test]
    fn requirements_that_mean_the_same_are_equal() {
        assert_eq!(Requirement::parse("requests >= 2").unwrap(), Requirement::parse("requests>=2").unwrap());
        assert_ne!(Requirement::parse("requests>=2").unwrap(), Requirement::parse("requests>=3").unwrap());
    }

    #[test]
    fn control_characters_and_line_breaks_are_refused() {
        for text in [
            "requests\n>=1",
            "requests\r--index-url=x",
            "a\u{0}b",
            "requests\u{85}>=1",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\tb",
        ] {
            let error = Requirement::parse(text).unwrap_err();
            assert!(error.contains("control character or line break"), "{text:?}: {error}");
            let error = RequiresPython::parse(&format!(">=3.8{text}")).unwrap_err();
            assert!(error.contains("control character or line break"), "{text:?}: {error}");
        }
        let error = parse_requirements("dependencies", &["rich".into(), "requests\n>=1".into()]).unwrap_err();
        assert_eq!(error.field, "dependencies[1]");
        assert!(error.message.contains("\"requests\\n>=1\""), "{}", error.message);
    }

    #[test]
    fn a_list_names_the_bad_entry() {
        let error = parse_requirements("dependencies", &["rich".into(), "bad name!".into()]).unwrap_err();
        assert_eq!(error.field, "dependencies[1]");
        assert!(error.message.contains("'bad name!'"), "{}", error.message);
        let many = vec!["rich".to_owned(); MAX_REQUIREMENTS + 1];
        assert_eq!(parse_requirements("dependencies", &many).unwrap_err().field, "dependencies");
    }

    #[test]
    fn the_lowest_python_is_the_highest_lower_bound() {
        let lowest = |text: &str| RequiresPython::parse(text).unwrap().lowest_python();
        assert_eq!(lowest(">=3.9").as_deref(), Some("3.9"));
        assert_eq!(lowest(">=3.8, >3.10.2").as_deref(), Some("3.10.2"));
        assert_eq!(lowest("~=3.12").as_deref(), Some("3.12"));
        assert_eq!(lowest("==3.11.*").as_deref(), Some("3.11"));
        assert_eq!(lowest(">=3").as_deref(), Some("3.0"));
        assert_eq!(lowest("<3.13"), None);
        assert!(RequiresPython::parse("").is_err());
    }

    #[test]
    fn an_interpreter_is_admitted_by_pep_440_rules() {
        let admits = |spec: &str| RequiresPython::parse(spec).unwrap().admits("3.11.7").unwrap();
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
            ">=3.8.0.post1",
        ] {
            assert!(admits(yes), "{yes}");
        }
        for no in [">=3.12", "<3.11", "~=3.12", "~=3.11.8", "==3.10.*", "!=3.11.*", "==3.11", ">=3.8, <3.11"] {
            assert!(!admits(no), "{no}");
        }
        assert!(RequiresPython::parse(">=3.10").unwrap().admits("not a version").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(source in "(# ?(/// ?)?[a-z\\[\\]=\" <>,.0-9@:/;-]{0,12}\n){0,8}") {
            let _ = read_script_metadata(&source);
        }

        #[test]
        fn arbitrary_requirements_never_panic(raw in "\\PC{0,40}|[a-zA-Z0-9._ -]{1,6}[ ><=~!;@,a-z0-9.*'\"()\\[\\]-]{0,24}") {
            let _ = Requirement::parse(&raw);
            let _ = RequiresPython::parse(&raw);
        }
    }
}
