//! Generates the gRPC server stubs (and clients, for the delivery
//! benchmark) from the emulator's own .proto files.
//! protox compiles them in-process, so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shared.proto",
        "proto/serverfeatures.proto",
        "proto/streams.proto",
        "proto/persistent.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }

    let descriptors = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
