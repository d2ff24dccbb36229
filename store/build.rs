fn main() {
    println!("cargo:rerun-if-changed=proto/peer.proto");
    println!("cargo:rerun-if-changed=proto/etcd_auth.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/peer.proto"], &["proto"])
        .expect("compiling proto/peer.proto (is protoc installed? `make deps` installs it)");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(&["proto/etcd_auth.proto"], &["proto"])
        .expect("compiling proto/etcd_auth.proto (is protoc installed? `make deps` installs it)");
}
