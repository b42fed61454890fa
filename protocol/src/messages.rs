//! Messages exchanged between neighbouring nodes over an edge.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::Signature;
use crate::types::{
    ChannelId, FeePayment, RequestHeader, RequestId, SignedResponse, SignedSeverNotice,
    SignedUpdate,
};
use crate::wire::{self, WireError, MAX_FRAME_LEN, PROTOCOL_VERSION};

/// A request travelling one hop: header, the payer-signed payment, and the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMsg {
    /// The header (client-signed core + this hop's budget).
    pub header: RequestHeader,
    /// The payment for this hop and everything after it.
    pub payment: SignedUpdate,
    /// The request body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Why a receiver refused a request after taking its (valid) payment; it refunds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The payment does not cover the remaining path cost.
    AmountTooSmall,
    /// The budget does not equal twice the remaining one-way latency.
    BudgetMismatch,
    /// The late-fee rate exceeds what an edge on the route accepts.
    FeeRateTooHigh,
    /// The route is malformed or names an edge this node does not know.
    RouteInvalid,
    /// The client's signature or the body hash does not check out.
    BadRequest,
    /// A request with this id is already in flight here.
    Duplicate,
    /// The node is at its in-flight limit.
    Overloaded,
}

/// Round-trip measurement carried on syncs: the peer's last `sent_at_ms` and how
/// long it was held before this reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// The `sent_at_ms` being echoed (the original sender's clock).
    pub sent_at_ms: u64,
    /// Time between receiving it and sending this echo.
    pub held_ms: u64,
}

/// The lane a message travels on between two neighbours (a transport stream).
///
/// Frames on one lane arrive in the order they were sent; frames on different lanes
/// may overtake each other. Every message whose order matters to the receiver goes on
/// [`Lane::Control`]: each direction of a channel is one chain of signed updates that
/// the receiver takes strictly in sequence (payments, refunds and late fees), a
/// `Reestablish` opens a connection, and a proof or fee-less sync carries nothing a
/// body could delay. Only a fee-less [`Message::Response`] of at least
/// [`BULK_BODY`] bytes of body goes on [`Lane::Bulk`]: it carries no update, answers
/// exactly one request, and its late fee, if any, travels ahead of it on the control
/// lane as a [`Message::LateFee`]. So a MiB response never holds back an ack, a sync,
/// a small response or the next request. (A large *request* body stays on the control
/// lane: its payment is one link of the update chain, and the updates after it could
/// not be taken before it anyway.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Ordered traffic: every update, every control message, small bodies. Sent first.
    Control,
    /// Large fee-less response bodies, interleaved behind the control lane.
    Bulk,
}

impl Lane {
    /// The transport stream number of this lane.
    pub fn stream(self) -> u32 {
        match self {
            Lane::Control => 0,
            Lane::Bulk => 1,
        }
    }
}

/// Response bodies at least this long travel on [`Lane::Bulk`] (and a late one pays
/// its final fee in a separate [`Message::LateFee`] ahead of it).
pub const BULK_BODY: usize = 16 * 1024;

/// The most requests a [`Message::Reestablish`] may await (65,536 ids of 16 bytes fit
/// one frame), whatever either end's configuration: an honest node never keeps more
/// than this in flight over one channel downstream (see
/// `EngineConfig::max_in_flight_per_peer`), so its `Reestablish` is never refused for
/// its length.
pub const MAX_AWAITING: usize = 1 << 16;

/// The most proofs one [`Message::Sync`] carries (policy `next_sync`). A proof is 172 bytes
/// on the wire, so 512 of them take 86 KiB, within the 128 KiB a sync keeps beside
/// the late-fee items of every request a peer may have in flight. Proofs past it leave
/// right after the sync, each as its own [`Message::Proof`], so a sever that ends
/// thousands of requests never makes a sync larger than a frame.
pub const MAX_SYNC_PROOFS: usize = 512;

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Liveness probe used by transports and tests; the engine ignores it.
    Ping {
        /// Arbitrary.
        nonce: u64,
    },
    /// A paid request.
    Request(Box<RequestMsg>),
    /// The payee's countersignature of update `seq` on `channel` (its acknowledgement).
    Ack {
        /// The channel.
        channel: ChannelId,
        /// The acknowledged update's sequence number (in the sender-of-ack's incoming direction).
        seq: u64,
        /// Signature over [`crate::types::AckOf`] the update.
        sig: Signature,
    },
    /// A refused request, refunded in full.
    Reject {
        /// The refused request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
        /// The refund, signed by the refusing node.
        refund: SignedUpdate,
    },
    /// The server's signed response travelling back.
    Response {
        /// The request answered.
        request: RequestId,
        /// The server's signature over (request, body hash).
        response: SignedResponse,
        /// The response body, shared: the copy a node keeps for retransmission and the
        /// one it sends are the same bytes, and, decoded by [`decode_frame_shared`], the
        /// bytes of the frame it arrived in.
        #[serde(with = "crate::wire::shared")]
        body: Bytes,
        /// Final late fee for this request, when the response is late.
        fee: Option<FeePayment>,
    },
    /// Proof that an edge on the request's route is severed.
    Proof {
        /// The request it answers.
        request: RequestId,
        /// The signed severing notice.
        notice: SignedSeverNotice,
        /// Final late fee for this request, when the proof is late.
        fee: Option<FeePayment>,
    },
    /// The periodic sync of an edge: heartbeat, late fees, queued proofs.
    Sync {
        /// The edge.
        channel: ChannelId,
        /// Sender's clock.
        sent_at_ms: u64,
        /// Echo of the peer's last sync, for latency observation.
        echo: Option<Echo>,
        /// Late fees owed to the receiver up to `sent_at_ms`.
        fee: Option<FeePayment>,
        /// Proofs held back for this sync (forwarding policy `next_sync`).
        proofs: Vec<(RequestId, SignedSeverNotice)>,
    },
    /// Sent on (re)connection: what each side holds, so the other retransmits the rest.
    Reestablish {
        /// The edge.
        channel: ChannelId,
        /// The highest update seq the sender holds from the receiver.
        received_seq: u64,
        /// The highest update seq the sender has signed towards the receiver.
        sent_seq: u64,
        /// Requests the sender still awaits a response or proof for from the receiver;
        /// the receiver resends the closing message of any it has already answered.
        awaiting: Vec<RequestId>,
    },
    /// Courtesy notice to the peer of an edge the sender has severed.
    Severed {
        /// The signed notice.
        notice: SignedSeverNotice,
    },
    /// A late-fee payment on its own. A response or proof that pays its request's
    /// final late fee is kept for retransmission as this, so that a response body is
    /// never persisted or held twice: the response itself is kept (durably) among the
    /// closings, and resent from there to a peer that reconnects awaiting it.
    LateFee {
        /// The edge.
        channel: ChannelId,
        /// The payment.
        fee: FeePayment,
    },
}

impl Message {
    /// Checks, ahead of the engine and on the caller's thread, every signature in this
    /// message that needs no channel state and that the engine of node `me` will check:
    /// payments, refunds and fee payments (signed by their payer), the client's request
    /// signature when `me` is the server (relays do not check it), and severing
    /// notices. The engine still checks everything; signatures verified here make its
    /// checks lookups (see [`crate::crypto::preverify`]). This is how a node spreads
    /// signature work over its cores. Returns how many verified.
    #[cfg(feature = "crypto")]
    pub fn preverify(
        &self,
        deployment: &crate::crypto::Deployment,
        me: &crate::crypto::NodeId,
    ) -> usize {
        use crate::crypto::preverify;
        let mut ok = 0usize;
        let mut count = |verified: bool| ok = ok.saturating_add(usize::from(verified));
        // Updates are signed in batches: the first of a batch costs a verification,
        // the rest (here or in the engine) a lookup.
        let update = |u: &SignedUpdate| {
            u.batch().is_some_and(|b| {
                crate::crypto::verify_cached(deployment, &u.update.payer, &b, &u.sig).is_ok()
            })
        };
        let notice =
            |n: &SignedSeverNotice| preverify(deployment, &n.notice.severer, &n.notice, &n.sig);
        let fee = |f: &Option<FeePayment>| f.as_ref().is_some_and(|f| update(&f.update));
        match self {
            Message::Request(r) => {
                let core = &r.header.core;
                count(update(&r.payment));
                if core.server == *me {
                    count(r.header.client_batch().is_some_and(|b| {
                        crate::crypto::verify_cached(
                            deployment,
                            &core.client,
                            &b,
                            &r.header.client_sig,
                        )
                        .is_ok()
                    }));
                }
            }
            Message::Reject { refund, .. } => count(update(refund)),
            Message::Response { fee: f, .. } => count(fee(f)),
            Message::Proof {
                notice: n, fee: f, ..
            } => {
                count(notice(n));
                count(fee(f));
            }
            Message::Sync { fee: f, proofs, .. } => {
                count(fee(f));
                for (_, n) in proofs {
                    count(notice(n));
                }
            }
            Message::Severed { notice: n } => count(notice(n)),
            Message::LateFee { fee: f, .. } => count(update(&f.update)),
            Message::Ping { .. } | Message::Ack { .. } | Message::Reestablish { .. } => {}
        }
        ok
    }

    /// Calls `f` on every signed channel update this message carries (a payment, a
    /// refund or a late-fee payment).
    pub fn for_each_update_mut(&mut self, mut f: impl FnMut(&mut SignedUpdate)) {
        match self {
            Message::Request(r) => f(&mut r.payment),
            Message::Reject { refund, .. } => f(refund),
            Message::Response { fee, .. }
            | Message::Proof { fee, .. }
            | Message::Sync { fee, .. } => {
                if let Some(fee) = fee {
                    f(&mut fee.update);
                }
            }
            Message::LateFee { fee, .. } => f(&mut fee.update),
            Message::Ping { .. }
            | Message::Ack { .. }
            | Message::Reestablish { .. }
            | Message::Severed { .. } => {}
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Request(_) => "request",
            Message::Ack { .. } => "ack",
            Message::Reject { .. } => "reject",
            Message::Response { .. } => "response",
            Message::Proof { .. } => "proof",
            Message::Sync { .. } => "sync",
            Message::Reestablish { .. } => "reestablish",
            Message::Severed { .. } => "severed",
            Message::LateFee { .. } => "late_fee",
        }
    }

    /// The lane this message travels on (see [`Lane`]).
    pub fn lane(&self) -> Lane {
        match self {
            Message::Response {
                fee: None, body, ..
            } if body.len() >= BULK_BODY => Lane::Bulk,
            _ => Lane::Control,
        }
    }

    /// The body a node sends and logs as a part of its own, from the buffer it holds,
    /// rather than copying it: a response body of [`wire::SHARE_MIN`] bytes or more.
    pub fn large_body(&self) -> Option<&Bytes> {
        match self {
            Message::Response { body, .. } if body.len() >= wire::SHARE_MIN => Some(body),
            _ => None,
        }
    }

    /// Whether this message carries a signed channel update (and so is retransmitted
    /// from the channel's unacknowledged set after a reconnect).
    pub fn carries_update(&self) -> bool {
        match self {
            Message::Request(_) | Message::Reject { .. } | Message::LateFee { .. } => true,
            Message::Response { fee, .. }
            | Message::Proof { fee, .. }
            | Message::Sync { fee, .. } => fee.is_some(),
            _ => false,
        }
    }
}

// ----------------------------------------------------------------- frames

#[derive(Serialize, Deserialize)]
/// The frame envelope: the protocol version first, so it is read before the body.
struct Envelope<M> {
    version: u16,
    message: M,
}

/// Encodes a message into a frame: `{version, message}`.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, WireError> {
    let bytes = wire::encode(&Envelope {
        version: PROTOCOL_VERSION,
        message,
    })?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(bytes)
}

/// Encodes a message into a frame as parts, their bytes joined being
/// [`encode_frame`]'s: a response body of [`wire::SHARE_MIN`] bytes or more is a part
/// of its own, the very buffer the message holds (at a relay, a slice of the frame it
/// arrived in), and the rest of the message is encoded around it. So a body is never
/// copied on its way through a node.
pub fn encode_frame_parts(message: &Message) -> Result<Vec<Bytes>, WireError> {
    let Some(body) = message.large_body() else {
        return encode_frame(message).map(|f| vec![Bytes::from(f)]);
    };
    let mut parts = Vec::with_capacity(3);
    let mut buf = Vec::with_capacity(1024);
    wire::encode_splicing(
        &Envelope {
            version: PROTOCOL_VERSION,
            message,
        },
        &mut std::collections::VecDeque::from([body.clone()]),
        &mut buf,
        &mut |buf, body| {
            parts.push(Bytes::from(std::mem::take(buf)));
            parts.push(body);
        },
    )?;
    if !buf.is_empty() {
        parts.push(Bytes::from(buf));
    }
    let len = parts.iter().map(Bytes::len).sum::<usize>();
    if len > MAX_FRAME_LEN {
        return Err(WireError::Oversized {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(parts)
}

/// Refuses a frame too long or of another protocol version, before its body is read.
fn check_version(bytes: &[u8]) -> Result<(), WireError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let version = bytes
        .get(..2)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .ok_or_else(|| WireError::Malformed("frame shorter than its version".into()))?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion { got: version });
    }
    Ok(())
}

/// Decodes a frame. The version is checked before the message body is decoded, so a
/// peer speaking a newer version gets a clear error rather than a parse failure.
pub fn decode_frame(bytes: &[u8]) -> Result<Message, WireError> {
    check_version(bytes)?;
    let env: Envelope<Message> = wire::decode(bytes)?;
    Ok(env.message)
}

/// [`decode_frame`] from a shared buffer: a large response body is a slice of `frame`
/// rather than a copy (see [`wire::decode_shared`]).
pub fn decode_frame_shared(frame: &Bytes) -> Result<Message, WireError> {
    check_version(frame)?;
    let env: Envelope<Message> = wire::decode_shared(frame)?;
    Ok(env.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: usize) -> Message {
        use crate::merkle::MerkleProof;
        use crate::types::ResponseBody;
        let request = RequestId([7; 16]);
        Message::Response {
            request,
            response: SignedResponse {
                body: ResponseBody {
                    request,
                    body_hash: crate::Hash::of_body(&vec![3; body]),
                    body_len: body as u64,
                },
                proof: MerkleProof {
                    leaves: 1,
                    index: 0,
                    siblings: Vec::new(),
                },
                sig: crate::crypto::Signature([9; 64]),
            },
            body: vec![3; body].into(),
            fee: None,
        }
    }

    /// A large response body decoded from a shared frame is a slice of it (no copy);
    /// a small one is a copy (so a small kept body never holds a receive buffer). The
    /// encoding is a plain byte string either way, and every decoder reads the same
    /// message.
    #[test]
    fn a_large_body_is_a_slice_of_its_frame_and_a_small_one_a_copy() {
        for (len, shared) in [
            (wire::SHARE_MIN, true),
            (wire::SHARE_MIN - 1, false),
            (0, false),
        ] {
            let m = response(len);
            let frame = Bytes::from(encode_frame(&m).unwrap());
            assert_eq!(decode_frame(&frame).unwrap(), m);
            let got = decode_frame_shared(&frame).unwrap();
            assert_eq!(got, m);
            let Message::Response { body, .. } = got else {
                panic!("not a response");
            };
            let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
            assert_eq!(
                range.contains(&(body.as_ptr() as usize)),
                shared && len > 0,
                "body of {len} bytes"
            );
            // The field's encoding is that of a plain `Bytes`: a length and the bytes.
            let plain = wire::encode(&Bytes::from(vec![3; len])).unwrap();
            assert!(frame.windows(plain.len()).any(|w| w == plain.as_slice()));
            // And text formats read it back too.
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);
        }
    }

    #[test]
    fn a_large_body_is_sent_as_its_own_part_and_the_parts_are_the_frame() {
        for (len, parts) in [(wire::SHARE_MIN, 3), (wire::SHARE_MIN - 1, 1), (0, 1)] {
            let m = response(len);
            let got = encode_frame_parts(&m).unwrap();
            assert_eq!(got.len(), parts, "body of {len} bytes");
            assert_eq!(
                got.concat(),
                encode_frame(&m).unwrap(),
                "body of {len} bytes"
            );
            if let (Message::Response { body, .. }, [_, part, _]) = (&m, got.as_slice()) {
                assert_eq!(part.as_ptr(), body.as_ptr(), "the body was copied");
            }
        }
        assert_eq!(
            encode_frame_parts(&Message::Ping { nonce: 7 })
                .unwrap()
                .concat(),
            encode_frame(&Message::Ping { nonce: 7 }).unwrap()
        );
        // Over the frame limit: refused, as encode_frame refuses it.
        let huge = response(MAX_FRAME_LEN);
        assert!(matches!(
            encode_frame_parts(&huge),
            Err(WireError::Oversized { .. })
        ));
        assert!(encode_frame(&huge).is_err());
    }

    #[test]
    fn oversized_frames_are_refused() {
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            decode_frame(&big),
            Err(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn wrong_version_is_named() {
        let mut frame = encode_frame(&Message::Ping { nonce: 1 }).unwrap();
        frame[0] = 9;
        assert_eq!(
            decode_frame(&frame),
            Err(WireError::UnsupportedVersion { got: 9 })
        );
        assert_eq!(
            decode_frame(&[1]),
            Err(WireError::Malformed(
                "frame shorter than its version".into()
            ))
        );
    }
}
