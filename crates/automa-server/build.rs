//! Records the compiler's version for `automa_build_info`. The git commit comes from `AUTOMA_GIT_COMMIT` when
//! the build sets it (a source archive has no repository to ask).

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AUTOMA_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=AUTOMA_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
