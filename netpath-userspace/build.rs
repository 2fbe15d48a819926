//! Builds the BPF object (netpath-ebpf) with the nightly toolchain through
//! aya-build, so that a plain `cargo build` produces everything.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "netpath-ebpf")
        .ok_or_else(|| anyhow!("netpath-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    let root_dir = manifest_path.parent().ok_or_else(|| anyhow!("no parent for {manifest_path}"))?.as_str();
    aya_build::build_ebpf(
        [aya_build::Package { name: name.as_str(), root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
