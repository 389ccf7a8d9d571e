fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/switchboard.proto");
    tonic_prost_build::configure().compile_protos(&["proto/switchboard.proto"], &["proto"])?;
    Ok(())
}
