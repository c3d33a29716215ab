use super::*;

const LIMITS: SessionLimits = SessionLimits {
    max_inflight: 2,
    max_queued_messages: 3,
    max_queued_bytes: 1000,
    on_queue_full: QueueFullPolicy::DropNewest,
};

fn message(topic: &str, payload: &'static str, qos: QoS) -> Arc<Message> {
    Arc::new(Message::new(topic, payload, qos, false))
}

fn publishes(out: &[Outgoing]) -> Vec<(u16, bool, String)> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Publish { publish, .. } => Some((
                publish.pkid,
                publish.dup,
                String::from_utf8_lossy(&publish.payload).into_owned(),
            )),
            Outgoing::PubRel { .. } => None,
        })
        .collect()
}

#[test]
fn inflight_window_and_acks() {
    let mut session = SessionState::new();
    for payload in ["1", "2", "3"] {
        let queued = session.enqueue(
            message("t", payload, QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            false,
            vec![],
            true,
            &LIMITS,
        );
        assert!(matches!(queued, Enqueued::Queued { .. }));
    }
    let mut out = Vec::new();
    session.poll_outgoing(&LIMITS, usize::MAX, 0, &mut out);
    assert_eq!(
        publishes(&out),
        vec![(1, false, "1".into()), (2, false, "2".into())]
    );
    assert!(!session.has_sendable(&LIMITS), "window of 2 is full");
    assert_eq!(session.puback(2), Acked::Completed { seq: 2 });
    assert_eq!(
        session.puback(2),
        Acked::Unknown,
        "a repeated PUBACK changes nothing"
    );
    assert!(session.has_sendable(&LIMITS));
    out.clear();
    session.poll_outgoing(&LIMITS, usize::MAX, 0, &mut out);
    assert_eq!(publishes(&out), vec![(3, false, "3".into())]);
}

#[test]
fn qos0_passes_the_window_and_is_not_kept_offline() {
    let mut session = SessionState::new();
    let qos0 = message("t", "zero", QoS::AtMostOnce);
    assert_eq!(
        session.enqueue(qos0.clone(), QoS::AtMostOnce, false, vec![], false, &LIMITS),
        Enqueued::Skipped
    );
    assert_eq!(
        session.enqueue(qos0.clone(), QoS::AtMostOnce, false, vec![], true, &LIMITS),
        Enqueued::Queued {
            seq: 1,
            wake: true,
            evicted: vec![]
        }
    );
    assert_eq!(
        session.enqueue(qos0, QoS::AtMostOnce, false, vec![], true, &LIMITS),
        Enqueued::Queued {
            seq: 2,
            wake: false,
            evicted: vec![]
        }
    );
    let mut out = Vec::new();
    session.poll_outgoing(&LIMITS, usize::MAX, 0, &mut out);
    assert_eq!(
        publishes(&out),
        vec![(0, false, "zero".into()), (0, false, "zero".into())]
    );
    assert_eq!(session.inflight().count(), 0);
}

#[test]
fn queue_limits_drop_and_count() {
    let mut session = SessionState::new();
    for _ in 0..3 {
        session.enqueue(
            message("t", "x", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            false,
            vec![],
            false,
            &LIMITS,
        );
    }
    assert_eq!(
        session.enqueue(
            message("t", "x", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            false,
            vec![],
            false,
            &LIMITS
        ),
        Enqueued::Dropped
    );
    assert_eq!(session.dropped(), 1);
    assert!(session.is_dropping());

    let mut small = SessionState::new();
    let bytes = SessionLimits {
        max_queued_bytes: 5,
        ..LIMITS
    };
    let big = Arc::new(Message::new("t", "0123456789", QoS::AtLeastOnce, false));
    assert_eq!(
        small.enqueue(big, QoS::AtLeastOnce, false, vec![], false, &bytes),
        Enqueued::Dropped
    );
    assert!(matches!(
        small.enqueue(
            message("t", "123", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            false,
            vec![],
            false,
            &bytes
        ),
        Enqueued::Queued { .. }
    ));
    assert_eq!(small.queued_bytes(), 4);
}

#[test]
fn resend_in_order_with_dup_and_pubrel() {
    let mut session = SessionState::new();
    let limits = SessionLimits {
        max_inflight: 10,
        ..LIMITS
    };
    session.enqueue(
        message("t", "a", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
        false,
        vec![],
        true,
        &limits,
    );
    session.enqueue(
        message("t", "b", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        false,
        vec![],
        true,
        &limits,
    );
    session.enqueue(
        message("t", "c", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
        false,
        vec![],
        true,
        &limits,
    );
    let mut out = Vec::new();
    session.poll_outgoing(&limits, usize::MAX, 0, &mut out);
    assert_eq!(session.pubrec(1, false), Acked::Released { seq: 1 });
    assert_eq!(
        session.pubrec(1, false),
        Acked::Unknown,
        "PUBREC twice: PUBREL again, no change"
    );
    assert_eq!(
        session.puback(1),
        Acked::WrongKind,
        "wrong ack type for a QoS 2 message"
    );
    out.clear();
    session.resend(0, &mut out);
    assert_eq!(
        out.iter()
            .map(|o| match o {
                Outgoing::PubRel { pkid } => (*pkid, "PUBREL".to_string()),
                Outgoing::Publish { publish, .. } => {
                    assert!(publish.dup);
                    (
                        publish.pkid,
                        String::from_utf8_lossy(&publish.payload).into_owned(),
                    )
                }
            })
            .collect::<Vec<_>>(),
        vec![(1, "PUBREL".into()), (2, "b".into()), (3, "c".into())]
    );
    assert_eq!(session.pubcomp(1), Acked::Completed { seq: 1 });
    assert_eq!(
        session.pubcomp(3),
        Acked::WrongKind,
        "PUBCOMP before PUBREC"
    );
    assert_eq!(
        session.pubcomp(9),
        Acked::Unknown,
        "nothing in flight with that id"
    );
}

#[test]
fn incoming_qos2_is_exactly_once() {
    let mut session = SessionState::new();
    assert!(session.incoming_qos2(7));
    assert!(
        !session.incoming_qos2(7),
        "a duplicate before PUBREL is not routed again"
    );
    assert!(session.incoming_pubrel(7));
    assert!(!session.incoming_pubrel(7));
    assert!(
        session.incoming_qos2(7),
        "after PUBREL the identifier is free again"
    );
}

#[test]
fn packet_ids_skip_zero_and_those_in_flight() {
    let mut session = SessionState::new();
    let limits = SessionLimits {
        max_inflight: 3,
        max_queued_messages: 10,
        max_queued_bytes: 1000,
        on_queue_full: QueueFullPolicy::DropNewest,
    };
    session.restore_inflight(Inflight {
        pkid: 65535,
        delivery: Delivery {
            message: message("t", "old", QoS::AtLeastOnce),
            qos: QoS::AtLeastOnce,
            retain: false,
            seq: 4,
            identifiers: vec![],
        },
        state: InflightState::AwaitingPubAck,
    });
    session.restore_inflight(Inflight {
        pkid: 1,
        delivery: Delivery {
            message: message("t", "older", QoS::AtLeastOnce),
            qos: QoS::AtLeastOnce,
            retain: false,
            seq: 3,
            identifiers: vec![],
        },
        state: InflightState::AwaitingPubAck,
    });
    let queued = session.enqueue(
        message("t", "new", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        false,
        vec![],
        true,
        &limits,
    );
    assert_eq!(
        queued,
        Enqueued::Queued {
            seq: 5,
            wake: true,
            evicted: vec![]
        }
    );
    let mut out = Vec::new();
    session.poll_outgoing(&limits, usize::MAX, 0, &mut out);
    assert_eq!(publishes(&out), vec![(2, false, "new".into())]);
}

#[test]
fn budget_limits_a_batch_but_never_to_nothing() {
    let mut session = SessionState::new();
    let limits = SessionLimits {
        max_inflight: 10,
        max_queued_messages: 10,
        max_queued_bytes: 1000,
        on_queue_full: QueueFullPolicy::DropNewest,
    };
    for _ in 0..3 {
        session.enqueue(
            message("t", "0123456789", QoS::AtMostOnce),
            QoS::AtMostOnce,
            false,
            vec![],
            true,
            &limits,
        );
    }
    let mut out = Vec::new();
    session.poll_outgoing(&limits, 5, 0, &mut out);
    assert_eq!(out.len(), 1);
    session.poll_outgoing(&limits, 22, 0, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(session.queued_len(), 0);
}

#[test]
fn a_refused_pubrec_ends_the_exchange() {
    let mut session = SessionState::new();
    session.enqueue(
        message("t", "a", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
        false,
        vec![],
        true,
        &LIMITS,
    );
    let mut out = Vec::new();
    session.poll_outgoing(&LIMITS, usize::MAX, 0, &mut out);
    assert_eq!(session.pubrec(1, true), Acked::Completed { seq: 1 });
    assert_eq!(session.inflight().count(), 0, "no PUBREL is owed");
    assert_eq!(session.pubrec(1, false), Acked::Unknown);
}

#[test]
fn a_full_queue_makes_connected_publishers_wait_and_absent_ones_follow_the_policy() {
    let full = |policy| {
        let limits = SessionLimits {
            on_queue_full: policy,
            ..LIMITS
        };
        let mut session = SessionState::new();
        for payload in ["1", "2", "3"] {
            session.enqueue(
                message("t", payload, QoS::AtLeastOnce),
                QoS::AtLeastOnce,
                false,
                vec![],
                false,
                &limits,
            );
        }
        (session, limits)
    };
    let one_more = |session: &mut SessionState, qos, online, limits: &SessionLimits| {
        session.enqueue(message("t", "4", qos), qos, false, vec![], online, limits)
    };
    // Connected: QoS 1 and 2 wait whatever the policy, QoS 0 is dropped.
    let (mut session, limits) = full(QueueFullPolicy::DropNewest);
    assert_eq!(
        one_more(&mut session, QoS::AtLeastOnce, true, &limits),
        Enqueued::Full
    );
    assert_eq!(
        one_more(&mut session, QoS::ExactlyOnce, true, &limits),
        Enqueued::Full
    );
    assert_eq!(session.dropped(), 0, "waiting is not dropping");
    assert_eq!(
        one_more(&mut session, QoS::AtMostOnce, true, &limits),
        Enqueued::Dropped
    );
    // Absent: drop_newest, drop_oldest, backpressure.
    assert_eq!(
        one_more(&mut session, QoS::AtLeastOnce, false, &limits),
        Enqueued::Dropped
    );
    let (mut session, limits) = full(QueueFullPolicy::DropOldest);
    assert_eq!(
        one_more(&mut session, QoS::AtLeastOnce, false, &limits),
        Enqueued::Queued {
            seq: 4,
            wake: false,
            evicted: vec![1]
        }
    );
    let payloads: Vec<_> = session
        .queued()
        .map(|d| d.message.payload.clone())
        .collect();
    assert_eq!(payloads, ["2", "3", "4"]);
    assert_eq!(session.dropped(), 1);
    let (mut session, limits) = full(QueueFullPolicy::Backpressure);
    assert_eq!(
        one_more(&mut session, QoS::AtLeastOnce, false, &limits),
        Enqueued::Full
    );
}

#[test]
fn waiters_are_woken_once_a_quarter_of_the_queue_drained() {
    let limits = SessionLimits {
        max_queued_messages: 8,
        max_inflight: 100,
        ..LIMITS
    };
    let mut session = SessionState::new();
    for _ in 0..8 {
        session.enqueue(
            message("t", "x", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            false,
            vec![],
            true,
            &limits,
        );
    }
    assert!(!session.has_room_for_waiters(&limits));
    let mut out = Vec::new();
    session.poll_outgoing(&limits, 1, 0, &mut out);
    assert!(!session.has_room_for_waiters(&limits), "7 of 8 queued");
    session.poll_outgoing(&limits, 1, 0, &mut out);
    assert!(session.has_room_for_waiters(&limits), "6 of 8 queued");
}

fn spill_limits() -> SessionLimits {
    SessionLimits {
        max_inflight: 2,
        max_queued_messages: 4,
        max_queued_bytes: 1000,
        on_queue_full: QueueFullPolicy::DropOldest,
    }
}

fn queue_one(session: &mut SessionState, payload: &str, online: bool) -> Enqueued {
    session.enqueue(
        Arc::new(Message::new(
            "t",
            payload.to_owned(),
            QoS::AtLeastOnce,
            false,
        )),
        QoS::AtLeastOnce,
        false,
        Vec::new(),
        online,
        &spill_limits(),
    )
}

fn delivery(seq: u64, payload: &str) -> Delivery {
    Delivery {
        message: Arc::new(Message::new(
            "t",
            payload.to_owned(),
            QoS::AtLeastOnce,
            false,
        )),
        qos: QoS::AtLeastOnce,
        retain: false,
        seq,
        identifiers: Vec::new(),
    }
}

fn sent_payloads(session: &mut SessionState) -> Vec<String> {
    let mut out = Vec::new();
    session.poll_outgoing(&spill_limits(), usize::MAX, 0, &mut out);
    out.iter()
        .map(|outgoing| match outgoing {
            Outgoing::Publish { publish, .. } => {
                String::from_utf8_lossy(&publish.payload).into_owned()
            }
            Outgoing::PubRel { pkid } => panic!("PUBREL {pkid}"),
        })
        .collect()
}

#[test]
fn a_spilled_queue_keeps_its_place_and_limits_and_sends_nothing_until_read_back() {
    let mut session = SessionState::new();
    queue_one(&mut session, "a", true);
    session.spill();
    assert_eq!(session.queued().count(), 0, "nothing of it in memory");
    assert_eq!((session.queued_len(), session.queued_bytes()), (1, 2));
    queue_one(&mut session, "b", false);
    assert_eq!(
        session.queued().count(),
        0,
        "queued while away: spilled too"
    );
    assert_eq!(session.spilled_through(), Some(2));
    // The client is back; a message routed before the read back comes after the others.
    queue_one(&mut session, "c", true);
    assert!(!session.has_sendable(&spill_limits()));
    assert!(sent_payloads(&mut session).is_empty());
    assert_eq!(
        session.unspill(2, vec![delivery(1, "a"), delivery(2, "b")]),
        Some(0)
    );
    assert_eq!(session.spilled_through(), None);
    assert_eq!((session.queued_len(), session.queued_bytes()), (3, 6));
    let limits = SessionLimits {
        max_inflight: 3,
        ..spill_limits()
    };
    let mut out = Vec::new();
    session.poll_outgoing(&limits, usize::MAX, 0, &mut out);
    let seqs: Vec<u64> = out
        .iter()
        .map(|outgoing| match outgoing {
            Outgoing::Publish { seq, .. } => *seq,
            Outgoing::PubRel { pkid } => panic!("PUBREL {pkid}"),
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[test]
fn a_full_spilled_queue_evicts_its_oldest_and_reads_back_skip_what_is_gone() {
    let mut session = SessionState::new();
    session.spill();
    for payload in ["1", "2", "3", "4"] {
        queue_one(&mut session, payload, false);
    }
    match queue_one(&mut session, "5", false) {
        Enqueued::Queued { seq, evicted, .. } => assert_eq!((seq, evicted), (5, vec![1])),
        other => panic!("{other:?}"),
    }
    assert_eq!(session.queued_len(), 4);
    // Row 3 was lost with a failed write; row 1 was evicted (its delete not yet applied).
    let read = vec![
        delivery(1, "1"),
        delivery(2, "2"),
        delivery(4, "4"),
        delivery(5, "5"),
    ];
    assert_eq!(session.unspill(5, read), Some(1));
    assert_eq!((session.queued_len(), session.queued_bytes()), (3, 6));
    assert_eq!(sent_payloads(&mut session), ["2", "4"]);
}

#[test]
fn a_read_back_older_than_the_spill_changes_nothing() {
    let mut session = SessionState::new();
    session.spill();
    queue_one(&mut session, "1", false);
    queue_one(&mut session, "2", false);
    assert_eq!(session.unspill(1, vec![delivery(1, "1")]), None);
    assert_eq!(session.spilled_through(), Some(2));
    assert!(sent_payloads(&mut session).is_empty());
    assert_eq!(
        session.unspill(2, vec![delivery(1, "1"), delivery(2, "2")]),
        Some(0)
    );
    assert_eq!(sent_payloads(&mut session), ["1", "2"]);
}

#[test]
fn a_restored_queue_is_spilled_until_read_back() {
    let mut session = SessionState::new();
    session.restore_spilled(7, 5);
    session.restore_spilled(9, 5);
    assert_eq!((session.queued_len(), session.queued_bytes()), (2, 10));
    assert_eq!(session.spilled_through(), Some(9));
    match queue_one(&mut session, "x", false) {
        Enqueued::Queued { seq, .. } => assert_eq!(seq, 10, "numbering goes on"),
        other => panic!("{other:?}"),
    }
    assert_eq!(session.spilled_through(), Some(10));
}
