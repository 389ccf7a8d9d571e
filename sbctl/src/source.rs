//! Reads a release's source, PATH, into a [`switchboard_proto::ItemSet`], checking every key and
//! item against the contract and naming the file of every problem.
//!
//! PATH is either a directory, in which every `*.json`, `*.yaml` and `*.yml` file (recursively)
//! is one item whose key is its path relative to PATH without the extension, with `/`
//! separators; or a single JSON/YAML file holding a map from key to value. Files and
//! directories whose name begins with `.` are skipped, and so is a `switchboard.yaml` at the
//! root of PATH (reserved for configuration); files with other extensions are ignored. Files are
//! read in sorted order, so problems and results are deterministic, and all the problems of a
//! directory are collected rather than stopping at the first.
//!
//! [`load`] reads and builds in one step. The release pipeline (`crate::pipeline`) splits it:
//! [`read`] parses the items (leaving out what its [`Exclusions`] name: schema files and the
//! environments directory), the pipeline substitutes and validates the parsed values, and
//! [`build`] turns them into a set, with every problem of every step in one report.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use switchboard_proto::ItemSet;
use switchboard_proto::set::{ContractError, MAX_ITEM_BYTES, validate_key};

/// How many problems an error message lists before "and N more".
pub const MAX_PROBLEMS_SHOWN: usize = 20;
/// A file of this name at the root of a source directory is configuration, not an item.
pub const CONFIG_FILE: &str = "switchboard.yaml";
/// Deepest directory nesting followed (a guard against symbolic link loops).
const MAX_DEPTH: usize = 64;

/// The two formats an item or a set can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// The format of a file name by its extension, and the name without it.
    pub fn split_name(name: &str) -> Option<(&str, Format)> {
        if let Some(stem) = name.strip_suffix(".json") {
            Some((stem, Format::Json))
        } else if let Some(stem) = name.strip_suffix(".yaml") {
            Some((stem, Format::Yaml))
        } else {
            name.strip_suffix(".yml").map(|stem| (stem, Format::Yaml))
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        })
    }
}

/// One thing wrong with a source, naming the file it is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{file}: cannot read: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}: malformed {format}{}: {reason}", at(.location))]
    Malformed {
        file: String,
        format: Format,
        /// Line and column (1-based) when the parser gives them.
        location: Option<(u64, u64)>,
        reason: String,
    },
    #[error("{first} and {second} both give the key {key:?}")]
    DuplicateKey {
        key: String,
        first: String,
        second: String,
    },
    #[error("{file}: {reason}")]
    InvalidKey {
        file: String,
        key: String,
        reason: String,
    },
    #[error("{file}: item {key:?} is {bytes} bytes of JSON, over the limit of {MAX_ITEM_BYTES}")]
    TooLarge {
        file: String,
        key: String,
        bytes: usize,
    },
    #[error("{file}: is neither a directory nor a .json, .yaml or .yml file")]
    Unsupported { file: String },
    #[error("{file}: directories nested too deeply (a symbolic link loop?)")]
    TooDeep { file: String },
    #[error("{path}: {}", if *.directory {
        "no items (no *.json, *.yaml or *.yml files)"
    } else {
        "holds no items"
    })]
    Empty { path: String, directory: bool },
    /// Something wrong at a place inside an item: a schema violation, an unresolved
    /// placeholder. `path` is a JSON pointer into the item (`/columns/3/type`).
    #[error("{file}: {}: {message}", pointer_or_root(.path))]
    At {
        file: String,
        path: String,
        message: String,
    },
    /// A configuration file (`switchboard.yaml`, a schema, an environment file) that cannot be
    /// used.
    #[error("{file}: {reason}")]
    Config { file: String, reason: String },
}

/// A JSON pointer as messages show it: the empty pointer, the whole item, is `(root)`.
pub use switchboard_contract::pointer_or_root;

fn at(location: &Option<(u64, u64)>) -> String {
    match location {
        Some((line, column)) => format!(" at line {line} column {column}"),
        None => String::new(),
    }
}

/// Why a source could not be read. [`SourceError::is_usage`] tells a wrong command line (exit
/// 2) from an invalid source (exit 4).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// PATH does not exist: a usage error.
    #[error("{} does not exist", .path.display())]
    NotFound { path: PathBuf },
    /// PATH exists, but its content is not a valid set.
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl SourceError {
    /// Whether this is a mistake on the command line rather than in the source.
    pub fn is_usage(&self) -> bool {
        matches!(self, SourceError::NotFound { .. })
    }

    /// The problems found, empty for a usage error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            SourceError::NotFound { .. } => &[],
            SourceError::Invalid { problems, .. } => problems,
        }
    }
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    match problems {
        [] => format!("{} is not a valid set", path.display()),
        [one] => one.to_string(),
        many => {
            let mut out = format!("{} has {} problems:", path.display(), many.len());
            for problem in many.iter().take(MAX_PROBLEMS_SHOWN) {
                out.push_str("\n  ");
                out.push_str(&problem.to_string());
            }
            if many.len() > MAX_PROBLEMS_SHOWN {
                out.push_str(&format!("\n  and {} more", many.len() - MAX_PROBLEMS_SHOWN));
            }
            out
        }
    }
}

/// Reads PATH, a directory of item files or a single file holding a map, into a set.
pub fn load(path: &Path) -> Result<ItemSet, SourceError> {
    build(path, read(path, &Exclusions::default())?)
}

/// One item as read from its file, before it joins a set.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceItem {
    pub key: String,
    /// The file it was read from, as messages name it.
    pub file: String,
    /// Whether the file is a single-file set, holding other items too.
    pub in_set_file: bool,
    pub value: serde_json::Value,
}

impl SourceItem {
    /// Where messages say the item is: its file, and for a single-file set also its key.
    pub fn location(&self) -> String {
        if self.in_set_file {
            format!("{} (item {})", self.file, self.key)
        } else {
            self.file.clone()
        }
    }
}

/// What [`read`] leaves out of a source directory besides hidden files and the root
/// `switchboard.yaml`: paths relative to the directory, with `/` separators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    files: HashSet<String>,
    dirs: HashSet<String>,
}

impl Exclusions {
    /// Leaves out the file at `relative`.
    pub fn file(&mut self, relative: &str) {
        self.files.insert(relative.to_string());
    }

    /// Leaves out the directory at `relative` and everything under it.
    pub fn dir(&mut self, relative: &str) {
        self.dirs.insert(relative.to_string());
    }
}

/// The items of a source as parsed, and the problems found so far.
#[derive(Debug)]
pub struct Read {
    pub items: Vec<SourceItem>,
    pub problems: Vec<Problem>,
    directory: bool,
}

/// Parses the items of PATH. Fails only when PATH is missing or unreadable; the problems of
/// its files are collected in [`Read::problems`] for [`build`] to report.
pub fn read(path: &Path, exclusions: &Exclusions) -> Result<Read, SourceError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SourceError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(SourceError::Invalid {
                path: path.to_path_buf(),
                problems: vec![unreadable(path, &e)],
            });
        }
    };
    let directory = meta.is_dir();
    let (items, problems) = if directory {
        read_dir(path, exclusions)
    } else {
        read_file(path)
    };
    Ok(Read {
        items,
        problems,
        directory,
    })
}

/// Builds the set of what [`read`] found, checking every item against the contract; fails
/// with every problem found by then.
pub fn build(path: &Path, read: Read) -> Result<ItemSet, SourceError> {
    let Read {
        items,
        mut problems,
        directory,
    } = read;
    let mut set = ItemSet::new();
    for item in items {
        if let Err(e) = set.insert_value(&item.key, &item.value) {
            problems.push(contract_problem_named(item.file, &item.key, e));
        }
    }
    if problems.is_empty() && set.is_empty() {
        problems.push(Problem::Empty {
            path: display(path),
            directory,
        });
    }
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(SourceError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// Reads one JSON or YAML document (by its extension; YAML otherwise), such as a schema or an
/// environment file, with the limits and error messages of items.
pub fn read_document(path: &Path) -> Result<serde_json::Value, Problem> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let format = Format::split_name(&name).map_or(Format::Yaml, |(_, format)| format);
    let bytes = fs::read(path).map_err(|e| unreadable(path, &e))?;
    parse(&bytes, format).map_err(|e| e.into_problem(path, format))
}

/// Reads a text file (a Rego rule), naming it when it cannot be read or is not UTF-8.
pub fn read_text(path: &Path) -> Result<String, Problem> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, &e))?;
    String::from_utf8(bytes).map_err(|e| Problem::Unreadable {
        file: display(path),
        reason: format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()),
    })
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn unreadable(path: &Path, error: &io::Error) -> Problem {
    Problem::Unreadable {
        file: display(path),
        reason: error.to_string(),
    }
}

/// An item file found in a source directory.
struct ItemFile {
    key: String,
    path: PathBuf,
    format: Format,
}

fn read_dir(root: &Path, exclusions: &Exclusions) -> (Vec<SourceItem>, Vec<Problem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    walk(root, "", 0, exclusions, &mut files, &mut problems);

    let mut items = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        if let Some(first) = seen.get(&file.key) {
            problems.push(Problem::DuplicateKey {
                key: file.key.clone(),
                first: display(first),
                second: display(&file.path),
            });
            continue;
        }
        seen.insert(file.key.clone(), file.path.clone());
        if let Err(e) = validate_key(&file.key) {
            problems.push(contract_problem(&file.path, &file.key, e));
            continue;
        }
        let bytes = match fs::read(&file.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(unreadable(&file.path, &e));
                continue;
            }
        };
        let value = match parse::<serde_json::Value>(&bytes, file.format) {
            Ok(value) => value,
            Err(e) => {
                problems.push(e.into_problem(&file.path, file.format));
                continue;
            }
        };
        items.push(SourceItem {
            key: file.key,
            file: display(&file.path),
            in_set_file: false,
            value,
        });
    }
    (items, problems)
}

/// Collects the item files under `dir` in sorted order; `prefix` is the key prefix of `dir`
/// (empty at the root, else ending with `/`).
fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    exclusions: &Exclusions,
    files: &mut Vec<ItemFile>,
    problems: &mut Vec<Problem>,
) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(unreadable(dir, &e));
            return;
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => names.push(entry.file_name()),
            Err(e) => problems.push(unreadable(dir, &e)),
        }
    }
    names.sort();
    for name in names {
        let name_str = name.to_string_lossy();
        if name_str.starts_with('.') || (prefix.is_empty() && name_str == CONFIG_FILE) {
            continue;
        }
        let relative = format!("{prefix}{name_str}");
        let path = dir.join(&name);
        // Follows symbolic links; a dangling one cannot be read.
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                if Format::split_name(&name_str).is_some() {
                    problems.push(unreadable(&path, &e));
                }
                continue;
            }
        };
        if meta.is_dir() {
            if exclusions.dirs.contains(&relative) {
                continue;
            }
            if depth + 1 >= MAX_DEPTH {
                problems.push(Problem::TooDeep {
                    file: display(&path),
                });
            } else {
                walk(
                    &path,
                    &format!("{relative}/"),
                    depth + 1,
                    exclusions,
                    files,
                    problems,
                );
            }
        } else if meta.is_file()
            && !exclusions.files.contains(&relative)
            && let Some((stem, format)) = Format::split_name(&name_str)
        {
            files.push(ItemFile {
                key: format!("{prefix}{stem}"),
                path,
                format,
            });
        }
    }
}

fn read_file(path: &Path) -> (Vec<SourceItem>, Vec<Problem>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((_, format)) = Format::split_name(&name) else {
        return (
            Vec::new(),
            vec![Problem::Unsupported {
                file: display(path),
            }],
        );
    };
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return (Vec::new(), vec![unreadable(path, &e)]),
    };
    let entries = match parse::<Entries>(&bytes, format) {
        Ok(entries) => entries.0,
        Err(e) => return (Vec::new(), vec![e.into_problem(path, format)]),
    };
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in entries {
        if let Err(e) = validate_key(&key) {
            problems.push(contract_problem(path, &key, e));
            continue;
        }
        items.push(SourceItem {
            key,
            file: display(path),
            in_set_file: true,
            value,
        });
    }
    (items, problems)
}

fn contract_problem(file: &Path, key: &str, error: ContractError) -> Problem {
    contract_problem_named(display(file), key, error)
}

fn contract_problem_named(file: String, key: &str, error: ContractError) -> Problem {
    match error {
        ContractError::ItemTooLarge { bytes, .. } => Problem::TooLarge {
            file,
            key: key.to_string(),
            bytes,
        },
        other => Problem::InvalidKey {
            file,
            key: key.to_string(),
            reason: other.to_string(),
        },
    }
}

/// A parse failure, before it is attached to its file.
#[derive(Debug)]
struct ParseError {
    location: Option<(u64, u64)>,
    reason: String,
}

impl ParseError {
    fn into_problem(self, file: &Path, format: Format) -> Problem {
        Problem::Malformed {
            file: display(file),
            format,
            location: self.location,
            reason: self.reason,
        }
    }
}

/// Parses JSON or YAML text into `T`.
fn parse<T: de::DeserializeOwned>(bytes: &[u8], format: Format) -> Result<T, ParseError> {
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

fn json_error(error: &serde_json::Error) -> ParseError {
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

fn yaml_error(error: &serde_saphyr::Error) -> ParseError {
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
fn yaml_options(len: usize) -> serde_saphyr::Options {
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
struct Entries(Vec<(String, serde_json::Value)>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, text).expect("write");
    }

    fn value(set: &ItemSet, key: &str) -> serde_json::Value {
        let bytes = set.get(key).unwrap_or_else(|| panic!("no item {key}"));
        serde_json::from_slice(bytes).expect("stored JSON")
    }

    fn problems(result: Result<ItemSet, SourceError>) -> (String, Vec<Problem>) {
        let err = result.expect_err("should fail");
        assert!(!err.is_usage(), "{err}");
        (err.to_string(), err.problems().to_vec())
    }

    #[test]
    fn a_nested_directory_gives_keys_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(
            root,
            "tables/sales/orders.json",
            r#"{"columns": ["id", "total"], "rows": 3}"#,
        );
        write(
            root,
            "tables/hr/people.yaml",
            "columns:\n  - id\n  - name\nowner: hr\n",
        );
        write(root, "tags/pii.yml", "- email\n- phone\n");
        write(root, "schema_version.json", "7");
        write(root, "README.md", "# ignored");
        write(root, "tables/notes.txt", "ignored");
        write(root, CONFIG_FILE, "rollout: [1, 5]\n");
        write(
            root,
            "sub/switchboard.yaml",
            "only the root one is reserved: true\n",
        );

        let set = load(root).expect("loads");
        let keys: Vec<_> = set.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "schema_version",
                "sub/switchboard",
                "tables/hr/people",
                "tables/sales/orders",
                "tags/pii"
            ]
        );
        assert_eq!(
            value(&set, "tables/sales/orders"),
            json!({"columns": ["id", "total"], "rows": 3})
        );
        assert_eq!(
            value(&set, "tables/hr/people"),
            json!({"columns": ["id", "name"], "owner": "hr"})
        );
        assert_eq!(value(&set, "tags/pii"), json!(["email", "phone"]));
        assert_eq!(value(&set, "schema_version"), json!(7));
        assert_eq!(
            value(&set, "sub/switchboard"),
            json!({"only the root one is reserved": true})
        );
    }

    #[test]
    fn yaml_follows_the_1_2_core_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "c.yaml",
            "country: no\nflag: y\non: off\nok: true\nn: 12\nempty:\n",
        );
        write(dir.path(), "blank.yaml", "");
        let set = load(dir.path()).expect("loads");
        assert_eq!(
            value(&set, "c"),
            json!({"country": "no", "flag": "y", "on": "off", "ok": true, "n": 12, "empty": null})
        );
        assert_eq!(value(&set, "blank"), json!(null));
    }

    #[test]
    fn hidden_files_and_directories_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "a.json", "1");
        write(root, ".hidden.json", "{ not even json");
        write(root, ".git/config.json", "{ not even json");
        write(root, "b/.draft.yaml", "[unclosed");
        write(root, "b/c.json", "2");
        let set = load(root).expect("loads");
        let keys: Vec<_> = set.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b/c"]);
    }

    #[test]
    fn a_single_file_holds_a_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "set.json",
            r#"{"tables/a": {"x": 1}, "tables/b": [1, 2], "c": "s"}"#,
        );
        write(
            dir.path(),
            "set.yaml",
            "tables/a:\n  x: 1\ntables/b: [1, 2]\nc: s\n",
        );
        let from_json = load(&dir.path().join("set.json")).expect("json loads");
        let from_yaml = load(&dir.path().join("set.yaml")).expect("yaml loads");
        assert_eq!(from_json.len(), 3);
        assert_eq!(value(&from_json, "tables/a"), json!({"x": 1}));
        assert_eq!(value(&from_json, "tables/b"), json!([1, 2]));
        assert_eq!(from_json, from_yaml);
    }

    #[test]
    fn a_single_file_that_is_not_a_map_or_repeats_a_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "list.json", "[1, 2]");
        let (msg, found) = problems(load(&dir.path().join("list.json")));
        assert!(
            msg.contains("list.json") && msg.contains("a map from key to value"),
            "{msg}"
        );
        assert!(matches!(found[0], Problem::Malformed { .. }));

        write(dir.path(), "twice.json", "{\"a\": 1,\n \"a\": 2}");
        let (msg, _) = problems(load(&dir.path().join("twice.json")));
        assert!(msg.contains("twice.json") && msg.contains("\"a\""), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");

        write(dir.path(), "twice.yaml", "a: 1\na: 2\n");
        let (msg, _) = problems(load(&dir.path().join("twice.yaml")));
        assert!(msg.contains("twice.yaml"), "{msg}");

        write(dir.path(), "bad.json", r#"{"good": 1, "bad key": 2}"#);
        let (msg, found) = problems(load(&dir.path().join("bad.json")));
        assert!(msg.contains("bad.json") && msg.contains("bad key"), "{msg}");
        assert!(matches!(&found[0], Problem::InvalidKey { key, .. } if key == "bad key"));

        write(dir.path(), "empty.yaml", "");
        let (msg, found) = problems(load(&dir.path().join("empty.yaml")));
        assert!(matches!(found[0], Problem::Empty { .. }), "{msg}");

        write(dir.path(), "set.toml", "a = 1");
        let (msg, found) = problems(load(&dir.path().join("set.toml")));
        assert!(matches!(found[0], Problem::Unsupported { .. }), "{msg}");
    }

    #[test]
    fn malformed_json_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "ok.json", "{}");
        write(
            dir.path(),
            "tables/broken.json",
            "{\n  \"a\": 1,\n  \"b\": \n}\n",
        );
        let (msg, found) = problems(load(dir.path()));
        assert!(msg.contains("broken.json"), "{msg}");
        assert!(msg.contains("malformed JSON at line 4"), "{msg}");
        match &found[..] {
            [
                Problem::Malformed {
                    format: Format::Json,
                    location: Some((4, _)),
                    ..
                },
            ] => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_yaml_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "ok.yaml", "a: 1\n");
        write(dir.path(), "broken.yml", "a: 1\nb: [1, 2\nc: 3\n");
        let (msg, found) = problems(load(dir.path()));
        assert!(
            msg.contains("broken.yml") && msg.contains("malformed YAML"),
            "{msg}"
        );
        match &found[..] {
            [
                Problem::Malformed {
                    format: Format::Yaml,
                    location: Some((line, _)),
                    ..
                },
            ] => {
                assert!(*line >= 2, "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!msg.contains('\n'), "one line per problem: {msg}");
    }

    #[test]
    fn two_files_giving_one_key_are_both_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "t/a.json", "1");
        write(dir.path(), "t/a.yaml", "1");
        let (msg, found) = problems(load(dir.path()));
        assert!(
            msg.contains("a.json") && msg.contains("a.yaml") && msg.contains("\"t/a\""),
            "{msg}"
        );
        assert!(matches!(&found[..], [Problem::DuplicateKey { key, .. }] if key == "t/a"));
    }

    #[test]
    fn a_bad_character_in_a_file_name_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "good.json", "1");
        write(dir.path(), "bad key.json", "1");
        let (msg, found) = problems(load(dir.path()));
        assert!(msg.contains("bad key.json"), "{msg}");
        assert!(matches!(&found[..], [Problem::InvalidKey { key, .. }] if key == "bad key"));
    }

    #[test]
    fn an_item_over_one_mebibyte_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = format!("\"{}\"", "x".repeat(MAX_ITEM_BYTES));
        write(dir.path(), "big.json", &big);
        write(dir.path(), "small.json", "1");
        let (msg, found) = problems(load(dir.path()));
        assert!(
            msg.contains("big.json") && msg.contains("over the limit"),
            "{msg}"
        );
        assert!(matches!(&found[..], [Problem::TooLarge { key, .. }] if key == "big"));
    }

    #[test]
    fn an_empty_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "notes.txt", "not an item");
        write(dir.path(), CONFIG_FILE, "a: 1\n");
        let (msg, found) = problems(load(dir.path()));
        assert!(
            matches!(
                &found[..],
                [Problem::Empty {
                    directory: true,
                    ..
                }]
            ),
            "{msg}"
        );
        assert!(msg.contains("no items"), "{msg}");
    }

    #[test]
    fn a_missing_path_is_a_usage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(&dir.path().join("nope")).expect_err("missing");
        assert!(err.is_usage());
        assert!(matches!(err, SourceError::NotFound { .. }));
        assert!(err.to_string().contains("nope") && err.to_string().contains("does not exist"));
    }

    #[test]
    fn all_problems_are_collected_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..25 {
            write(dir.path(), &format!("bad{i:02}.json"), "{");
        }
        write(dir.path(), "x y.json", "1");
        let (msg, found) = problems(load(dir.path()));
        assert_eq!(found.len(), 26);
        assert!(msg.contains("26 problems"), "{msg}");
        assert!(
            msg.contains("bad00.json") && msg.contains("bad19.json"),
            "{msg}"
        );
        assert!(!msg.contains("bad20.json"), "{msg}");
        assert!(msg.ends_with("and 6 more"), "{msg}");
    }

    #[test]
    fn loading_is_deterministic() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in (0..50).rev() {
            write(
                dir.path(),
                &format!("d{}/k{i}.json", i % 3),
                &format!("{{\"i\": {i}}}"),
            );
        }
        let a = load(dir.path()).expect("loads");
        let b = load(dir.path()).expect("loads");
        assert_eq!(a.to_chunks().0, b.to_chunks().0);
        assert_eq!(a.len(), 50);
    }
}
