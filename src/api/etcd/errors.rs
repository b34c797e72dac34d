//! Shoal's errors as the gRPC statuses etcd returns for the same conditions, with etcd's
//! message texts: clients (etcdctl, clientv3) match on them.

use crate::range::kv::KvError;
use crate::range::RangeError;
use crate::router::RouteError;
use tonic::{Code, Status};

pub fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

pub fn key_not_found() -> Status {
    Status::invalid_argument("etcdserver: key not found")
}

pub fn value_provided() -> Status {
    Status::invalid_argument("etcdserver: value is provided")
}

pub fn lease_provided() -> Status {
    Status::invalid_argument("etcdserver: lease is provided")
}

pub fn too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

pub fn duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

pub fn invalid_sort_option() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

pub fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

pub fn kv(error: KvError) -> Status {
    match error {
        KvError::Compacted => Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
        KvError::FutureRevision => Status::out_of_range("etcdserver: mvcc: required revision is a future revision"),
        KvError::KeyNotFound => key_not_found(),
        KvError::LeaseNotFound => Status::not_found("etcdserver: requested lease not found"),
        KvError::UnknownMember => Status::not_found("etcdserver: member not found"),
        KvError::LeaseExists => Status::failed_precondition("etcdserver: lease already exists"),
        KvError::MemberExists => Status::failed_precondition("etcdserver: member ID already exist"),
        KvError::PeerUrlExists => Status::failed_precondition("etcdserver: Peer URLs already exists"),
        KvError::MemberNotLearner => Status::failed_precondition("etcdserver: can only promote a learner member"),
        KvError::MembershipRefused(detail) => Status::failed_precondition(format!("etcdserver: {detail}")),
        // Never applied; the router retries these until its deadline.
        KvError::StaleRevision => Status::unavailable("etcdserver: leader changed"),
        KvError::WrongRange(what) => Status::internal(format!("etcdserver: {what} reached the wrong range")),
        // Routed by a stale range map; the router re-plans these until its deadline.
        KvError::EpochMismatch { .. } => Status::unavailable("etcdserver: leader changed"),
        KvError::BadSplit(detail) => Status::internal(format!("etcdserver: {detail}")),
        // Waited out by the transaction layer until its deadline.
        KvError::Locked { .. } => {
            Status::unavailable("etcdserver: request timed out, keys are locked by a transaction")
        }
        // Nothing applied: the client may send it again.
        KvError::Aborted => {
            Status::unavailable("etcdserver: transaction aborted by a conflicting one; nothing applied")
        }
        KvError::Committed | KvError::BadCommit(_) => Status::internal(format!("etcdserver: {error}")),
        // What grpc-go, and so etcd, answers when a response is over its send limit.
        KvError::ResponseTooLarge { size, limit } => Status::resource_exhausted(format!(
            "grpc: trying to send message larger than max ({size} vs. {limit})"
        )),
        KvError::Storage(error) => {
            tracing::error!(%error, "storage error serving a request");
            Status::internal(format!("etcdserver: storage: {error}"))
        }
    }
}

pub fn route(error: RouteError) -> Status {
    match error {
        RouteError::NoLeader | RouteError::Range(RangeError::NotLeader { .. }) => {
            Status::unavailable("etcdserver: no leader")
        }
        // Until transactions span ranges (two-phase commit), such a command is refused.
        RouteError::CrossRange(ranges) => Status::unimplemented(format!(
            "etcdserver: the keys of this request live in {} ranges; a write across ranges is not supported yet",
            ranges.len()
        )),
        RouteError::Range(RangeError::Storage(detail)) => Status::internal(format!("etcdserver: storage: {detail}")),
        RouteError::Range(RangeError::Timeout) => Status::unavailable("etcdserver: request timed out"),
        RouteError::Range(RangeError::LeaderChanged) => Status::unavailable("etcdserver: leader changed"),
        RouteError::Range(RangeError::Stopped) => Status::unavailable("etcdserver: server stopped"),
        // Unavailable, as etcd clients then try another member.
        RouteError::Range(RangeError::Installing) => {
            Status::unavailable("etcdserver: this member is installing a snapshot; ask another")
        }
        RouteError::Range(RangeError::BadTransferee(_)) => {
            Status::failed_precondition("etcdserver: bad leader transferee")
        }
        RouteError::Range(RangeError::UnknownRange(range)) => {
            Status::new(Code::Internal, format!("etcdserver: range {range} is not served here"))
        }
        RouteError::ConnectionLost(detail) => {
            tracing::debug!(%detail, "a question to the leader lost its connection");
            Status::unavailable("etcdserver: request timed out, possibly due to connection lost")
        }
    }
}

/// A watch hub ended the stream.
pub fn watch(error: crate::range::watch::WatchError) -> Status {
    match error {
        crate::range::watch::WatchError::Storage(detail) => Status::internal(format!("etcdserver: {detail}")),
    }
}

pub fn txn(error: crate::txn::TxnError) -> Status {
    match error {
        crate::txn::TxnError::Route(error) => route(error),
        crate::txn::TxnError::Refused(error) => kv(error),
        // etcd's ErrGRPCNoSpace and ErrGRPCCorrupt.
        crate::txn::TxnError::NoSpace => Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
        crate::txn::TxnError::Corrupt => Status::data_loss("etcdserver: corrupt cluster"),
        // Unavailable: etcd's clients then try another member, which has room.
        crate::txn::TxnError::DiskFull => Status::unavailable(
            "etcdserver: no space left on this member's disk (below --storage-reserve-bytes); another member takes writes",
        ),
    }
}

/// A snapshot (backup) that could not be finished.
pub fn backup(error: crate::backup::save::SaveError) -> Status {
    use crate::backup::save::SaveError;
    match error {
        SaveError::Read(error) => txn(error),
        SaveError::Route(error) => route(error),
        SaveError::Storage(error) => Status::internal(format!("etcdserver: storage: {error}")),
        SaveError::Closed => Status::cancelled("etcdserver: snapshot cancelled"),
    }
}

/// etcd's auth errors (rpctypes' ErrGRPC*), each with its code and text.
pub fn auth(error: crate::auth::AuthError) -> Status {
    use crate::auth::AuthError;
    let text = format!("etcdserver: {error}");
    match error {
        AuthError::UserEmpty
        | AuthError::AuthFailed
        | AuthError::PasswordEmpty
        | AuthError::RoleEmpty
        | AuthError::PermissionNotGiven
        | AuthError::InvalidAuthMgmt
        | AuthError::OldRevision => Status::invalid_argument(text),
        AuthError::InvalidToken => Status::unauthenticated(text),
        AuthError::PermissionDenied => Status::permission_denied(text),
        AuthError::NotEnabled
        | AuthError::UserExists
        | AuthError::UserNotFound
        | AuthError::RoleExists
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist => Status::failed_precondition(text),
        AuthError::Route(error) => route(error),
        AuthError::Storage(detail) => Status::internal(format!("etcdserver: storage: {detail}")),
    }
}
