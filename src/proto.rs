//! Code generated from `proto/` by `build.rs`. Module nesting mirrors the protobuf
//! packages, because generated code refers to other packages by relative paths.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod shoal {
    pub mod kv {
        tonic::include_proto!("shoal.kv");
    }
    pub mod command {
        tonic::include_proto!("shoal.command");
    }
    pub mod state {
        tonic::include_proto!("shoal.state");
    }
    pub mod peer {
        tonic::include_proto!("shoal.peer");
    }
    pub mod backup {
        tonic::include_proto!("shoal.backup");
    }
}
