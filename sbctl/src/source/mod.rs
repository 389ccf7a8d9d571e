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
//! sbctl reads only what is in the set. A symbolic link is followed only when what it leads
//! to, with every link resolved, is inside PATH (for a single-file set, inside the directory
//! holding the file); a link that leads out of it is a problem naming the link and its target,
//! so that a link to `/etc/os-release` or a CI credential in a set repository is never staged.
//! Every file's size is checked from its metadata before it is read, and no more than the limit
//! is read, so a huge or sparse file costs no memory: [`MAX_ITEM_FILE_BYTES`] for an item,
//! [`MAX_SET_FILE_BYTES`] for a single-file set, [`MAX_DOCUMENT_BYTES`] for a schema, a rule or
//! an environment file. Names are printed escaped ([`crate::escape`]).
//!
//! [`load`] reads and builds in one step. The release pipeline (`crate::pipeline`) splits it:
//! [`read`] parses the items (leaving out what its [`Exclusions`] name: schema files and the
//! environments directory), the pipeline substitutes and validates the parsed values, and
//! [`build`] turns them into a set, with every problem of every step in one report.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use switchboard_proto::ItemSet;
use switchboard_proto::set::{ContractError, MAX_ITEM_BYTES, validate_key};

mod parse;

use parse::*;

/// How many problems an error message lists before "and N more".
pub const MAX_PROBLEMS_SHOWN: usize = 20;

/// A file of this name at the root of a source directory is configuration, not an item.
pub const CONFIG_FILE: &str = "switchboard.yaml";

/// Deepest directory nesting followed (a guard against symbolic link loops).
const MAX_DEPTH: usize = 64;

/// Largest item file read. An item is at most [`MAX_ITEM_BYTES`] of canonical JSON, but its
/// file may be indented JSON or YAML, which takes more room for the same value; four times the
/// item limit leaves room for that while keeping what one file can cost in memory small.
pub const MAX_ITEM_FILE_BYTES: u64 = 4 * MAX_ITEM_BYTES as u64;

/// Largest single-file set read. The whole file is parsed into memory at once, several times
/// its size as values; a larger set belongs in a directory, one file per item. The stage
/// benchmark's single-file set of 100,000 items is 99 MB.
pub const MAX_SET_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// Largest configuration document read: `switchboard.yaml`, a schema, a Rego rule file, an
/// environment file.
pub const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;

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
    /// A file over its size limit: refused from its metadata before it is read or, when it
    /// `grew` past the limit after its size was taken, once the limit was read.
    #[error("{file}: {}, over the limit of {limit} bytes for {what}", if *.grew {
        "grew while it was read".to_string()
    } else {
        format!("is {bytes} bytes")
    })]
    FileTooLarge {
        file: String,
        bytes: u64,
        limit: u64,
        what: &'static str,
        grew: bool,
    },
    /// A symbolic link that leads outside the set: never followed.
    #[error(
        "{file}: is a symbolic link to {target}, outside {root}; sbctl reads nothing outside the set"
    )]
    LinkOutside {
        file: String,
        target: String,
        root: String,
    },
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
    #[error("{} does not exist", crate::escape::path(.path))]
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
        [] => format!("{} is not a valid set", display(path)),
        [one] => one.to_string(),
        many => {
            let mut out = format!("{} has {} problems:", display(path), many.len());
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
    let invalid = |problem| SourceError::Invalid {
        path: path.to_path_buf(),
        problems: vec![problem],
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SourceError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(invalid(unreadable(path, &e))),
    };
    let directory = meta.is_dir();
    let (items, problems) = if directory {
        // PATH itself may be a link (a `current` link to a release directory): the operator
        // named it, so what counts as inside is the directory it leads to.
        let root = fs::canonicalize(path).map_err(|e| invalid(unreadable(path, &e)))?;
        read_dir(path, &root, exclusions)
    } else {
        match set_file(path, &meta) {
            Ok(open) => read_file(path, &open),
            Err(problem) => (Vec::new(), vec![problem]),
        }
    };
    Ok(Read {
        items,
        problems,
        directory,
    })
}

/// The file to open for a single-file set at `path`. A set file that is a symbolic link must
/// lead inside the directory that holds the link: `sbctl stage NS repo/set.json` in CI must not
/// stage whatever a pull request pointed `set.json` at.
fn set_file(path: &Path, meta: &fs::Metadata) -> Result<PathBuf, Problem> {
    // A FIFO or a device would block the read or never end; only a regular file is a set.
    if !meta.is_file() {
        return Err(Problem::Unsupported {
            file: display(path),
        });
    }
    let link = fs::symlink_metadata(path).map_err(|e| unreadable(path, &e))?;
    if !link.file_type().is_symlink() {
        return Ok(path.to_path_buf());
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    resolve_in(parent, path)
}

/// `path` with every symbolic link in it resolved, when that is inside the directory `root`;
/// otherwise a problem naming `path` and where it leads.
pub fn resolve_in(root: &Path, path: &Path) -> Result<PathBuf, Problem> {
    let root = fs::canonicalize(root).map_err(|e| unreadable(root, &e))?;
    resolve_inside(&root, path)
}

/// [`resolve_in`] with `root` already canonical.
fn resolve_inside(root: &Path, path: &Path) -> Result<PathBuf, Problem> {
    let target = fs::canonicalize(path).map_err(|e| unreadable(path, &e))?;
    // `starts_with` compares whole components: `/sets/a-old` is not inside `/sets/a`.
    if target.starts_with(root) {
        Ok(target)
    } else {
        Err(Problem::LinkOutside {
            file: display(path),
            target: display(&target),
            root: display(root),
        })
    }
}

/// Reads the file at `open` (`file` as messages name it) by [`read_bounded`], with the size
/// of the open file itself, so that it is the file being read that is measured.
fn read_limited(
    file: &Path,
    open: &Path,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, Problem> {
    let handle = fs::File::open(open).map_err(|e| unreadable(file, &e))?;
    let len = handle.metadata().map_err(|e| unreadable(file, &e))?.len();
    read_bounded(handle, len, limit).map_err(|e| match e {
        Bounded::Io(e) => unreadable(file, &e),
        Bounded::TooLarge { bytes, grew } => Problem::FileTooLarge {
            file: display(file),
            bytes,
            limit,
            what,
            grew,
        },
    })
}

/// Why [`read_bounded`] read nothing.
#[derive(Debug)]
pub enum Bounded {
    Io(io::Error),
    /// Over the limit: `bytes` is the size the metadata gave, or when `grew`, what was read
    /// before the reading stopped.
    TooLarge {
        bytes: u64,
        grew: bool,
    },
}

/// Reads `reader`, whose metadata says it holds `len` bytes, refusing it when `len` is over
/// `limit` before anything is read (a sparse gigabyte costs nothing), and never reading more
/// than one byte past `limit`, so that a file growing after its size was taken, or a device
/// with no size, cannot get past the limit either.
pub fn read_bounded(reader: impl io::Read, len: u64, limit: u64) -> Result<Vec<u8>, Bounded> {
    if len > limit {
        return Err(Bounded::TooLarge {
            bytes: len,
            grew: false,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(Bounded::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Bounded::TooLarge {
            bytes: bytes.len() as u64,
            grew: true,
        });
    }
    Ok(bytes)
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
/// environment file, with the limits and error messages of items. `path` must lead inside the
/// directory `root`, symbolic links resolved, and be at most [`MAX_DOCUMENT_BYTES`].
pub fn read_document(root: &Path, path: &Path) -> Result<serde_json::Value, Problem> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let format = Format::split_name(&name).map_or(Format::Yaml, |(_, format)| format);
    let open = resolve_in(root, path)?;
    let bytes = read_limited(path, &open, MAX_DOCUMENT_BYTES, "a configuration document")?;
    parse(&bytes, format).map_err(|e| e.into_problem(path, format))
}

/// Reads a text file (a Rego rule) inside `root`, as [`read_document`] does, naming it when it
/// cannot be read or is not UTF-8.
pub fn read_text(root: &Path, path: &Path) -> Result<String, Problem> {
    let open = resolve_in(root, path)?;
    let bytes = read_limited(path, &open, MAX_DOCUMENT_BYTES, "a rule file")?;
    String::from_utf8(bytes).map_err(|e| Problem::Unreadable {
        file: display(path),
        reason: format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()),
    })
}

/// A path as problems name it, escaped for the terminal.
fn display(path: &Path) -> String {
    crate::escape::path(path)
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
    /// As messages name it: under PATH as given.
    path: PathBuf,
    /// What to open: `path`, or for a symbolic link the file inside the set it leads to.
    open: PathBuf,
    format: Format,
}

/// Reads the items under `dir`, whose canonical path is `root`.
fn read_dir(dir: &Path, root: &Path, exclusions: &Exclusions) -> (Vec<SourceItem>, Vec<Problem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut walker = Walker {
        root,
        exclusions,
        files: &mut files,
        problems: &mut problems,
    };
    walker.walk(dir, "", 0);

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
        let bytes = match read_limited(&file.path, &file.open, MAX_ITEM_FILE_BYTES, "an item file")
        {
            Ok(bytes) => bytes,
            Err(problem) => {
                problems.push(problem);
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

/// Collects the item files of a source directory whose canonical path is `root`.
struct Walker<'a> {
    root: &'a Path,
    exclusions: &'a Exclusions,
    files: &'a mut Vec<ItemFile>,
    problems: &'a mut Vec<Problem>,
}

impl Walker<'_> {
    /// Collects the item files under `dir` in sorted order; `prefix` is the key prefix of `dir`
    /// (empty at the root, else ending with `/`).
    fn walk(&mut self, dir: &Path, prefix: &str, depth: usize) {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.problems.push(unreadable(dir, &e));
                return;
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push(entry.file_name()),
                Err(e) => self.problems.push(unreadable(dir, &e)),
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
            let Some((meta, open)) = self.follow(&path, &relative, &name_str) else {
                continue;
            };
            if meta.is_dir() {
                if self.exclusions.dirs.contains(&relative) {
                    continue;
                }
                if depth + 1 >= MAX_DEPTH {
                    self.problems.push(Problem::TooDeep {
                        file: display(&path),
                    });
                } else {
                    self.walk(&path, &format!("{relative}/"), depth + 1);
                }
            } else if meta.is_file()
                && !self.exclusions.files.contains(&relative)
                && let Some((stem, format)) = Format::split_name(&name_str)
            {
                self.files.push(ItemFile {
                    key: format!("{prefix}{stem}"),
                    path,
                    open,
                    format,
                });
            }
        }
    }

    /// The metadata of the entry at `path` and the path to open it by, following a symbolic
    /// link only when it leads inside the set; `None`, with the problem recorded if it matters,
    /// when the entry is not to be read.
    fn follow(
        &mut self,
        path: &Path,
        relative: &str,
        name: &str,
    ) -> Option<(fs::Metadata, PathBuf)> {
        let is_item_name = Format::split_name(name).is_some();
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                if is_item_name {
                    self.problems.push(unreadable(path, &e));
                }
                return None;
            }
        };
        if !meta.file_type().is_symlink() {
            return Some((meta, path.to_path_buf()));
        }
        let target = match resolve_inside(self.root, path) {
            Ok(target) => target,
            Err(problem) => {
                // Only a link sbctl would follow is a problem: one to a directory or named
                // like an item. A `README.md` linked from elsewhere is never read. A schema or
                // the environments directory is refused where it is read, so it is not
                // reported twice. A dangling link cannot be read: a problem for an item.
                let leads_to_dir = fs::metadata(path).is_ok_and(|m| m.is_dir());
                let excluded = self.exclusions.files.contains(relative)
                    || self.exclusions.dirs.contains(relative);
                if !excluded && (is_item_name || leads_to_dir) {
                    self.problems.push(problem);
                }
                return None;
            }
        };
        match fs::metadata(&target) {
            Ok(meta) => Some((meta, target)),
            Err(e) => {
                if is_item_name {
                    self.problems.push(unreadable(path, &e));
                }
                None
            }
        }
    }
}

fn read_file(path: &Path, open: &Path) -> (Vec<SourceItem>, Vec<Problem>) {
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
    let bytes = match read_limited(path, open, MAX_SET_FILE_BYTES, "a single-file set") {
        Ok(bytes) => bytes,
        Err(problem) => return (Vec::new(), vec![problem]),
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

#[cfg(test)]
mod tests;
