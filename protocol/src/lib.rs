//! The one serialization boundary of liaotian.
//!
//! Everything that crosses a process boundary is defined here: the JSON frames a client exchanges with a
//! gateway ([`frame`]), the NATS subjects and headers ([`subject`]), stream `CHAT` ([`stream`]), the
//! MessagePack payload stored in JetStream ([`stored`]), the id newtypes that carry their own
//! validation ([`ids`]), the presence key schema ([`presence`]), the rules and record of private groups ([`group`]), and the conversation list and read state service ([`conv`]), the HTTP envelope and login
//! replies of the services ([`api`]), who may hold a connection ([`access`]), muted conversations ([`mute`]), and the server API's bodies ([`admin`]).
//! This crate does no I/O and depends on no runtime, so every service and test agrees on one definition.

pub mod access;
pub mod admin;
pub mod api;
pub mod control;
pub mod conv;
pub mod frame;
pub mod group;
pub mod history;
pub mod ids;
pub mod mute;
pub mod presence;
pub mod stored;
pub mod stream;
pub mod subject;

pub use frame::{ClientFrame, ErrorCode, FrameError, ServerFrame, Target};
pub use ids::{ClientMsgId, ConnId, FrameId, GroupId, IdError, RoomId, UserId};
pub use stored::StoredMessage;

/// The protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol name of protocol v1 (JSON text frames).
pub const SUBPROTOCOL: &str = "chat.v1";
