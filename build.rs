//! Tells the binary its git revision (`line_auth_proxy_build_info{revision}`):
//! `LINE_AUTH_PROXY_REVISION` from the environment when set (an image built
//! without `.git`), else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LINE_AUTH_PROXY_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let from_env = std::env::var("LINE_AUTH_PROXY_REVISION").ok().filter(|r| !r.is_empty());
    let revision = from_env.or_else(git_revision).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LINE_AUTH_PROXY_REVISION={revision}");
}

fn git_revision() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    if !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // A new commit moves HEAD or the branch it names: build again then.
    // (Only files that exist: cargo runs a script again on every build
    // while a file it watches is missing.)
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD".to_owned(), "packed-refs".to_owned()].into_iter().chain(branch);
        for file in watched.map(|f| format!("{dir}/{f}")) {
            if std::path::Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    Some(revision)
}
