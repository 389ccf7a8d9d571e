//! JSON and YAML into values, with the line and column of a failure: YAML under limits of
//! depth, size and aliases, and a set file's top level read as ordered entries so that a key
//! given twice is a problem rather than a silent overwrite.

use super::*;

/// A parse failure, before it is attached to its file.
#[derive(Debug)]
pub(super) struct ParseError {
    location: Option<(u64, u64)>,
    reason: String,
}

impl ParseError {
    pub(super) fn into_problem(self, file: &Path, format: Format) -> Problem {
        Problem::Malformed {
            file: display(file),
            format,
            location: self.location,
            reason: self.reason,
        }
    }
}

/// Parses JSON or YAML text into `T`.
pub(super) fn parse<T: de::DeserializeOwned>(
    bytes: &[u8],
    format: Format,
) -> Result<T, ParseError> {
    // Editors on some systems write a byte order mark; neither parser wants it.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| json_error(&e)),
        Format::Yaml => {
            let text = std::str::from_utf8(bytes).map_err(|e| ParseError {
                location: None,
                reason: format!("not UTF-8 text (at byte {})", e.valid_up_to()),
            })?;
            serde_saphyr::from_str_with_options(text, yaml_options(text.len()))
                .map_err(|e| yaml_error(&e))
        }
    }
}

pub(super) fn json_error(error: &serde_json::Error) -> ParseError {
    let (line, column) = (error.line() as u64, error.column() as u64);
    let text = error.to_string();
    if line == 0 {
        return ParseError {
            location: None,
            reason: text,
        };
    }
    let suffix = format!(" at line {line} column {column}");
    let reason = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    ParseError {
        location: Some((line, column)),
        reason,
    }
}

pub(super) fn yaml_error(error: &serde_saphyr::Error) -> ParseError {
    let location = error
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column()));
    let text = error.to_string();
    let mut reason = text.lines().next().unwrap_or_default().trim().to_string();
    if let Some((line, column)) = location {
        for suffix in [
            format!(" at line {line}, column {column}"),
            format!(" at line {line} column {column}"),
        ] {
            if let Some(stripped) = reason.strip_suffix(&suffix) {
                reason = stripped.to_string();
            }
        }
    }
    // Advice addressed to programmers using the library, not to the author of the file.
    for advice in [", set DuplicateKeyPolicy", "; use from_str_multiple"] {
        if let Some(at) = reason.find(advice) {
            reason.truncate(at);
        }
    }
    if reason.is_empty() {
        reason = "cannot be parsed".into();
    }
    ParseError { location, reason }
}

/// serde-saphyr's limits, scaled to the input: a node or an event takes at least a byte of
/// text, so these never refuse an honest file, while the alias limits that stop "billion
/// laughs" expansions stay at their defaults. Duplicate mapping keys are an error (the default),
/// and only YAML 1.2's `true` and `false` are booleans.
pub(super) fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = budget
        .max_events
        .max(len.saturating_mul(2).saturating_add(64));
    budget.max_nodes = budget.max_nodes.max(len.saturating_add(64));
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    // YAML 1.2: `no`, `off` and `y` are strings (the country code of Norway stays "no").
    options.strict_booleans = true;
    options
}

/// The top level of a single-file set: a map from key to value, in file order, with a key
/// given twice refused (serde_json would silently keep the last).
pub(super) struct Entries(pub(super) Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from key to value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("the key {key:?} is given twice")));
            }
            let value = map.next_value::<serde_json::Value>()?;
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }

    /// An empty YAML document.
    fn visit_unit<E: de::Error>(self) -> Result<Entries, E> {
        Ok(Entries(Vec::new()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Entries, E> {
        Ok(Entries(Vec::new()))
    }
}
