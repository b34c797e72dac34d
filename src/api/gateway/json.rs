//! etcd's messages as etcd's JSON gateway writes and reads them.
//!
//! etcd serves its gateway with grpc-gateway v1, whose marshaler is golang/protobuf's
//! jsonpb with `OrigName: true` and without `EmitDefaults`. So a reply names each field
//! as the `.proto` file does (`create_revision`, `ID`, `peerURLs`), writes 64-bit
//! integers as strings, bytes as standard base64, enums by name, and leaves out every
//! field at its default value (0, "", false, empty lists, absent messages; a PUT event
//! has no `type`). Fields come in the order the `.proto` file declares them.
//!
//! A request is read as jsonpb reads it: a field by its proto name or its lowerCamelCase
//! JSON name (`range_end` or `rangeEnd`), 64-bit integers as strings or numbers, enums by
//! name or number, bytes in standard or URL-safe base64 with or without padding, `null`
//! as the default, unknown fields ignored, an empty body as the empty message.
//!
//! Hand-written rather than generated: the wire rules above differ from both serde's and
//! proto3's canonical JSON (which uses lowerCamelCase names), and the messages are few.

use crate::proto::authpb::{permission, Permission, UserAddOptions};
use crate::proto::etcdserverpb::{
    alarm_request, compare, range_request, request_op, response_op, watch_create_request, watch_request, AlarmMember,
    AlarmRequest, AlarmResponse, AlarmType, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse,
    AuthRoleListRequest, AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest,
    AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse, AuthUserListRequest,
    AuthUserListResponse, AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
    AuthenticateResponse, CompactionRequest, CompactionResponse, Compare, DefragmentRequest, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, DowngradeInfo, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use crate::proto::mvccpb::{event, Event, KeyValue};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A request body that is not a message of the expected type.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("{0}")]
    Syntax(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------------------
// Writing

/// One etcd message, serialized as etcd's gateway writes it.
pub struct Json<'a, T>(pub &'a T);

/// A message as a JSON document.
pub fn to_vec<'a, T>(message: &'a T) -> Result<Vec<u8>, serde_json::Error>
where
    Json<'a, T>: Serialize,
{
    serde_json::to_vec(&Json(message))
}

/// The fields of one message being written, each left out at its default value.
struct Fields<M> {
    map: M,
}

impl<M: SerializeMap> Fields<M> {
    fn begin<S: Serializer<SerializeMap = M>>(serializer: S) -> Result<Self, S::Error> {
        Ok(Self {
            map: serializer.serialize_map(None)?,
        })
    }

    fn int64(&mut self, name: &'static str, value: i64) -> Result<(), M::Error> {
        if value == 0 {
            return Ok(());
        }
        self.map.serialize_entry(name, &value.to_string())
    }

    fn uint64(&mut self, name: &'static str, value: u64) -> Result<(), M::Error> {
        if value == 0 {
            return Ok(());
        }
        self.map.serialize_entry(name, &value.to_string())
    }

    /// 32-bit integers are JSON numbers (only 64-bit ones are strings).
    fn uint32(&mut self, name: &'static str, value: u32) -> Result<(), M::Error> {
        if value == 0 {
            return Ok(());
        }
        self.map.serialize_entry(name, &value)
    }

    fn boolean(&mut self, name: &'static str, value: bool) -> Result<(), M::Error> {
        if !value {
            return Ok(());
        }
        self.map.serialize_entry(name, &true)
    }

    fn string(&mut self, name: &'static str, value: &str) -> Result<(), M::Error> {
        if value.is_empty() {
            return Ok(());
        }
        self.map.serialize_entry(name, value)
    }

    fn bytes(&mut self, name: &'static str, value: &[u8]) -> Result<(), M::Error> {
        if value.is_empty() {
            return Ok(());
        }
        self.map.serialize_entry(name, &STANDARD.encode(value))
    }

    /// An enum by name (by number if this build does not know the value).
    fn enumeration(&mut self, name: &'static str, value: i32, label: Option<&'static str>) -> Result<(), M::Error> {
        if value == 0 {
            return Ok(());
        }
        match label {
            Some(label) => self.map.serialize_entry(name, label),
            None => self.map.serialize_entry(name, &value),
        }
    }

    fn message<'a, T>(&mut self, name: &'static str, value: Option<&'a T>) -> Result<(), M::Error>
    where
        Json<'a, T>: Serialize,
    {
        match value {
            Some(value) => self.map.serialize_entry(name, &Json(value)),
            None => Ok(()),
        }
    }

    fn repeated<T>(&mut self, name: &'static str, values: &[T]) -> Result<(), M::Error>
    where
        for<'a> Json<'a, T>: Serialize,
    {
        if values.is_empty() {
            return Ok(());
        }
        self.map.serialize_entry(name, &Repeated(values))
    }

    fn strings(&mut self, name: &'static str, values: &[String]) -> Result<(), M::Error> {
        if values.is_empty() {
            return Ok(());
        }
        self.map.serialize_entry(name, values)
    }

    fn repeated_bytes(&mut self, name: &'static str, values: &[Bytes]) -> Result<(), M::Error> {
        if values.is_empty() {
            return Ok(());
        }
        let encoded: Vec<String> = values.iter().map(|value| STANDARD.encode(value)).collect();
        self.map.serialize_entry(name, &encoded)
    }

    fn end(self) -> Result<M::Ok, M::Error> {
        self.map.end()
    }
}

struct Repeated<'a, T>(&'a [T]);

impl<T> Serialize for Repeated<'_, T>
where
    for<'a> Json<'a, T>: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Json))
    }
}

/// `impl Serialize for Json<'_, $type>`: `$message` is the message, `$fields` the
/// [`Fields`] to write, in the `.proto` file's order.
macro_rules! write_message {
    ($type:ty, |$message:ident, $fields:ident| $body:block) => {
        impl Serialize for Json<'_, $type> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let $message = self.0;
                let mut $fields = Fields::begin(serializer)?;
                $body
                $fields.end()
            }
        }
    };
}

write_message!(ResponseHeader, |header, fields| {
    fields.uint64("cluster_id", header.cluster_id)?;
    fields.uint64("member_id", header.member_id)?;
    fields.int64("revision", header.revision)?;
    fields.uint64("raft_term", header.raft_term)?;
});

write_message!(KeyValue, |kv, fields| {
    fields.bytes("key", &kv.key)?;
    fields.int64("create_revision", kv.create_revision)?;
    fields.int64("mod_revision", kv.mod_revision)?;
    fields.int64("version", kv.version)?;
    fields.bytes("value", &kv.value)?;
    fields.int64("lease", kv.lease)?;
});

write_message!(Event, |event, fields| {
    let label = event::EventType::try_from(event.r#type)
        .ok()
        .map(|kind| kind.as_str_name());
    fields.enumeration("type", event.r#type, label)?;
    fields.message("kv", event.kv.as_ref())?;
    fields.message("prev_kv", event.prev_kv.as_ref())?;
});

write_message!(RangeResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("kvs", &response.kvs)?;
    fields.boolean("more", response.more)?;
    fields.int64("count", response.count)?;
});

write_message!(PutResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.message("prev_kv", response.prev_kv.as_ref())?;
});

write_message!(DeleteRangeResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.int64("deleted", response.deleted)?;
    fields.repeated("prev_kvs", &response.prev_kvs)?;
});

write_message!(ResponseOp, |op, fields| {
    // A oneof member is written whenever it is set, even when empty.
    match &op.response {
        Some(response_op::Response::ResponseRange(range)) => fields.message("response_range", Some(range))?,
        Some(response_op::Response::ResponsePut(put)) => fields.message("response_put", Some(put))?,
        Some(response_op::Response::ResponseDeleteRange(delete)) => {
            fields.message("response_delete_range", Some(delete))?
        }
        Some(response_op::Response::ResponseTxn(txn)) => fields.message("response_txn", Some(txn))?,
        None => {}
    }
});

write_message!(TxnResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.boolean("succeeded", response.succeeded)?;
    fields.repeated("responses", &response.responses)?;
});

write_message!(CompactionResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
});

write_message!(WatchResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.int64("watch_id", response.watch_id)?;
    fields.boolean("created", response.created)?;
    fields.boolean("canceled", response.canceled)?;
    fields.int64("compact_revision", response.compact_revision)?;
    fields.string("cancel_reason", &response.cancel_reason)?;
    fields.boolean("fragment", response.fragment)?;
    fields.repeated("events", &response.events)?;
});

write_message!(LeaseGrantResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.int64("ID", response.id)?;
    fields.int64("TTL", response.ttl)?;
    fields.string("error", &response.error)?;
});

write_message!(LeaseRevokeResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
});

write_message!(LeaseKeepAliveResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.int64("ID", response.id)?;
    fields.int64("TTL", response.ttl)?;
});

write_message!(LeaseTimeToLiveResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.int64("ID", response.id)?;
    fields.int64("TTL", response.ttl)?;
    fields.int64("grantedTTL", response.granted_ttl)?;
    fields.repeated_bytes("keys", &response.keys)?;
});

write_message!(LeaseStatus, |status, fields| {
    fields.int64("ID", status.id)?;
});

write_message!(LeaseLeasesResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("leases", &response.leases)?;
});

write_message!(Member, |member, fields| {
    fields.uint64("ID", member.id)?;
    fields.string("name", &member.name)?;
    fields.strings("peerURLs", &member.peer_ur_ls)?;
    fields.strings("clientURLs", &member.client_ur_ls)?;
    fields.boolean("isLearner", member.is_learner)?;
});

write_message!(MemberListResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("members", &response.members)?;
});

write_message!(MemberAddResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.message("member", response.member.as_ref())?;
    fields.repeated("members", &response.members)?;
});

write_message!(MemberRemoveResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("members", &response.members)?;
});

write_message!(MemberUpdateResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("members", &response.members)?;
});

write_message!(MemberPromoteResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("members", &response.members)?;
});

write_message!(DowngradeInfo, |info, fields| {
    fields.boolean("enabled", info.enabled)?;
    fields.string("targetVersion", &info.target_version)?;
});

write_message!(StatusResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.string("version", &response.version)?;
    fields.int64("dbSize", response.db_size)?;
    fields.uint64("leader", response.leader)?;
    fields.uint64("raftIndex", response.raft_index)?;
    fields.uint64("raftTerm", response.raft_term)?;
    fields.uint64("raftAppliedIndex", response.raft_applied_index)?;
    fields.strings("errors", &response.errors)?;
    fields.int64("dbSizeInUse", response.db_size_in_use)?;
    fields.boolean("isLearner", response.is_learner)?;
    fields.string("storageVersion", &response.storage_version)?;
    fields.int64("dbSizeQuota", response.db_size_quota)?;
    fields.message("downgradeInfo", response.downgrade_info.as_ref())?;
});

write_message!(AlarmMember, |member, fields| {
    fields.uint64("memberID", member.member_id)?;
    let label = AlarmType::try_from(member.alarm).ok().map(|kind| kind.as_str_name());
    fields.enumeration("alarm", member.alarm, label)?;
});

write_message!(AlarmResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("alarms", &response.alarms)?;
});

write_message!(HashResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.uint32("hash", response.hash)?;
});

write_message!(HashKvResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.uint32("hash", response.hash)?;
    fields.int64("compact_revision", response.compact_revision)?;
    fields.int64("hash_revision", response.hash_revision)?;
});

write_message!(DefragmentResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
});

/// Replies that carry nothing but their header.
macro_rules! header_only {
    ($($type:ty),+ $(,)?) => {
        $(write_message!($type, |response, fields| {
            fields.message("header", response.header.as_ref())?;
        });)+
    };
}

header_only!(
    AuthEnableResponse,
    AuthDisableResponse,
    AuthUserAddResponse,
    AuthUserDeleteResponse,
    AuthUserChangePasswordResponse,
    AuthUserGrantRoleResponse,
    AuthUserRevokeRoleResponse,
    AuthRoleAddResponse,
    AuthRoleDeleteResponse,
    AuthRoleGrantPermissionResponse,
    AuthRoleRevokePermissionResponse,
);

write_message!(AuthStatusResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.boolean("enabled", response.enabled)?;
    fields.uint64("authRevision", response.auth_revision)?;
});

write_message!(AuthenticateResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.string("token", &response.token)?;
});

write_message!(AuthUserGetResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.strings("roles", &response.roles)?;
});

write_message!(AuthUserListResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.strings("users", &response.users)?;
});

write_message!(AuthRoleListResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.strings("roles", &response.roles)?;
});

write_message!(Permission, |permission, fields| {
    let label = permission::Type::try_from(permission.perm_type)
        .ok()
        .map(|kind| kind.as_str_name());
    fields.enumeration("permType", permission.perm_type, label)?;
    fields.bytes("key", &permission.key)?;
    fields.bytes("range_end", &permission.range_end)?;
});

write_message!(AuthRoleGetResponse, |response, fields| {
    fields.message("header", response.header.as_ref())?;
    fields.repeated("perm", &response.perm)?;
});

// ---------------------------------------------------------------------------------------
// Reading

/// A message read from a gateway request body.
pub trait FromJson: Sized {
    fn from_json(body: &[u8]) -> Result<Self, JsonError>;
}

/// A request as it arrives (the mirror of one etcd message) and the message it makes.
trait IntoMessage: DeserializeOwned + Default {
    type Message;
    fn into_message(self) -> Result<Self::Message, JsonError>;
}

/// jsonpb reads an empty body as the empty message.
fn read<T: IntoMessage>(body: &[u8]) -> Result<T::Message, JsonError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return T::default().into_message();
    }
    serde_json::from_slice::<T>(body)?.into_message()
}

macro_rules! from_json {
    ($message:ty, $mirror:ty) => {
        impl FromJson for $message {
            fn from_json(body: &[u8]) -> Result<Self, JsonError> {
                read::<$mirror>(body)
            }
        }
    };
}

from_json!(RangeRequest, RangeRequestJson);
from_json!(PutRequest, PutRequestJson);
from_json!(DeleteRangeRequest, DeleteRangeRequestJson);
from_json!(TxnRequest, TxnRequestJson);
from_json!(CompactionRequest, CompactionRequestJson);
from_json!(WatchRequest, WatchRequestJson);
from_json!(LeaseGrantRequest, LeaseGrantRequestJson);
from_json!(LeaseRevokeRequest, LeaseRevokeRequestJson);
from_json!(LeaseKeepAliveRequest, LeaseKeepAliveRequestJson);
from_json!(LeaseTimeToLiveRequest, LeaseTimeToLiveRequestJson);
from_json!(LeaseLeasesRequest, EmptyJson<LeaseLeasesRequest>);
from_json!(MemberListRequest, MemberListRequestJson);
from_json!(MemberAddRequest, MemberAddRequestJson);
from_json!(MemberRemoveRequest, MemberIdJson<MemberRemoveRequest>);
from_json!(MemberUpdateRequest, MemberUpdateRequestJson);
from_json!(MemberPromoteRequest, MemberIdJson<MemberPromoteRequest>);
from_json!(StatusRequest, EmptyJson<StatusRequest>);
from_json!(HashRequest, EmptyJson<HashRequest>);
from_json!(DefragmentRequest, EmptyJson<DefragmentRequest>);
from_json!(HashKvRequest, HashKvRequestJson);
from_json!(AlarmRequest, AlarmRequestJson);
from_json!(AuthEnableRequest, EmptyJson<AuthEnableRequest>);
from_json!(AuthDisableRequest, EmptyJson<AuthDisableRequest>);
from_json!(AuthStatusRequest, EmptyJson<AuthStatusRequest>);
from_json!(AuthenticateRequest, AuthenticateRequestJson);
from_json!(AuthUserAddRequest, AuthUserAddRequestJson);
from_json!(AuthUserGetRequest, AuthUserGetRequestJson);
from_json!(AuthUserListRequest, EmptyJson<AuthUserListRequest>);
from_json!(AuthUserDeleteRequest, AuthUserDeleteRequestJson);
from_json!(AuthUserChangePasswordRequest, AuthUserChangePasswordRequestJson);
from_json!(AuthUserGrantRoleRequest, AuthUserGrantRoleRequestJson);
from_json!(AuthUserRevokeRoleRequest, AuthUserRevokeRoleRequestJson);
from_json!(AuthRoleAddRequest, AuthRoleAddRequestJson);
from_json!(AuthRoleGetRequest, AuthRoleGetRequestJson);
from_json!(AuthRoleListRequest, EmptyJson<AuthRoleListRequest>);
from_json!(AuthRoleDeleteRequest, AuthRoleDeleteRequestJson);
from_json!(AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionRequestJson);
from_json!(AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionRequestJson);

// Field readers, each taking `null` as the default as jsonpb does.

struct Int64Visitor;

impl Visitor<'_> for Int64Visitor {
    type Value = i64;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a 64-bit integer (a number or a string of digits)")
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
        Ok(value)
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
        i64::try_from(value).map_err(|_| E::custom(format!("{value} is out of range for int64")))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
        integral(value).ok_or_else(|| E::custom(format!("{value} is not an int64")))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<i64, E> {
        value
            .parse::<i64>()
            .ok()
            .or_else(|| value.parse::<f64>().ok().and_then(integral))
            .ok_or_else(|| E::custom(format!("{value:?} is not an int64")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
        Ok(0)
    }
}

/// A float that holds an integer in i64's range (jsonpb takes `1e3` for 1000).
fn integral(value: f64) -> Option<i64> {
    (value.fract() == 0.0 && value >= i64::MIN as f64 && value < i64::MAX as f64).then_some(value as i64)
}

fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    deserializer.deserialize_any(Int64Visitor)
}

/// An int64 of a oneof: `null` or absent leaves it unset.
fn oneof_int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct OptionalInt64;
    impl<'de> Visitor<'de> for OptionalInt64 {
        type Value = Option<i64>;
        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a 64-bit integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            int64(deserializer).map(Some)
        }
    }
    deserializer.deserialize_option(OptionalInt64)
}

fn boolean<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

/// Standard or URL-safe base64, padded or not, as jsonpb reads bytes.
fn decode_base64(text: &str) -> Result<Bytes, String> {
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE_LENIENT
    } else {
        &STANDARD_LENIENT
    };
    engine
        .decode(text)
        .map(Bytes::from)
        .map_err(|error| format!("{text:?} is not base64: {error}"))
}

fn base64_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => decode_base64(&text).map_err(de::Error::custom),
        None => Ok(Bytes::new()),
    }
}

/// Bytes of a oneof: `null` or absent leaves it unset.
fn oneof_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Bytes>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => decode_base64(&text).map(Some).map_err(de::Error::custom),
        None => Ok(None),
    }
}

/// A list, `null` being the empty one.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// An etcd enum, readable by name.
trait NamedEnum {
    const TYPE: &'static str;
    fn number_of(name: &str) -> Option<i32>;
}

macro_rules! named_enum {
    ($type:ty, $name:literal) => {
        impl NamedEnum for $type {
            const TYPE: &'static str = $name;
            fn number_of(name: &str) -> Option<i32> {
                <$type>::from_str_name(name).map(|value| value as i32)
            }
        }
    };
}

named_enum!(range_request::SortOrder, "RangeRequest.SortOrder");
named_enum!(range_request::SortTarget, "RangeRequest.SortTarget");
named_enum!(compare::CompareResult, "Compare.CompareResult");
named_enum!(compare::CompareTarget, "Compare.CompareTarget");
named_enum!(watch_create_request::FilterType, "WatchCreateRequest.FilterType");
named_enum!(alarm_request::AlarmAction, "AlarmRequest.AlarmAction");
named_enum!(AlarmType, "AlarmType");
named_enum!(permission::Type, "Permission.Type");

/// An enum value: its name, or its number.
struct EnumValue<E>(i32, std::marker::PhantomData<E>);

impl<'de, E: NamedEnum> Deserialize<'de> for EnumValue<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnumVisitor<E>(std::marker::PhantomData<E>);
        impl<E: NamedEnum> Visitor<'_> for EnumVisitor<E> {
            type Value = i32;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                write!(formatter, "a {} name or number", E::TYPE)
            }
            fn visit_str<Er: de::Error>(self, value: &str) -> Result<i32, Er> {
                E::number_of(value).ok_or_else(|| Er::custom(format!("unknown value {value:?} for enum {}", E::TYPE)))
            }
            fn visit_i64<Er: de::Error>(self, value: i64) -> Result<i32, Er> {
                i32::try_from(value).map_err(|_| Er::custom(format!("{value} is out of range for enum {}", E::TYPE)))
            }
            fn visit_u64<Er: de::Error>(self, value: u64) -> Result<i32, Er> {
                i32::try_from(value).map_err(|_| Er::custom(format!("{value} is out of range for enum {}", E::TYPE)))
            }
            fn visit_unit<Er: de::Error>(self) -> Result<i32, Er> {
                Ok(0)
            }
        }
        let number = deserializer.deserialize_any(EnumVisitor::<E>(std::marker::PhantomData))?;
        Ok(EnumValue(number, std::marker::PhantomData))
    }
}

fn enumeration<'de, D: Deserializer<'de>, E: NamedEnum>(deserializer: D) -> Result<i32, D::Error> {
    Ok(EnumValue::<E>::deserialize(deserializer)?.0)
}

fn enumerations<'de, D: Deserializer<'de>, E: NamedEnum>(deserializer: D) -> Result<Vec<i32>, D::Error> {
    let values: Vec<EnumValue<E>> = list(deserializer)?;
    Ok(values.into_iter().map(|value| value.0).collect())
}

/// At most one member of a oneof may be set.
fn one_of<T>(message: &str, members: Vec<Option<T>>) -> Result<Option<T>, JsonError> {
    let mut set = members.into_iter().flatten();
    let first = set.next();
    if set.next().is_some() {
        return Err(JsonError::Invalid(format!(
            "{message}: more than one field of a oneof is set"
        )));
    }
    Ok(first)
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RangeRequestJson {
    #[serde(deserialize_with = "base64_bytes")]
    key: Bytes,
    #[serde(alias = "rangeEnd", deserialize_with = "base64_bytes")]
    range_end: Bytes,
    #[serde(deserialize_with = "int64")]
    limit: i64,
    #[serde(deserialize_with = "int64")]
    revision: i64,
    #[serde(alias = "sortOrder", deserialize_with = "enumeration::<_, range_request::SortOrder>")]
    sort_order: i32,
    #[serde(
        alias = "sortTarget",
        deserialize_with = "enumeration::<_, range_request::SortTarget>"
    )]
    sort_target: i32,
    #[serde(deserialize_with = "boolean")]
    serializable: bool,
    #[serde(alias = "keysOnly", deserialize_with = "boolean")]
    keys_only: bool,
    #[serde(alias = "countOnly", deserialize_with = "boolean")]
    count_only: bool,
    #[serde(alias = "minModRevision", deserialize_with = "int64")]
    min_mod_revision: i64,
    #[serde(alias = "maxModRevision", deserialize_with = "int64")]
    max_mod_revision: i64,
    #[serde(alias = "minCreateRevision", deserialize_with = "int64")]
    min_create_revision: i64,
    #[serde(alias = "maxCreateRevision", deserialize_with = "int64")]
    max_create_revision: i64,
}

impl IntoMessage for RangeRequestJson {
    type Message = RangeRequest;
    fn into_message(self) -> Result<RangeRequest, JsonError> {
        Ok(RangeRequest {
            key: self.key,
            range_end: self.range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: self.sort_order,
            sort_target: self.sort_target,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct PutRequestJson {
    #[serde(deserialize_with = "base64_bytes")]
    key: Bytes,
    #[serde(deserialize_with = "base64_bytes")]
    value: Bytes,
    #[serde(deserialize_with = "int64")]
    lease: i64,
    #[serde(alias = "prevKv", deserialize_with = "boolean")]
    prev_kv: bool,
    #[serde(alias = "ignoreValue", deserialize_with = "boolean")]
    ignore_value: bool,
    #[serde(alias = "ignoreLease", deserialize_with = "boolean")]
    ignore_lease: bool,
}

impl IntoMessage for PutRequestJson {
    type Message = PutRequest;
    fn into_message(self) -> Result<PutRequest, JsonError> {
        Ok(PutRequest {
            key: self.key,
            value: self.value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct DeleteRangeRequestJson {
    #[serde(deserialize_with = "base64_bytes")]
    key: Bytes,
    #[serde(alias = "rangeEnd", deserialize_with = "base64_bytes")]
    range_end: Bytes,
    #[serde(alias = "prevKv", deserialize_with = "boolean")]
    prev_kv: bool,
}

impl IntoMessage for DeleteRangeRequestJson {
    type Message = DeleteRangeRequest;
    fn into_message(self) -> Result<DeleteRangeRequest, JsonError> {
        Ok(DeleteRangeRequest {
            key: self.key,
            range_end: self.range_end,
            prev_kv: self.prev_kv,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct CompareJson {
    #[serde(deserialize_with = "enumeration::<_, compare::CompareResult>")]
    result: i32,
    #[serde(deserialize_with = "enumeration::<_, compare::CompareTarget>")]
    target: i32,
    #[serde(deserialize_with = "base64_bytes")]
    key: Bytes,
    #[serde(deserialize_with = "oneof_int64")]
    version: Option<i64>,
    #[serde(alias = "createRevision", deserialize_with = "oneof_int64")]
    create_revision: Option<i64>,
    #[serde(alias = "modRevision", deserialize_with = "oneof_int64")]
    mod_revision: Option<i64>,
    #[serde(deserialize_with = "oneof_bytes")]
    value: Option<Bytes>,
    #[serde(deserialize_with = "oneof_int64")]
    lease: Option<i64>,
    #[serde(alias = "rangeEnd", deserialize_with = "base64_bytes")]
    range_end: Bytes,
}

impl IntoMessage for CompareJson {
    type Message = Compare;
    fn into_message(self) -> Result<Compare, JsonError> {
        use compare::TargetUnion;
        let target_union = one_of(
            "Compare",
            vec![
                self.version.map(TargetUnion::Version),
                self.create_revision.map(TargetUnion::CreateRevision),
                self.mod_revision.map(TargetUnion::ModRevision),
                self.value.map(TargetUnion::Value),
                self.lease.map(TargetUnion::Lease),
            ],
        )?;
        Ok(Compare {
            result: self.result,
            target: self.target,
            key: self.key,
            range_end: self.range_end,
            target_union,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RequestOpJson {
    #[serde(alias = "requestRange")]
    request_range: Option<RangeRequestJson>,
    #[serde(alias = "requestPut")]
    request_put: Option<PutRequestJson>,
    #[serde(alias = "requestDeleteRange")]
    request_delete_range: Option<DeleteRangeRequestJson>,
    #[serde(alias = "requestTxn")]
    request_txn: Option<TxnRequestJson>,
}

impl IntoMessage for RequestOpJson {
    type Message = RequestOp;
    fn into_message(self) -> Result<RequestOp, JsonError> {
        use request_op::Request;
        let request = one_of(
            "RequestOp",
            vec![
                self.request_range
                    .map(|range| range.into_message().map(Request::RequestRange)),
                self.request_put.map(|put| put.into_message().map(Request::RequestPut)),
                self.request_delete_range
                    .map(|delete| delete.into_message().map(Request::RequestDeleteRange)),
                self.request_txn.map(|txn| txn.into_message().map(Request::RequestTxn)),
            ],
        )?
        .transpose()?;
        Ok(RequestOp { request })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct TxnRequestJson {
    #[serde(deserialize_with = "list")]
    compare: Vec<CompareJson>,
    #[serde(deserialize_with = "list")]
    success: Vec<RequestOpJson>,
    #[serde(deserialize_with = "list")]
    failure: Vec<RequestOpJson>,
}

fn messages<T: IntoMessage>(items: Vec<T>) -> Result<Vec<T::Message>, JsonError> {
    items.into_iter().map(IntoMessage::into_message).collect()
}

impl IntoMessage for TxnRequestJson {
    type Message = TxnRequest;
    fn into_message(self) -> Result<TxnRequest, JsonError> {
        Ok(TxnRequest {
            compare: messages(self.compare)?,
            success: messages(self.success)?,
            failure: messages(self.failure)?,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct CompactionRequestJson {
    #[serde(deserialize_with = "int64")]
    revision: i64,
    #[serde(deserialize_with = "boolean")]
    physical: bool,
}

impl IntoMessage for CompactionRequestJson {
    type Message = CompactionRequest;
    fn into_message(self) -> Result<CompactionRequest, JsonError> {
        Ok(CompactionRequest {
            revision: self.revision,
            physical: self.physical,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct WatchCreateRequestJson {
    #[serde(deserialize_with = "base64_bytes")]
    key: Bytes,
    #[serde(alias = "rangeEnd", deserialize_with = "base64_bytes")]
    range_end: Bytes,
    #[serde(alias = "startRevision", deserialize_with = "int64")]
    start_revision: i64,
    #[serde(alias = "progressNotify", deserialize_with = "boolean")]
    progress_notify: bool,
    #[serde(deserialize_with = "enumerations::<_, watch_create_request::FilterType>")]
    filters: Vec<i32>,
    #[serde(alias = "prevKv", deserialize_with = "boolean")]
    prev_kv: bool,
    #[serde(alias = "watchId", deserialize_with = "int64")]
    watch_id: i64,
    #[serde(deserialize_with = "boolean")]
    fragment: bool,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct WatchCancelRequestJson {
    #[serde(alias = "watchId", deserialize_with = "int64")]
    watch_id: i64,
}

/// A message without fields: any object (its fields are ignored).
#[derive(Deserialize)]
struct EmptyJson<T> {
    #[serde(skip)]
    message: std::marker::PhantomData<T>,
}

impl<T> Default for EmptyJson<T> {
    fn default() -> Self {
        Self {
            message: std::marker::PhantomData,
        }
    }
}

impl<T: Default> IntoMessage for EmptyJson<T> {
    type Message = T;
    fn into_message(self) -> Result<T, JsonError> {
        Ok(T::default())
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct WatchRequestJson {
    #[serde(alias = "createRequest")]
    create_request: Option<WatchCreateRequestJson>,
    #[serde(alias = "cancelRequest")]
    cancel_request: Option<WatchCancelRequestJson>,
    #[serde(alias = "progressRequest")]
    progress_request: Option<EmptyJson<WatchProgressRequest>>,
}

impl IntoMessage for WatchRequestJson {
    type Message = WatchRequest;
    fn into_message(self) -> Result<WatchRequest, JsonError> {
        use watch_request::RequestUnion;
        let request_union = one_of(
            "WatchRequest",
            vec![
                self.create_request.map(|create| {
                    RequestUnion::CreateRequest(WatchCreateRequest {
                        key: create.key,
                        range_end: create.range_end,
                        start_revision: create.start_revision,
                        progress_notify: create.progress_notify,
                        filters: create.filters,
                        prev_kv: create.prev_kv,
                        watch_id: create.watch_id,
                        fragment: create.fragment,
                    })
                }),
                self.cancel_request.map(|cancel| {
                    RequestUnion::CancelRequest(WatchCancelRequest {
                        watch_id: cancel.watch_id,
                    })
                }),
                self.progress_request
                    .map(|_| RequestUnion::ProgressRequest(WatchProgressRequest {})),
            ],
        )?;
        Ok(WatchRequest { request_union })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct LeaseGrantRequestJson {
    #[serde(rename = "TTL", deserialize_with = "int64")]
    ttl: i64,
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: i64,
}

impl IntoMessage for LeaseGrantRequestJson {
    type Message = LeaseGrantRequest;
    fn into_message(self) -> Result<LeaseGrantRequest, JsonError> {
        Ok(LeaseGrantRequest {
            ttl: self.ttl,
            id: self.id,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct LeaseRevokeRequestJson {
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: i64,
}

impl IntoMessage for LeaseRevokeRequestJson {
    type Message = LeaseRevokeRequest;
    fn into_message(self) -> Result<LeaseRevokeRequest, JsonError> {
        Ok(LeaseRevokeRequest { id: self.id })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct LeaseKeepAliveRequestJson {
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: i64,
}

impl IntoMessage for LeaseKeepAliveRequestJson {
    type Message = LeaseKeepAliveRequest;
    fn into_message(self) -> Result<LeaseKeepAliveRequest, JsonError> {
        Ok(LeaseKeepAliveRequest { id: self.id })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct LeaseTimeToLiveRequestJson {
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: i64,
    #[serde(deserialize_with = "boolean")]
    keys: bool,
}

impl IntoMessage for LeaseTimeToLiveRequestJson {
    type Message = LeaseTimeToLiveRequest;
    fn into_message(self) -> Result<LeaseTimeToLiveRequest, JsonError> {
        Ok(LeaseTimeToLiveRequest {
            id: self.id,
            keys: self.keys,
        })
    }
}

/// A uint64 (member ids use all 64 bits): a number or a string of digits.
fn uint64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct Uint64Visitor;
    impl Visitor<'_> for Uint64Visitor {
        type Value = u64;
        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("an unsigned 64-bit integer (a number or a string of digits)")
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::custom(format!("{value} is out of range for uint64")))
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<u64, E> {
            value
                .parse::<u64>()
                .map_err(|_| E::custom(format!("{value:?} is not a uint64")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
            Ok(0)
        }
    }
    deserializer.deserialize_any(Uint64Visitor)
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AlarmRequestJson {
    #[serde(deserialize_with = "enumeration::<_, alarm_request::AlarmAction>")]
    action: i32,
    #[serde(rename = "memberID", deserialize_with = "uint64")]
    member_id: u64,
    #[serde(deserialize_with = "enumeration::<_, AlarmType>")]
    alarm: i32,
}

impl IntoMessage for AlarmRequestJson {
    type Message = AlarmRequest;
    fn into_message(self) -> Result<AlarmRequest, JsonError> {
        Ok(AlarmRequest {
            action: self.action,
            member_id: self.member_id,
            alarm: self.alarm,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct HashKvRequestJson {
    #[serde(deserialize_with = "int64")]
    revision: i64,
}

impl IntoMessage for HashKvRequestJson {
    type Message = HashKvRequest;
    fn into_message(self) -> Result<HashKvRequest, JsonError> {
        Ok(HashKvRequest {
            revision: self.revision,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct MemberListRequestJson {
    #[serde(deserialize_with = "boolean")]
    linearizable: bool,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct MemberAddRequestJson {
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(rename = "isLearner", deserialize_with = "boolean")]
    is_learner: bool,
}

impl IntoMessage for MemberAddRequestJson {
    type Message = MemberAddRequest;
    fn into_message(self) -> Result<MemberAddRequest, JsonError> {
        Ok(MemberAddRequest {
            peer_ur_ls: self.peer_urls,
            is_learner: self.is_learner,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct MemberUpdateRequestJson {
    #[serde(rename = "ID", deserialize_with = "uint64")]
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
}

impl IntoMessage for MemberUpdateRequestJson {
    type Message = MemberUpdateRequest;
    fn into_message(self) -> Result<MemberUpdateRequest, JsonError> {
        Ok(MemberUpdateRequest {
            id: self.id,
            peer_ur_ls: self.peer_urls,
        })
    }
}

/// A request naming one member (`{"ID": ...}`): MemberRemove, MemberPromote.
#[derive(Deserialize)]
#[serde(default)]
struct MemberIdJson<M> {
    #[serde(rename = "ID", deserialize_with = "uint64")]
    id: u64,
    #[serde(skip)]
    message: std::marker::PhantomData<M>,
}

impl<M> Default for MemberIdJson<M> {
    fn default() -> Self {
        Self {
            id: 0,
            message: std::marker::PhantomData,
        }
    }
}

impl IntoMessage for MemberIdJson<MemberRemoveRequest> {
    type Message = MemberRemoveRequest;
    fn into_message(self) -> Result<MemberRemoveRequest, JsonError> {
        Ok(MemberRemoveRequest { id: self.id })
    }
}

impl IntoMessage for MemberIdJson<MemberPromoteRequest> {
    type Message = MemberPromoteRequest;
    fn into_message(self) -> Result<MemberPromoteRequest, JsonError> {
        Ok(MemberPromoteRequest { id: self.id })
    }
}

impl IntoMessage for MemberListRequestJson {
    type Message = MemberListRequest;
    fn into_message(self) -> Result<MemberListRequest, JsonError> {
        Ok(MemberListRequest {
            linearizable: self.linearizable,
        })
    }
}

// The Auth service's requests. Their field names are the same in the `.proto` file and
// in lowerCamelCase except for `no_password` and `range_end`, and (as jsonpb does) only
// those two take both spellings: `hashedPassword` and `permType` are spelled so in etcd.

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthenticateRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
    #[serde(deserialize_with = "string")]
    password: String,
}

impl IntoMessage for AuthenticateRequestJson {
    type Message = AuthenticateRequest;
    fn into_message(self) -> Result<AuthenticateRequest, JsonError> {
        Ok(AuthenticateRequest {
            name: self.name,
            password: self.password,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct UserAddOptionsJson {
    #[serde(alias = "noPassword", deserialize_with = "boolean")]
    no_password: bool,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthUserAddRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
    #[serde(deserialize_with = "string")]
    password: String,
    options: Option<UserAddOptionsJson>,
    #[serde(rename = "hashedPassword", deserialize_with = "string")]
    hashed_password: String,
}

impl IntoMessage for AuthUserAddRequestJson {
    type Message = AuthUserAddRequest;
    fn into_message(self) -> Result<AuthUserAddRequest, JsonError> {
        Ok(AuthUserAddRequest {
            name: self.name,
            password: self.password,
            options: self.options.map(|options| UserAddOptions {
                no_password: options.no_password,
            }),
            hashed_password: self.hashed_password,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthUserGetRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
}

impl IntoMessage for AuthUserGetRequestJson {
    type Message = AuthUserGetRequest;
    fn into_message(self) -> Result<AuthUserGetRequest, JsonError> {
        Ok(AuthUserGetRequest { name: self.name })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthUserDeleteRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
}

impl IntoMessage for AuthUserDeleteRequestJson {
    type Message = AuthUserDeleteRequest;
    fn into_message(self) -> Result<AuthUserDeleteRequest, JsonError> {
        Ok(AuthUserDeleteRequest { name: self.name })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthUserChangePasswordRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
    #[serde(deserialize_with = "string")]
    password: String,
    #[serde(rename = "hashedPassword", deserialize_with = "string")]
    hashed_password: String,
}

impl IntoMessage for AuthUserChangePasswordRequestJson {
    type Message = AuthUserChangePasswordRequest;
    fn into_message(self) -> Result<AuthUserChangePasswordRequest, JsonError> {
        Ok(AuthUserChangePasswordRequest {
            name: self.name,
            password: self.password,
            hashed_password: self.hashed_password,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthUserGrantRoleRequestJson {
    #[serde(deserialize_with = "string")]
    user: String,
    #[serde(deserialize_with = "string")]
    role: String,
}

impl IntoMessage for AuthUserGrantRoleRequestJson {
    type Message = AuthUserGrantRoleRequest;
    fn into_message(self) -> Result<AuthUserGrantRoleRequest, JsonError> {
        Ok(AuthUserGrantRoleRequest {
            user: self.user,
            role: self.role,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthUserRevokeRoleRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
    #[serde(deserialize_with = "string")]
    role: String,
}

impl IntoMessage for AuthUserRevokeRoleRequestJson {
    type Message = AuthUserRevokeRoleRequest;
    fn into_message(self) -> Result<AuthUserRevokeRoleRequest, JsonError> {
        Ok(AuthUserRevokeRoleRequest {
            name: self.name,
            role: self.role,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthRoleAddRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
}

impl IntoMessage for AuthRoleAddRequestJson {
    type Message = AuthRoleAddRequest;
    fn into_message(self) -> Result<AuthRoleAddRequest, JsonError> {
        Ok(AuthRoleAddRequest { name: self.name })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthRoleGetRequestJson {
    #[serde(deserialize_with = "string")]
    role: String,
}

impl IntoMessage for AuthRoleGetRequestJson {
    type Message = AuthRoleGetRequest;
    fn into_message(self) -> Result<AuthRoleGetRequest, JsonError> {
        Ok(AuthRoleGetRequest { role: self.role })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthRoleDeleteRequestJson {
    #[serde(deserialize_with = "string")]
    role: String,
}

impl IntoMessage for AuthRoleDeleteRequestJson {
    type Message = AuthRoleDeleteRequest;
    fn into_message(self) -> Result<AuthRoleDeleteRequest, JsonError> {
        Ok(AuthRoleDeleteRequest { role: self.role })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct PermissionJson {
    #[serde(rename = "permType", deserialize_with = "enumeration::<_, permission::Type>")]
    perm_type: i32,
    #[serde(deserialize_with = "base64_bytes")]
    key: Bytes,
    #[serde(alias = "rangeEnd", deserialize_with = "base64_bytes")]
    range_end: Bytes,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthRoleGrantPermissionRequestJson {
    #[serde(deserialize_with = "string")]
    name: String,
    perm: Option<PermissionJson>,
}

impl IntoMessage for AuthRoleGrantPermissionRequestJson {
    type Message = AuthRoleGrantPermissionRequest;
    fn into_message(self) -> Result<AuthRoleGrantPermissionRequest, JsonError> {
        Ok(AuthRoleGrantPermissionRequest {
            name: self.name,
            perm: self.perm.map(|perm| Permission {
                perm_type: perm.perm_type,
                key: perm.key,
                range_end: perm.range_end,
            }),
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthRoleRevokePermissionRequestJson {
    #[serde(deserialize_with = "string")]
    role: String,
    #[serde(deserialize_with = "base64_bytes")]
    key: Bytes,
    #[serde(alias = "rangeEnd", deserialize_with = "base64_bytes")]
    range_end: Bytes,
}

impl IntoMessage for AuthRoleRevokePermissionRequestJson {
    type Message = AuthRoleRevokePermissionRequest;
    fn into_message(self) -> Result<AuthRoleRevokePermissionRequest, JsonError> {
        Ok(AuthRoleRevokePermissionRequest {
            role: self.role,
            key: self.key,
            range_end: self.range_end,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Streams of requests

/// Splits a streamed request body into the JSON objects it carries, one after another
/// with whitespace between them (as Go's json.Decoder reads grpc-gateway's streamed
/// requests), without parsing any twice.
#[derive(Default)]
pub struct ObjectSplitter {
    buffer: Vec<u8>,
    /// How far `buffer` has been scanned.
    scanned: usize,
    /// Where the object being scanned starts, once its `{` was seen.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl ObjectSplitter {
    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held for an object not yet complete.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete object, if one has arrived; an error for anything but an object.
    pub fn next_object(&mut self) -> Result<Option<Vec<u8>>, JsonError> {
        while self.scanned < self.buffer.len() {
            let byte = self.buffer[self.scanned];
            self.scanned += 1;
            if self.start.is_none() {
                if byte.is_ascii_whitespace() {
                    continue;
                }
                if byte != b'{' {
                    return Err(JsonError::Invalid(format!(
                        "expected a JSON object, found {:?}",
                        char::from(byte)
                    )));
                }
                self.start = Some(self.scanned - 1);
                self.depth = 1;
                continue;
            }
            if self.in_string {
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        let object = self.buffer[start..self.scanned].to_vec();
                        self.buffer.drain(..self.scanned);
                        self.scanned = 0;
                        return Ok(Some(object));
                    }
                }
                _ => {}
            }
        }
        if self.start.is_none() {
            // Only whitespace so far: nothing to keep.
            self.buffer.clear();
            self.scanned = 0;
        }
        Ok(None)
    }

    /// True if bytes of an unfinished object are held (at the end of the body: an error).
    pub fn has_partial(&self) -> bool {
        self.start.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<'a, T>(message: &'a T) -> String
    where
        Json<'a, T>: Serialize,
    {
        String::from_utf8(to_vec(message).unwrap()).unwrap()
    }

    fn header() -> ResponseHeader {
        ResponseHeader {
            cluster_id: 12585971608760269493,
            member_id: 13847567121247652255,
            revision: 2,
            raft_term: 3,
        }
    }

    fn foo_bar() -> KeyValue {
        KeyValue {
            key: Bytes::from_static(b"foo"),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: Bytes::from_static(b"bar"),
            lease: 0,
        }
    }

    #[test]
    fn a_range_response_reads_as_etcds_documentation_shows_it() {
        let response = RangeResponse {
            header: Some(header()),
            kvs: vec![foo_bar()],
            more: false,
            count: 1,
        };
        // Byte for byte the reply in etcd's gateway guide: uint64 and int64 as strings
        // (cluster ids above i64's range too), base64 bytes, proto field names, lease 0
        // and more=false left out.
        assert_eq!(
            text(&response),
            r#"{"header":{"cluster_id":"12585971608760269493","member_id":"13847567121247652255","revision":"2","raft_term":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        assert_eq!(text(&RangeResponse::default()), "{}");
        assert_eq!(
            text(&PutResponse {
                header: Some(ResponseHeader::default()),
                prev_kv: None
            }),
            r#"{"header":{}}"#
        );
    }

    #[test]
    fn enums_are_written_by_name_and_the_zero_value_is_left_out() {
        let response = WatchResponse {
            header: Some(header()),
            events: vec![
                Event {
                    r#type: event::EventType::Put as i32,
                    kv: Some(foo_bar()),
                    prev_kv: None,
                },
                Event {
                    r#type: event::EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: Bytes::from_static(b"foo"),
                        mod_revision: 3,
                        ..Default::default()
                    }),
                    prev_kv: Some(foo_bar()),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            text(&response),
            r#"{"header":{"cluster_id":"12585971608760269493","member_id":"13847567121247652255","revision":"2","raft_term":"3"},"events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}},{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"3"},"prev_kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}]}"#
        );
        let created = WatchResponse {
            watch_id: 7,
            created: true,
            canceled: true,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            compact_revision: 5,
            ..Default::default()
        };
        assert_eq!(
            text(&created),
            r#"{"watch_id":"7","created":true,"canceled":true,"compact_revision":"5","cancel_reason":"etcdserver: mvcc: required revision has been compacted"}"#
        );
    }

    #[test]
    fn nested_txn_responses_name_their_oneof_member() {
        let bare = |revision| {
            Some(ResponseHeader {
                revision,
                ..Default::default()
            })
        };
        let response = TxnResponse {
            header: Some(header()),
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(response_op::Response::ResponseRange(RangeResponse {
                        header: bare(6),
                        kvs: vec![foo_bar()],
                        more: false,
                        count: 1,
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse {
                        header: bare(6),
                        prev_kv: None,
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                        header: bare(6),
                        deleted: 0,
                        prev_kvs: Vec::new(),
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(TxnResponse {
                        header: bare(6),
                        succeeded: false,
                        responses: vec![ResponseOp {
                            response: Some(response_op::Response::ResponsePut(PutResponse::default())),
                        }],
                    })),
                },
            ],
        };
        assert_eq!(
            text(&response),
            concat!(
                r#"{"header":{"cluster_id":"12585971608760269493","member_id":"13847567121247652255","revision":"2","raft_term":"3"},"succeeded":true,"responses":["#,
                r#"{"response_range":{"header":{"revision":"6"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}},"#,
                r#"{"response_put":{"header":{"revision":"6"}}},"#,
                r#"{"response_delete_range":{"header":{"revision":"6"}}},"#,
                r#"{"response_txn":{"header":{"revision":"6"},"responses":[{"response_put":{}}]}}]}"#
            )
        );
    }

    #[test]
    fn lease_member_and_status_fields_keep_their_proto_spelling() {
        let grant = LeaseGrantResponse {
            header: None,
            id: 7587883129046442010,
            ttl: 30,
            error: String::new(),
        };
        assert_eq!(text(&grant), r#"{"ID":"7587883129046442010","TTL":"30"}"#);
        let ttl = LeaseTimeToLiveResponse {
            header: None,
            id: 1,
            ttl: -1,
            granted_ttl: 0,
            keys: vec![Bytes::from_static(b"foo")],
        };
        assert_eq!(text(&ttl), r#"{"ID":"1","TTL":"-1","keys":["Zm9v"]}"#);
        let leases = LeaseLeasesResponse {
            header: None,
            leases: vec![LeaseStatus { id: 5 }],
        };
        assert_eq!(text(&leases), r#"{"leases":[{"ID":"5"}]}"#);
        let members = MemberListResponse {
            header: None,
            members: vec![Member {
                id: u64::MAX,
                name: "n1".into(),
                peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
                client_ur_ls: Vec::new(),
                is_learner: false,
            }],
        };
        assert_eq!(
            text(&members),
            r#"{"members":[{"ID":"18446744073709551615","name":"n1","peerURLs":["http://127.0.0.1:2380"]}]}"#
        );
        let status = StatusResponse {
            version: "3.5.0".into(),
            db_size: 4096,
            leader: 9,
            raft_index: 10,
            raft_term: 2,
            raft_applied_index: 10,
            errors: vec!["etcdserver: no leader".into()],
            db_size_in_use: 4096,
            ..Default::default()
        };
        assert_eq!(
            text(&status),
            r#"{"version":"3.5.0","dbSize":"4096","leader":"9","raftIndex":"10","raftTerm":"2","raftAppliedIndex":"10","errors":["etcdserver: no leader"],"dbSizeInUse":"4096"}"#
        );
    }

    #[test]
    fn requests_read_proto_names_json_names_strings_numbers_and_enum_names() {
        let request = RangeRequest::from_json(
            br#"{"key":"Zm9v","range_end":"Zm9w","limit":"10","revision":3,"sort_order":"DESCEND","sortTarget":4,"keysOnly":true,"count_only":null,"maxModRevision":"9","unknown":[1,{"x":2}]}"#,
        )
        .unwrap();
        assert_eq!(
            request,
            RangeRequest {
                key: Bytes::from_static(b"foo"),
                range_end: Bytes::from_static(b"fop"),
                limit: 10,
                revision: 3,
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Value as i32,
                keys_only: true,
                max_mod_revision: 9,
                ..Default::default()
            }
        );
        // An empty body (as curl -X POST without -d sends) is the empty message.
        assert_eq!(RangeRequest::from_json(b"").unwrap(), RangeRequest::default());
        assert_eq!(StatusRequest::from_json(b" \n").unwrap(), StatusRequest {});
        assert_eq!(
            StatusRequest::from_json(br#"{"anything":1}"#).unwrap(),
            StatusRequest {}
        );
        let lease = LeaseGrantRequest::from_json(br#"{"TTL": 30, "ID": "9223372036854775807"}"#).unwrap();
        assert_eq!((lease.ttl, lease.id), (30, i64::MAX));
        // Bytes in URL-safe base64 and without padding ("\xfb\xff" and "fo").
        let put = PutRequest::from_json(br#"{"key":"-_8","value":"Zm8","prevKv":true}"#).unwrap();
        assert_eq!(put.key.as_ref(), b"\xfb\xff");
        assert_eq!(put.value.as_ref(), b"fo");
        assert!(put.prev_kv);
        let members = MemberListRequest::from_json(br#"{"linearizable":true}"#).unwrap();
        assert!(members.linearizable);
    }

    #[test]
    fn a_txn_request_reads_as_etcds_documentation_writes_it() {
        let request = TxnRequest::from_json(
            br#"{"compare":[{"version":"4","result":"EQUAL","target":"VERSION","key":"Zm9v"}],"success":[{"requestRange":{"key":"Zm9v"}}],"failure":[{"request_put":{"key":"Zm9v","value":"YmFy"}},{"requestTxn":{"success":[{"request_delete_range":{"key":"Zm9v"}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            request.compare,
            vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: Bytes::from_static(b"foo"),
                range_end: Bytes::new(),
                target_union: Some(compare::TargetUnion::Version(4)),
            }]
        );
        assert!(matches!(
            &request.success[0].request,
            Some(request_op::Request::RequestRange(range)) if range.key.as_ref() == b"foo"
        ));
        assert!(matches!(
            &request.failure[0].request,
            Some(request_op::Request::RequestPut(put)) if put.value.as_ref() == b"bar"
        ));
        let Some(request_op::Request::RequestTxn(nested)) = &request.failure[1].request else {
            panic!("not a nested txn: {:?}", request.failure[1]);
        };
        assert!(matches!(
            &nested.success[0].request,
            Some(request_op::Request::RequestDeleteRange(delete)) if delete.key.as_ref() == b"foo"
        ));
        // A compare's value, and a target left unset.
        let request = TxnRequest::from_json(
            br#"{"compare":[{"target":"VALUE","value":"YmFy","key":"Zm9v","result":"NOT_EQUAL"},{"key":"Zm9v","target":"MOD","result":2}]}"#,
        )
        .unwrap();
        assert_eq!(
            request.compare[0].target_union,
            Some(compare::TargetUnion::Value(Bytes::from_static(b"bar")))
        );
        assert_eq!(request.compare[0].result, compare::CompareResult::NotEqual as i32);
        assert_eq!(request.compare[1].target_union, None);
        assert_eq!(request.compare[1].result, compare::CompareResult::Less as i32);
    }

    #[test]
    fn watch_requests_read_each_member_of_their_oneof() {
        let create = WatchRequest::from_json(
            br#"{"create_request": {"key":"Zm9v","start_revision":"5","filters":["NODELETE"],"prev_kv":true,"progressNotify":true}}"#,
        )
        .unwrap();
        let Some(watch_request::RequestUnion::CreateRequest(create)) = create.request_union else {
            panic!("not a create request");
        };
        assert_eq!(create.key.as_ref(), b"foo");
        assert_eq!(create.start_revision, 5);
        assert_eq!(create.filters, vec![watch_create_request::FilterType::Nodelete as i32]);
        assert!(create.prev_kv && create.progress_notify);
        let cancel = WatchRequest::from_json(br#"{"cancelRequest":{"watch_id":"3"}}"#).unwrap();
        assert_eq!(
            cancel.request_union,
            Some(watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: 3
            }))
        );
        let progress = WatchRequest::from_json(br#"{"progress_request":{}}"#).unwrap();
        assert_eq!(
            progress.request_union,
            Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {}))
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let message = |result: Result<RangeRequest, JsonError>| result.unwrap_err().to_string();
        assert!(message(RangeRequest::from_json(b"{\"key\": ")).contains("EOF"));
        assert!(message(RangeRequest::from_json(b"[1,2]")).contains("invalid type"));
        assert!(message(RangeRequest::from_json(br#"{"key":"not base64!"}"#)).contains("not base64"));
        assert!(message(RangeRequest::from_json(br#"{"limit":"ten"}"#)).contains("not an int64"));
        assert!(message(RangeRequest::from_json(br#"{"limit":1.5}"#)).contains("not an int64"));
        assert!(message(RangeRequest::from_json(br#"{"limit":18446744073709551615}"#)).contains("out of range"));
        assert!(message(RangeRequest::from_json(br#"{"sort_order":"SIDEWAYS"}"#)).contains("SIDEWAYS"));
        assert!(message(RangeRequest::from_json(br#"{"key":"Zm9v","key":"Zm9v"}"#)).contains("duplicate"));
        assert!(message(RangeRequest::from_json(br#"{"serializable":"yes"}"#)).contains("invalid type"));
        let conflict = TxnRequest::from_json(br#"{"success":[{"request_put":{},"request_range":{}}]}"#)
            .unwrap_err()
            .to_string();
        assert!(conflict.contains("oneof"), "{conflict}");
        let conflict = TxnRequest::from_json(br#"{"compare":[{"version":"1","lease":"2"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(conflict.contains("oneof"), "{conflict}");
        // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
        let deep = format!("{}{}", r#"{"success":[{"request_txn":"#.repeat(200), "{}");
        assert!(TxnRequest::from_json(deep.as_bytes()).is_err());
    }

    #[test]
    fn auth_replies_keep_etcds_field_names() {
        let authenticated = AuthenticateResponse {
            header: Some(header()),
            token: "YWxpY2U.3.1700000000000.c2ln".into(),
        };
        assert_eq!(
            text(&authenticated),
            r#"{"header":{"cluster_id":"12585971608760269493","member_id":"13847567121247652255","revision":"2","raft_term":"3"},"token":"YWxpY2U.3.1700000000000.c2ln"}"#
        );
        // authRevision is a uint64: a string; off and revision 0 are left out.
        let status = AuthStatusResponse {
            header: None,
            enabled: true,
            auth_revision: 12,
        };
        assert_eq!(text(&status), r#"{"enabled":true,"authRevision":"12"}"#);
        assert_eq!(text(&AuthStatusResponse::default()), "{}");
        let enabled = AuthEnableResponse {
            header: Some(ResponseHeader {
                revision: 4,
                ..Default::default()
            }),
        };
        assert_eq!(text(&enabled), r#"{"header":{"revision":"4"}}"#);
        assert_eq!(text(&AuthRoleRevokePermissionResponse::default()), "{}");
        let user = AuthUserGetResponse {
            header: None,
            roles: vec!["app-read".into(), "root".into()],
        };
        assert_eq!(text(&user), r#"{"roles":["app-read","root"]}"#);
        let users = AuthUserListResponse {
            header: None,
            users: vec!["alice".into(), "root".into()],
        };
        assert_eq!(text(&users), r#"{"users":["alice","root"]}"#);
        let roles = AuthRoleListResponse {
            header: None,
            roles: vec!["root".into()],
        };
        assert_eq!(text(&roles), r#"{"roles":["root"]}"#);
        // READ is the enum's zero: left out, as jsonpb leaves it.
        let role = AuthRoleGetResponse {
            header: None,
            perm: vec![
                Permission {
                    perm_type: permission::Type::Read as i32,
                    key: Bytes::from_static(b"app/"),
                    range_end: Bytes::from_static(b"app0"),
                },
                Permission {
                    perm_type: permission::Type::Readwrite as i32,
                    key: Bytes::from_static(b"foo"),
                    range_end: Bytes::new(),
                },
                Permission {
                    perm_type: permission::Type::Write as i32,
                    key: Bytes::from_static(b"\0"),
                    range_end: Bytes::from_static(b"\0"),
                },
            ],
        };
        assert_eq!(
            text(&role),
            r#"{"perm":[{"key":"YXBwLw==","range_end":"YXBwMA=="},{"permType":"READWRITE","key":"Zm9v"},{"permType":"WRITE","key":"AA==","range_end":"AA=="}]}"#
        );
    }

    #[test]
    fn auth_requests_read_as_etcds_gateway_reads_them() {
        assert_eq!(
            AuthenticateRequest::from_json(br#"{"name":"alice","password":"alicepw"}"#).unwrap(),
            AuthenticateRequest {
                name: "alice".into(),
                password: "alicepw".into(),
            }
        );
        let add = AuthUserAddRequest::from_json(br#"{"name":"bob","options":{"no_password":true}}"#).unwrap();
        assert_eq!(add.name, "bob");
        assert_eq!(add.options, Some(UserAddOptions { no_password: true }));
        let add = AuthUserAddRequest::from_json(br#"{"name":"bob","options":{"noPassword":true}}"#).unwrap();
        assert_eq!(add.options, Some(UserAddOptions { no_password: true }));
        let add = AuthUserAddRequest::from_json(br#"{"name":"carol","password":"pw","options":null}"#).unwrap();
        assert_eq!((add.password.as_str(), add.options), ("pw", None));
        let add = AuthUserAddRequest::from_json(br#"{"name":"dave","hashedPassword":"$2a$10$abc"}"#).unwrap();
        assert_eq!(add.hashed_password, "$2a$10$abc");
        let change =
            AuthUserChangePasswordRequest::from_json(br#"{"name":"dave","password":"new","hashedPassword":null}"#)
                .unwrap();
        assert_eq!((change.name.as_str(), change.password.as_str()), ("dave", "new"));
        assert!(change.hashed_password.is_empty());
        assert_eq!(
            AuthUserGrantRoleRequest::from_json(br#"{"user":"alice","role":"app"}"#).unwrap(),
            AuthUserGrantRoleRequest {
                user: "alice".into(),
                role: "app".into(),
            }
        );
        assert_eq!(
            AuthUserRevokeRoleRequest::from_json(br#"{"name":"alice","role":"app"}"#).unwrap(),
            AuthUserRevokeRoleRequest {
                name: "alice".into(),
                role: "app".into(),
            }
        );
        assert_eq!(
            AuthUserGetRequest::from_json(br#"{"name":"alice"}"#).unwrap().name,
            "alice"
        );
        assert_eq!(
            AuthUserDeleteRequest::from_json(br#"{"name":"alice"}"#).unwrap().name,
            "alice"
        );
        assert_eq!(AuthRoleAddRequest::from_json(br#"{"name":"app"}"#).unwrap().name, "app");
        assert_eq!(AuthRoleGetRequest::from_json(br#"{"role":"app"}"#).unwrap().role, "app");
        assert_eq!(
            AuthRoleDeleteRequest::from_json(br#"{"role":"app"}"#).unwrap().role,
            "app"
        );
        // Calls without fields take an empty body, or any object.
        assert_eq!(AuthEnableRequest::from_json(b"").unwrap(), AuthEnableRequest {});
        assert_eq!(AuthDisableRequest::from_json(b"{}").unwrap(), AuthDisableRequest {});
        assert_eq!(AuthStatusRequest::from_json(b"").unwrap(), AuthStatusRequest {});
        assert_eq!(AuthUserListRequest::from_json(b"{}").unwrap(), AuthUserListRequest {});
        assert_eq!(AuthRoleListRequest::from_json(b"").unwrap(), AuthRoleListRequest {});

        // A permission: its type by name or number, keys in base64, range_end or rangeEnd.
        let grant = AuthRoleGrantPermissionRequest::from_json(
            br#"{"name":"app","perm":{"permType":"READWRITE","key":"YXBwLw==","range_end":"YXBwMA=="}}"#,
        )
        .unwrap();
        assert_eq!(grant.name, "app");
        assert_eq!(
            grant.perm,
            Some(Permission {
                perm_type: permission::Type::Readwrite as i32,
                key: Bytes::from_static(b"app/"),
                range_end: Bytes::from_static(b"app0"),
            })
        );
        let grant = AuthRoleGrantPermissionRequest::from_json(
            br#"{"name":"app","perm":{"permType":1,"key":"Zm9v","rangeEnd":"AA"}}"#,
        )
        .unwrap();
        let perm = grant.perm.unwrap();
        assert_eq!(perm.perm_type, permission::Type::Write as i32);
        assert_eq!(perm.range_end.as_ref(), b"\0");
        let grant = AuthRoleGrantPermissionRequest::from_json(br#"{"name":"app","perm":{"key":"Zm9v"}}"#).unwrap();
        assert_eq!(grant.perm.unwrap().perm_type, permission::Type::Read as i32);
        assert_eq!(
            AuthRoleGrantPermissionRequest::from_json(br#"{"name":"app"}"#)
                .unwrap()
                .perm,
            None
        );
        assert_eq!(
            AuthRoleRevokePermissionRequest::from_json(br#"{"role":"app","key":"YXBwLw==","rangeEnd":"YXBwMA=="}"#)
                .unwrap(),
            AuthRoleRevokePermissionRequest {
                role: "app".into(),
                key: Bytes::from_static(b"app/"),
                range_end: Bytes::from_static(b"app0"),
            }
        );

        let message = |result: Result<AuthRoleGrantPermissionRequest, JsonError>| result.unwrap_err().to_string();
        let owner = message(AuthRoleGrantPermissionRequest::from_json(
            br#"{"name":"app","perm":{"permType":"OWNER"}}"#,
        ));
        assert!(owner.contains("OWNER") && owner.contains("Permission.Type"), "{owner}");
        assert!(message(AuthRoleGrantPermissionRequest::from_json(br#"{"name":7}"#)).contains("invalid type"));
        assert!(message(AuthRoleGrantPermissionRequest::from_json(br#"{"perm":{"key":"%%"}}"#)).contains("not base64"));
    }

    #[test]
    fn streamed_bodies_split_into_objects_as_they_arrive() {
        let mut splitter = ObjectSplitter::default();
        splitter.push(br#" {"a":"}{\"x"} "#);
        assert_eq!(splitter.next_object().unwrap().unwrap(), br#"{"a":"}{\"x"}"#);
        assert_eq!(splitter.next_object().unwrap(), None);
        assert!(!splitter.has_partial());
        splitter.push(br#"{"b":{"c":[1,"]"]}"#);
        assert_eq!(splitter.next_object().unwrap(), None);
        assert!(splitter.has_partial());
        splitter.push(b"}\n{\"d\":2}");
        assert_eq!(splitter.next_object().unwrap().unwrap(), br#"{"b":{"c":[1,"]"]}}"#);
        assert_eq!(splitter.next_object().unwrap().unwrap(), br#"{"d":2}"#);
        assert_eq!(splitter.next_object().unwrap(), None);
        assert_eq!(splitter.pending_bytes(), 0);
        splitter.push(b"[1]");
        assert!(splitter.next_object().is_err());
    }
}
