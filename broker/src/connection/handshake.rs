//! The CONNECT handshake: reading the first packet, checking the client, attaching it to its
//! session, and answering with a CONNACK.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::peer::Peer;
use super::{Accepted, Connection, ListenerInfo, LINGER};
use crate::acl::Identity;
use crate::config::AnonymousPolicy;
use crate::context::BrokerContext;
use crate::metrics::LocalCounters;
use crate::persistence::{NotDurable, StoreHandle, StoredDelivery};
use crate::platform::status::Action;
use crate::platform::{Admission, PlatformClient};
use crate::registry::{Attached, Claim, ConnectionSignal, Link, Owner, SessionInner};
use crate::transport::{ClientStream, Transport};
use fieldbridge_mqtt::codec::{
    self, ConnAck, Connect, LastWill, Packet, Properties, Property, ProtocolVersion, ReasonCode,
};
use fieldbridge_mqtt::topic::level_count;

/// Reads the CONNECT (within `connect_timeout`) and hands it to [`handshake`].
pub(super) async fn open(accepted: Box<Accepted>) -> Option<Connection> {
    let Accepted {
        stream,
        peer,
        listener,
        ctx,
        slot,
        upgrade,
    } = *accepted;
    let mut stream = crate::transport::establish(upgrade, stream, peer, &ctx).await?;
    let mut rbuf = BytesMut::new();
    let first = tokio::select! {
        first = timeout(ctx.limits.connect_timeout, read_first_packet(&mut stream, &mut rbuf, ctx.max_packet_size())) => first,
        () = ctx.shutdown.cancelled() => return None,
    };
    let connect = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return None;
        }
        Ok(Err(FirstPacketError::Io(error))) => {
            tracing::debug!(%peer, %error, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(FirstPacketError::Codec(error))) => {
            tracing::info!(%peer, %error, "malformed first packet");
            if let Some(code) = error.connack_code() {
                refuse(&mut stream, code, ProtocolVersion::V311).await;
            }
            return None;
        }
        Ok(Ok(Packet::Connect(connect))) => *connect,
        Ok(Ok(other)) => {
            tracing::info!(%peer, packet = other.name(), "first packet is not CONNECT");
            return None;
        }
    };
    if rbuf.is_empty() {
        // The CONNECT's buffer goes with the packet (its strings are copied below).
        rbuf = BytesMut::new();
    }
    handshake(stream, peer, listener, ctx, slot, connect, rbuf).await
}

enum FirstPacketError {
    Io(io::Error),
    Codec(codec::Error),
}

async fn read_first_packet(
    stream: &mut ClientStream,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Packet, FirstPacketError> {
    loop {
        // A CONNECT is read whatever version it names.
        let first = codec::decode(rbuf, ProtocolVersion::V311, max);
        if let Some(packet) = first.map_err(FirstPacketError::Codec)? {
            return Ok(packet);
        }
        rbuf.reserve(256);
        match stream.read_buf(rbuf).await {
            Ok(0) => return Err(FirstPacketError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(error) => return Err(FirstPacketError::Io(error)),
        }
    }
}

async fn refuse(stream: &mut ClientStream, code: ReasonCode, version: ProtocolVersion) {
    let mut buf = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck::new(false, code));
    if codec::encode(&connack, version, &mut buf).is_ok() {
        let _ = timeout(LINGER, async {
            stream.write_all(&buf).await?;
            stream.flush().await
        })
        .await;
    }
}

/// Why a CONNECT is not accepted.
enum Refusal {
    /// Answered with a CONNACK carrying this return code.
    Answer(ReasonCode),
    /// Closed without an answer.
    Close,
}

/// Where a client comes from, and what its transport proved.
struct Client {
    peer: SocketAddr,
    listener: ListenerInfo,
    transport: Transport,
    /// Authenticated by a TLS client certificate.
    verified: bool,
}

/// A client that passed the checks and is attached to its session.
struct Admitted {
    attached: Attached,
    signal: Arc<ConnectionSignal>,
    will: Option<Box<LastWill>>,
    platform: Option<Box<PlatformClient>>,
    /// MQTT 5: what CONNACK tells the client beyond the defaults.
    connack_properties: Properties,
}

/// Checks a CONNECT and attaches the client to its session; `None` when refused.
async fn handshake(
    mut stream: ClientStream,
    peer: SocketAddr,
    listener: ListenerInfo,
    ctx: Arc<BrokerContext>,
    slot: OwnedSemaphorePermit,
    connect: Connect,
    rbuf: BytesMut,
) -> Option<Connection> {
    let client = Client {
        peer,
        listener,
        transport: stream.transport(),
        verified: stream.client_verified(),
    };
    let peer = Peer::from_connect(&connect, ctx.limits.topic_alias_maximum);
    let admitted = match admit(client, &ctx, connect).await {
        Ok(admitted) => admitted,
        Err(Refusal::Answer(code)) => {
            refuse(&mut stream, code, peer.version).await;
            return None;
        }
        Err(Refusal::Close) => return None,
    };
    let Admitted {
        attached,
        signal,
        will,
        platform,
        connack_properties,
    } = admitted;
    let mut connection = Connection {
        peer,
        stream,
        rbuf,
        wbuf: BytesMut::new(),
        session: attached.session,
        signal,
        will,
        counters: LocalCounters::default(),
        matches: None,
        held: Default::default(),
        ctx,
        _slot: slot,
        platform,
    };
    if let Some(client) = &connection.platform {
        crate::platform::status::publish(&connection.ctx, client, Action::Connect, None, true)
            .await;
    }
    let mut connack = ConnAck::new(attached.session_present, ReasonCode::Success);
    connack.properties = connack_properties;
    connection.write_packet(&Packet::ConnAck(connack));
    if attached.session_present {
        let mut resend = Vec::new();
        let acl = connection.ctx.router.acl.load();
        {
            let mut inner = connection.session.inner.lock();
            let SessionInner {
                state, username, ..
            } = &mut *inner;
            let mut withheld = Vec::new();
            state.resend_where(
                crate::message::unix_now_ms(),
                &mut resend,
                |message| {
                    super::may_read(
                        acl.as_deref(),
                        username.as_deref(),
                        &connection.session,
                        message,
                    )
                },
                &mut withheld,
            );
            connection.forget_withheld(&withheld);
        }
        connection.write_outgoing(resend);
    }
    Some(connection)
}

/// The checks of a CONNECT (platform admission, password, anonymous policy, will), then the
/// attachment to its session, counted as connected.
async fn admit(client: Client, ctx: &BrokerContext, connect: Connect) -> Result<Admitted, Refusal> {
    let Client {
        peer,
        listener,
        transport,
        mut verified,
    } = client;
    let Connect {
        protocol,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    } = connect;
    let v5 = protocol.is_v5();
    if properties.authentication_method().is_some() {
        tracing::info!(%peer, %client_id, "enhanced authentication is not supported");
        return Err(Refusal::Answer(ReasonCode::BadAuthenticationMethod));
    }
    // Built in one allocation: a list grown push by push leaves short-lived blocks
    // between each connection's long-lived ones, which idle connections pay for.
    let mut connack_properties = if v5 {
        Properties::with_capacity(CONNACK_PROPERTIES)
    } else {
        Properties::new()
    };
    let assigned = client_id.is_empty();
    let client_id = if assigned {
        // MQTT 5 lets any session have a broker-assigned id (it says which one), 3.1.1
        // only one that ends with its connection.
        if !clean_session && !v5 {
            tracing::info!(%peer, "empty client id with clean session 0 refused");
            return Err(Refusal::Answer(ReasonCode::ClientIdentifierNotValid));
        }
        let id = ByteString::from(format!("auto-{:016x}", rand::thread_rng().gen::<u64>()));
        if v5 {
            connack_properties.push(Property::AssignedClientIdentifier(id.clone()));
        }
        id
    } else {
        // Kept for the session's life: not as a slice pinning the CONNECT's read buffer.
        ByteString::from(&*client_id)
    };
    let expiry = session_expiry(
        v5,
        clean_session,
        &properties,
        ctx.limits.max_session_expiry,
    );
    if v5 && properties.session_expiry_interval().copied().unwrap_or(0) != expiry {
        connack_properties.push(Property::SessionExpiryInterval(expiry));
    }
    let username = username.map(|name| ByteString::from(&*name));
    let will = will.map(|will| {
        Box::new(LastWill {
            topic: ByteString::from(&*will.topic),
            payload: bytes::Bytes::copy_from_slice(&will.payload),
            properties: crate::message::detached_properties(&will.properties),
            ..will
        })
    });
    // Refused like a will whose payload exceeds max_payload, and before the platform
    // rewrites the topic: the limit is on what the client sent.
    if let Some(levels) = will
        .as_ref()
        .map(|will| level_count(&will.topic))
        .filter(|&levels| levels > ctx.limits.max_topic_levels)
    {
        tracing::info!(%peer, %client_id, levels, "will topic exceeds max_topic_levels");
        return Err(Refusal::Close);
    }
    // What a failed login is counted against, besides the address: the user name, or
    // the client id on the platform (its credentials belong to it).
    let login_key = match &ctx.platform {
        Some(platform_mode) if platform_mode.authenticates() => Some(client_id.clone()),
        Some(_) => None,
        None => username.clone().filter(|_| ctx.passwords.load().is_some()),
    };
    if let Some(key) = &login_key {
        if let Some(wait) = ctx.logins.blocked(peer.ip(), key, Instant::now()) {
            if let Some(held_back) = ctx.login_refusals.admit() {
                tracing::warn!(%peer, %client_id, user = %key, retry_in = ?wait, held_back, "login refused without a check: too many failed logins from this address or for this user name");
            }
            return Err(Refusal::Answer(ReasonCode::BadUserNameOrPassword));
        }
    }
    let mut platform = None;
    let mut owner = match &username {
        Some(user) => Owner::User(user.clone()),
        None => Owner::Anonymous,
    };
    let (client_id, clean_session, will) = match &ctx.platform {
        None => (client_id, clean_session, will),
        Some(platform_mode) => {
            let admission = Admission {
                client_id: &client_id,
                username: username.as_deref(),
                password: password.as_deref(),
                will,
                clean_session,
                peer,
                local: listener.local,
                transport,
            };
            match platform_mode.admit(admission).await {
                Ok(admitted) => {
                    verified |= admitted.authenticated;
                    if let Some(key) = login_key.as_deref().filter(|_| admitted.authenticated) {
                        ctx.logins.succeeded(key);
                    }
                    // Platform credentials belong to a client id, not to a user name
                    // (every device connects as the same one); quickstart has none.
                    owner = if admitted.authenticated {
                        Owner::Client(client_id.clone())
                    } else {
                        Owner::Anonymous
                    };
                    platform = Some(admitted.client);
                    (admitted.session_name, admitted.clean_session, admitted.will)
                }
                Err(refused) => {
                    if let Some(key) = login_key
                        .as_deref()
                        .filter(|_| refused.code == ReasonCode::BadUserNameOrPassword)
                    {
                        ctx.logins.failed(peer.ip(), key, Instant::now());
                    }
                    tracing::info!(%peer, %client_id, reason = %refused.reason, "platform client refused");
                    return Err(Refusal::Answer(refused.code));
                }
            }
        }
    };

    let authenticated = match (ctx.passwords.load_full(), &username) {
        (Some(passwords), Some(user)) => {
            if !check_password(ctx, passwords, user.clone(), password.unwrap_or_default()).await {
                ctx.logins.failed(peer.ip(), user, Instant::now());
                tracing::info!(%peer, %client_id, user = %user, "bad user name or password");
                return Err(Refusal::Answer(ReasonCode::BadUserNameOrPassword));
            }
            ctx.logins.succeeded(user);
            true
        }
        _ => false,
    };
    let anonymous_allowed = match ctx.anonymous {
        AnonymousPolicy::Always => true,
        AnonymousPolicy::Never => false,
        AnonymousPolicy::Loopback => listener.loopback,
    };
    if !verified && !authenticated && !anonymous_allowed {
        tracing::info!(%peer, %client_id, listener = %listener.local, "anonymous client refused");
        return Err(Refusal::Answer(ReasonCode::NotAuthorized));
    }
    if let (Some(acl), Some(will)) = (ctx.router.acl.load().as_deref(), &will) {
        let who = Identity {
            username: username.as_deref(),
            client_id: &client_id,
        };
        if !acl.can_publish(who, &will.topic) {
            tracing::info!(%peer, %client_id, topic = %will.topic, "will topic not allowed by the ACL");
            return Err(Refusal::Answer(ReasonCode::NotAuthorized));
        }
    }
    if will
        .as_ref()
        .is_some_and(|will| will.payload.len() > ctx.limits.max_payload)
    {
        tracing::info!(%peer, %client_id, "will payload exceeds max_payload");
        return Err(Refusal::Close);
    }

    let granted_keep_alive = granted_keepalive(keep_alive, ctx.limits.max_keepalive);
    if v5 && granted_keep_alive != keep_alive {
        connack_properties.push(Property::ServerKeepAlive(granted_keep_alive));
    }
    let signal = Arc::new(ConnectionSignal::new(
        keepalive_timeout(keep_alive, ctx.limits.max_keepalive),
        ctx.now_ms(),
    ));
    let link = Link {
        signal: signal.clone(),
    };
    // A replaced session's deletion and the new session's record.
    let since = ctx.router.store.as_ref().map(StoreHandle::mark);
    let permit = match &ctx.router.store {
        Some(store) => Some(store.reserve(2).await.map_err(|_| Refusal::Close)?),
        None => None,
    };
    // User names are not secret (passwords and tokens are never logged).
    let user = username.clone().unwrap_or_default();
    let claim = Claim {
        client_id: client_id.clone(),
        clean_session,
        expiry,
        link,
        username,
        owner,
    };
    let attached = ctx
        .registry
        .attach(claim, &ctx.router.subscriptions, permit)
        .map_err(|error| {
            tracing::warn!(%peer, %client_id, %error, "connection refused");
            Refusal::Answer(ReasonCode::ServerUnavailable)
        })?;
    if attached.replaced_foreign {
        tracing::info!(%peer, %client_id, %user, "the client id's persistent session belonged to another user: replaced by a fresh one");
    }
    if let (Some(store), Some(since)) = (&ctx.router.store, since) {
        // A CONNACK promises a session that outlives a restart: its record first.
        if attached.session.persistent && store.barrier_since(since).await.is_err() {
            attached.session.inner.lock().leave(
                &signal,
                crate::message::unix_now_ms(),
                attached.session.persistent,
            );
            tracing::info!(%peer, %client_id, "connection refused: its session could not be stored");
            return Err(Refusal::Answer(ReasonCode::ServerUnavailable));
        }
        if read_back_queue(store, &attached, &signal).await.is_err() {
            attached.session.inner.lock().leave(
                &signal,
                crate::message::unix_now_ms(),
                attached.session.persistent,
            );
            tracing::info!(%peer, %client_id, "connection refused: its queued messages could not be read");
            return Err(Refusal::Answer(ReasonCode::ServerUnavailable));
        }
    }
    ctx.metrics
        .clients_connected
        .fetch_add(1, Ordering::Relaxed);
    attached
        .session
        .inner
        .lock()
        .state
        .set_receive_maximum(properties.receive_maximum().copied());
    if v5 {
        server_properties(ctx, &properties, &client_id, &mut connack_properties);
    }
    tracing::debug!(%peer, %client_id, ?protocol, clean_session, keep_alive, expiry, %user, session_present = attached.session_present, "client connected");
    Ok(Admitted {
        attached,
        signal,
        will,
        platform,
        connack_properties,
    })
}

/// Reads the messages a resumed session queued while its client was away back from the
/// database (they were kept there, not in memory), before anything is sent to the client.
async fn read_back_queue(
    store: &StoreHandle,
    attached: &Attached,
    signal: &Arc<ConnectionSignal>,
) -> Result<(), NotDurable> {
    let session = &attached.session;
    // Messages spilled while this read was under way (the client came and went again
    // meanwhile) need another.
    loop {
        let Some(through) = session.inner.lock().state.spilled_through() else {
            return Ok(());
        };
        let read = store.read_queue(session.client_id.clone(), through).await?;
        let read = read
            .into_iter()
            .map(StoredDelivery::into_delivery)
            .collect();
        let mut inner = session.inner.lock();
        if !inner.is_linked_to(signal) {
            // Taken over: the connection that has it now reads it.
            return Ok(());
        }
        if let Some(missing) = inner.state.unspill(through, read) {
            if missing > 0 {
                tracing::warn!(client_id = %session.client_id, missing, "queued messages missing from the persistence database (a write had failed): not sent");
            }
            return Ok(());
        }
    }
}

/// The Session Expiry Interval granted, in seconds: MQTT 5's as asked, 3.1.1's clean
/// session as 0 (ends with the connection) or forever; capped by `max_session_expiry`.
fn session_expiry(
    v5: bool,
    clean_session: bool,
    properties: &Properties,
    max: Option<fieldbridge_service::units::Duration>,
) -> u32 {
    let asked = match (v5, clean_session) {
        (true, _) => properties.session_expiry_interval().copied().unwrap_or(0),
        (false, true) => 0,
        (false, false) => u32::MAX,
    };
    let cap = max.map_or(u32::MAX, |max| {
        u32::try_from(max.get().as_secs()).unwrap_or(u32::MAX)
    });
    asked.min(cap)
}

/// The most properties a CONNACK carries: assigned client id, session expiry, server
/// keepalive and the [`server_properties`].
const CONNACK_PROPERTIES: usize = 3 + 8;

/// What CONNACK tells an MQTT 5 client about the broker: its limits, and what it
/// supports (all of the optional features, said outright).
fn server_properties(
    ctx: &BrokerContext,
    asked: &Properties,
    client_id: &str,
    out: &mut Properties,
) {
    let limits = &ctx.limits;
    out.push(Property::ReceiveMaximum(limits.receive_maximum));
    out.push(Property::MaximumPacketSize(
        u32::try_from(ctx.max_packet_size()).unwrap_or(u32::MAX),
    ));
    out.push(Property::TopicAliasMaximum(limits.topic_alias_maximum));
    out.push(Property::RetainAvailable(1));
    out.push(Property::WildcardSubscriptionAvailable(1));
    out.push(Property::SubscriptionIdentifierAvailable(1));
    out.push(Property::SharedSubscriptionAvailable(1));
    if let (Some(1), Some(prefix)) = (
        asked.request_response_information(),
        &ctx.response_information,
    ) {
        out.push(Property::ResponseInformation(ByteString::from(format!(
            "{prefix}{client_id}/"
        ))));
    }
}

/// The keepalive the broker holds a client to, in seconds: what it asked, up to
/// `max_keepalive` (which also replaces 0 when it is below the protocol's maximum).
fn granted_keepalive(requested: u16, max: u16) -> u16 {
    match requested {
        0 if max == u16::MAX => 0,
        0 => max,
        requested => requested.min(max),
    }
}

/// When a silent client is dropped: 1.5 times its keepalive, capped by `max_keepalive`
/// (which also applies to clients asking for none when it is configured below the
/// protocol maximum). `None`: never.
fn keepalive_timeout(requested: u16, max: u16) -> Option<Duration> {
    match granted_keepalive(requested, max) {
        0 => None,
        seconds => Some(Duration::from_millis(u64::from(seconds) * 1500)),
    }
}

async fn check_password(
    ctx: &BrokerContext,
    passwords: Arc<crate::auth::PasswordFile>,
    user: ByteString,
    password: bytes::Bytes,
) -> bool {
    let Ok(_slot) = ctx.password_checks.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || passwords.verify(&user, &password))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_is_one_and_a_half_times_capped() {
        assert_eq!(keepalive_timeout(0, u16::MAX), None);
        assert_eq!(
            keepalive_timeout(10, u16::MAX),
            Some(Duration::from_secs(15))
        );
        assert_eq!(keepalive_timeout(100, 20), Some(Duration::from_secs(30)));
        assert_eq!(keepalive_timeout(0, 20), Some(Duration::from_secs(30)));
        assert_eq!(keepalive_timeout(1, 20), Some(Duration::from_millis(1500)));
    }
}
