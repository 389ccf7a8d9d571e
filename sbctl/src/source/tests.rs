//! The unit tests of `source`.

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

fn symlink(target: &Path, link: &Path) {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

#[test]
fn a_link_out_of_the_set_is_refused_naming_it_and_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("set");
    let outside = dir.path().join("outside");
    write(&outside, "secret.json", r#"{"token": "s3cr3t"}"#);
    write(&outside, "shared/x.json", "1");
    write(&outside, "README.md", "# not an item");
    write(&root, "a.json", "1");
    symlink(&outside.join("secret.json"), &root.join("creds.json"));
    symlink(&outside.join("shared"), &root.join("tables/shared"));
    // A link to a sibling set whose name begins like this one's is still outside.
    write(dir.path(), "set-old/b.json", "2");
    symlink(&dir.path().join("set-old/b.json"), &root.join("b.json"));
    // Never read, so not a problem: a link that is not named like an item.
    symlink(&outside.join("README.md"), &root.join("README.md"));

    let (msg, found) = problems(load(&root));
    let outside_links: Vec<_> = found
        .iter()
        .filter_map(|p| match p {
            Problem::LinkOutside { file, target, .. } => Some((file.clone(), target.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(outside_links.len(), 3, "{msg}");
    assert_eq!(found.len(), 3, "{msg}");
    let secret = outside
        .join("secret.json")
        .canonicalize()
        .expect("canonical");
    assert!(
        msg.contains(&display(&root.join("creds.json")))
            && msg.contains(&display(&secret))
            && msg.contains(&display(&root.join("tables/shared")))
            && msg.contains("b.json"),
        "{msg}"
    );
    assert!(!msg.contains("s3cr3t"), "{msg}");
}

#[test]
fn a_link_inside_the_set_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("set");
    write(&root, "common/owner.json", r#"{"team": "data"}"#);
    symlink(
        Path::new("../common/owner.json"),
        &root.join("tables/owner.json"),
    );
    symlink(&root.join("common"), &root.join("alias"));
    // PATH itself may be a link: what counts is the directory it leads to.
    let current = dir.path().join("current");
    symlink(&root, &current);
    let set = load(&current).expect("loads");
    let keys: Vec<_> = set.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["alias/owner", "common/owner", "tables/owner"]);
    assert_eq!(value(&set, "tables/owner"), json!({"team": "data"}));
}

#[test]
fn a_single_file_set_that_links_out_of_its_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "outside/secret.json", r#"{"token": "s3cr3t"}"#);
    write(dir.path(), "repo/real.json", r#"{"a": 1}"#);
    let repo = dir.path().join("repo");
    symlink(
        &dir.path().join("outside/secret.json"),
        &repo.join("set.json"),
    );
    let (msg, found) = problems(load(&repo.join("set.json")));
    assert!(matches!(&found[..], [Problem::LinkOutside { .. }]), "{msg}");
    assert!(
        msg.contains("set.json") && msg.contains("secret.json"),
        "{msg}"
    );
    symlink(Path::new("real.json"), &repo.join("alias.json"));
    let set = load(&repo.join("alias.json")).expect("a link within its directory loads");
    assert_eq!(value(&set, "a"), json!(1));
}

#[test]
fn documents_that_link_out_of_the_set_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("set");
    write(dir.path(), "outside/schema.json", r#"{"type": "object"}"#);
    write(&root, "schemas/own.json", r#"{"type": "object"}"#);
    symlink(
        &dir.path().join("outside/schema.json"),
        &root.join("schemas/table.json"),
    );
    let refused = read_document(&root, &root.join("schemas/table.json"))
        .expect_err("a schema outside the set");
    assert!(matches!(refused, Problem::LinkOutside { .. }), "{refused}");
    assert!(read_document(&root, &root.join("schemas/own.json")).is_ok());
    let refused =
        read_text(&root, &root.join("schemas/table.json")).expect_err("a rule outside the set");
    assert!(matches!(refused, Problem::LinkOutside { .. }), "{refused}");
}

#[test]
fn a_file_over_its_limit_is_refused_from_its_size_before_it_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "small.json", "1");
    // Sparse: a gigabyte that takes no room on disk, and must take none in memory.
    let big = fs::File::create(dir.path().join("big.json")).expect("create");
    big.set_len(1 << 30).expect("set_len");
    let (msg, found) = problems(load(dir.path()));
    match &found[..] {
        [
            Problem::FileTooLarge {
                bytes,
                limit,
                grew: false,
                ..
            },
        ] => {
            assert_eq!((*bytes, *limit), (1 << 30, MAX_ITEM_FILE_BYTES));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        msg.contains("big.json") && msg.contains("1073741824 bytes"),
        "{msg}"
    );

    let set_file = dir.path().join("set.json");
    fs::File::create(&set_file)
        .and_then(|f| f.set_len(MAX_SET_FILE_BYTES + 1))
        .expect("sparse set file");
    let (msg, found) = problems(load(&set_file));
    assert!(
        matches!(&found[..], [Problem::FileTooLarge { grew: false, .. }]),
        "{msg}"
    );
    let schema = dir.path().join("schema.json");
    fs::File::create(&schema)
        .and_then(|f| f.set_len(MAX_DOCUMENT_BYTES + 1))
        .expect("sparse schema");
    let refused = read_document(dir.path(), &schema).expect_err("too large");
    assert!(
        matches!(refused, Problem::FileTooLarge { grew: false, .. }),
        "{refused}"
    );
}

/// A reader that counts what is taken from it.
struct Counting<R> {
    inner: R,
    taken: u64,
}

impl<R: io::Read> io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken += n as u64;
        Ok(n)
    }
}

#[test]
fn reading_stops_one_byte_past_the_limit_whatever_the_metadata_said() {
    // A file that grew after its size was taken: the metadata said 10 bytes.
    let mut counting = Counting {
        inner: io::repeat(b' ').take(100 * 1024),
        taken: 0,
    };
    match read_bounded(&mut counting, 10, 1024) {
        Err(Bounded::TooLarge { bytes, grew: true }) => assert_eq!(bytes, 1025),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        counting.taken, 1025,
        "read no more than the limit and a byte"
    );
    let exact = read_bounded(io::repeat(b'1').take(1024), 1024, 1024).expect("at the limit");
    assert_eq!(exact.len(), 1024);
}

#[test]
fn a_name_with_an_escape_character_is_printed_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "ok.json", "1");
    write(dir.path(), "red\x1b[31m.json", "1");
    write(dir.path(), "bad\x1b]0;owned\x07.json", "1");
    // A valid key in a directory whose own name would clear the screen.
    let root = dir.path().join("set\x1b[2J");
    write(&root, "broken.json", "{");
    let (msg, found) = problems(load(dir.path()));
    assert_eq!(found.len(), 3, "{msg}");
    assert!(!msg.contains('\x1b') && !msg.contains('\x07'), "{msg:?}");
    assert!(
        msg.contains("red\\u{1b}[31m.json")
            && msg.contains("bad\\u{1b}]0;owned\\u{7}.json")
            && msg.contains("set\\u{1b}[2J/broken.json"),
        "escaped, the rest readable: {msg}"
    );
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
