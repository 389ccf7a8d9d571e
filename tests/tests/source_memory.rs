//! A 1 GB item file is refused by its size before it is read, and sbctl's peak memory stays
//! under 50 MB (issue 14, acceptance 6). A test binary of its own with a single test: the peak
//! is read with `getrusage(RUSAGE_CHILDREN)`, the largest peak of any child this process has
//! reaped, so no other test may reap a larger process (an etcd) in the same process first.

mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use nix::sys::resource::{UsageWho, getrusage};
use switchboard_tests::TestEnv;

const NS: &str = "catalog";
/// The most memory sbctl may use to refuse a 1 GB file.
const MAX_RSS_BYTES: u64 = 50 * 1000 * 1000;

/// The largest peak resident set of the children reaped so far, in bytes.
fn children_peak_rss() -> Result<u64> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    // Linux reports ru_maxrss in kilobytes.
    Ok(u64::try_from(usage.max_rss()).unwrap_or(0) * 1024)
}

#[tokio::test]
async fn a_one_gigabyte_file_is_refused_by_size_in_little_memory() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("tables"))?;
    std::fs::write(dir.path().join("tables/orders.json"), "{}")?;
    // Sparse: a gigabyte of zeros that takes no room on disk.
    let big = std::fs::File::create(dir.path().join("tables/big.json"))?;
    big.set_len(1 << 30)?;
    drop(big);

    let path = dir.path().display().to_string();
    let out = sbctl.run(&["stage", NS, &path]).await?.ensure_code(4)?;
    let peak = children_peak_rss()?;
    println!(
        "sbctl's peak RSS refusing a 1 GiB item file: {:.1} MB",
        peak as f64 / 1e6
    );
    ensure!(
        out.stderr
            .contains(&Path::new("tables").join("big.json").display().to_string())
            && out.stderr.contains("is 1073741824 bytes, over the limit"),
        "the file is not refused by its size:\n{out}"
    );
    ensure!(
        peak < MAX_RSS_BYTES,
        "sbctl's peak RSS was {peak} bytes, over {MAX_RSS_BYTES}"
    );
    common::nothing_staged(&common::status(&sbctl, NS).await?)
}
