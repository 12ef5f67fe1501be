//! Viewers' feedback: lets their keyframe requests, NACKs and bandwidth
//! feedback (TWCC, REMB) through to the SFU
//! (webrtc-rs stops inbound RTCP at the end of its interceptor chain unless an
//! interceptor marks it), and throttles the keyframe requests sent on to a publisher.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Marks compound RTCP packets carrying PLI, FIR, NACK, TWCC or REMB for
/// delivery to the application; reports and everything else stay with the
/// interceptors.
#[derive(Default)]
pub struct ViewerFeedback {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// True for the feedback the SFU acts on.
pub fn is_sfu_feedback(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>()
        || any.is::<FullIntraRequest>()
        || any.is::<TransportLayerNack>()
        || any.is::<TransportLayerCc>()
        || any.is::<ReceiverEstimatedMaximumBitrate>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ViewerFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| is_sfu_feedback(p.as_ref()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for ViewerFeedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// At most one keyframe request (PLI) to a publisher per interval, however many
/// viewers join or ask: each keyframe costs the publisher's uplink a burst many
/// times a normal frame, and one keyframe serves every viewer waiting for it.
#[derive(Debug, Default)]
pub struct KeyframeThrottle {
    last: Option<Instant>,
}

impl KeyframeThrottle {
    /// True when a request should go out now: a viewer wants a keyframe
    /// (`wanted`, which this clears) and none went out within `interval`. A wish
    /// made inside the interval is kept and answered once the interval is over.
    pub fn due(&mut self, wanted: &AtomicBool, now: Instant, interval: Duration) -> bool {
        if !wanted.load(Ordering::Acquire) {
            return false;
        }
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return false;
        }
        wanted.store(false, Ordering::Release);
        self.last = Some(now);
        true
    }

    /// An urgent wish (a worker's first viewer of an encoding: nothing cached
    /// there to start from) goes out past the interval, but never within
    /// `min_gap` of the last request, so a viewer joining and leaving in a loop
    /// cannot turn the publisher's uplink into key frames.
    pub fn due_urgent(&mut self, urgent: &AtomicBool, now: Instant, min_gap: Duration) -> bool {
        if !urgent.load(Ordering::Acquire)
            || self
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < min_gap)
        {
            return false;
        }
        urgent.store(false, Ordering::Release);
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_urgent_wish_passes_the_interval_but_not_the_minimum_gap() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (interval, gap) = (Duration::from_millis(500), Duration::from_millis(100));
        let mut throttle = KeyframeThrottle::default();
        let (wanted, urgent) = (AtomicBool::new(true), AtomicBool::new(false));
        assert!(throttle.due(&wanted, ms(0), interval));
        urgent.store(true, Ordering::Release);
        assert!(!throttle.due_urgent(&urgent, ms(50), gap), "within the gap");
        assert!(throttle.due_urgent(&urgent, ms(100), gap));
        assert!(!urgent.load(Ordering::Acquire));
        wanted.store(true, Ordering::Release);
        assert!(
            !throttle.due(&wanted, ms(400), interval),
            "the interval runs from the urgent one"
        );
        assert!(throttle.due(&wanted, ms(600), interval));
    }
}
