//! Compiles the `.proto` files with protox (pure Rust), so a machine with only the Rust
//! toolchain builds Shoal: no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/mvccpb/kv.proto",
        "proto/etcd/authpb/auth.proto",
        "proto/etcd/etcdserverpb/rpc.proto",
        "proto/etcd/v3lockpb/v3lock.proto",
        "proto/etcd/v3electionpb/v3election.proto",
        "proto/shoal/kv.proto",
        "proto/shoal/command.proto",
        "proto/shoal/state.proto",
        "proto/shoal/peer.proto",
        "proto/shoal/backup.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Services are declared whole; methods Shoal does not serve yet answer
        // Unimplemented instead of being missing from the contract.
        .generate_default_stubs(true)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
