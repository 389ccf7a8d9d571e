//! sbctl reads only what is in the set (issue 14): a symbolic link that leads out of the set
//! is refused, naming it, and nothing is staged; a file name with an escape character reaches
//! the operator's terminal escaped. Against a real coordinator and etcd, with the sbctl binary.
//! The memory bound of a huge file is in `source_memory.rs`, a test binary of its own.

mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use switchboard_tests::TestEnv;

const NS: &str = "catalog";

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[tokio::test]
async fn a_link_out_of_the_set_is_refused_naming_it_and_nothing_is_staged() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    let set = dir.path().join("set");
    write(&set.join("tables/orders.json"), r#"{"owner": "sales"}"#)?;
    // What a pull request to a set repository could add: a credential of the CI machine, and
    // a system file that YAML reads as one long string.
    let secret = dir.path().join("ci/credentials.json");
    write(&secret, r#"{"aws_secret_access_key": "s3cr3t"}"#)?;
    std::os::unix::fs::symlink(&secret, set.join("tables/credentials.json"))?;
    std::os::unix::fs::symlink("/etc/os-release", set.join("os-release.yaml"))?;

    let set_arg = set.display().to_string();
    let out = sbctl.run(&["stage", NS, &set_arg]).await?.ensure_code(4)?;
    let secret_target = std::fs::canonicalize(&secret)?.display().to_string();
    let os_release = std::fs::canonicalize("/etc/os-release")?
        .display()
        .to_string();
    for named in [
        "tables/credentials.json",
        secret_target.as_str(),
        "os-release.yaml",
        os_release.as_str(),
        "is a symbolic link to",
    ] {
        ensure!(out.stderr.contains(named), "{named} is not named:\n{out}");
    }
    ensure!(!out.stderr.contains("s3cr3t"), "{out}");
    common::nothing_staged(&common::status(&sbctl, NS).await?)?;

    // With the links gone, the same set stages.
    std::fs::remove_file(set.join("tables/credentials.json"))?;
    std::fs::remove_file(set.join("os-release.yaml"))?;
    common::stage(&sbctl, NS, &set_arg).await?;
    Ok(())
}

#[tokio::test]
async fn a_file_name_with_an_escape_character_is_printed_escaped() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    write(&dir.path().join("tables/orders.json"), "{}")?;
    // Would turn the operator's terminal red and retitle its window.
    write(
        &dir.path().join("tables/x\x1b[31m\x1b]0;owned\x07.json"),
        "{}",
    )?;
    // A backslash in a name is doubled, so that no name can spell out another's escape.
    write(&dir.path().join("tables/back\\slash\x1b.json"), "{}")?;

    let path = dir.path().display().to_string();
    let out = sbctl.run(&["stage", NS, &path]).await?.ensure_code(4)?;
    ensure!(
        !out.stderr.contains('\x1b') && !out.stderr.contains('\x07'),
        "a raw control character reached stderr: {:?}",
        out.stderr
    );
    ensure!(
        out.stderr
            .contains("tables/x\\u{1b}[31m\\u{1b}]0;owned\\u{7}.json"),
        "the name is not shown escaped: {:?}",
        out.stderr
    );
    ensure!(
        out.stderr.contains("tables/back\\\\slash\\u{1b}.json"),
        "the name with a backslash is not shown escaped: {:?}",
        out.stderr
    );
    common::nothing_staged(&common::status(&sbctl, NS).await?)?;
    Ok(())
}
