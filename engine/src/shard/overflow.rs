//! Requests a shard thread could not hand to a full mailbox, kept in order until they can.
//!
//! A shard thread must never wait for a mailbox (the one it waits for may be its own, or its
//! owner may be waiting for this one), and must not let a later request to the same shard
//! overtake an earlier one (a connection's produces and commits must stay in order). So on a
//! shard thread a send to a full mailbox, or to one that already has requests waiting here,
//! joins a per-target queue on this thread; the shard's loop pushes the queues on each turn,
//! oldest first, and wakes up within a millisecond while any is non-empty. A task that queues
//! something while the loop sleeps wakes it (through the shard's own eventfd), since nothing
//! else would. The queues are bounded by what the shard's tasks have in flight (requests per
//! connection, frame sizes).

use std::cell::RefCell;
use std::collections::VecDeque;

use super::mailbox::{MailboxSender, SendError};
use super::request::Request;

thread_local! {
    /// Per mailbox (identified by its sender, so that several engines in one process never
    /// mix), what waits for it, oldest first.
    static QUEUES: RefCell<Vec<(MailboxSender<Request>, VecDeque<Request>)>> = const { RefCell::new(Vec::new()) };
    /// This shard's own mailbox, to wake its loop.
    static OWN: RefCell<Option<MailboxSender<Request>>> = const { RefCell::new(None) };
}

/// Called by a shard thread at start: `own` is its mailbox.
pub fn init(own: MailboxSender<Request>) {
    OWN.with(|o| *o.borrow_mut() = Some(own));
}

fn wake_own_loop() {
    OWN.with(|o| {
        if let Some(own) = o.borrow().as_ref() {
            own.wake();
        }
    });
}

/// Sends `request` to `mailbox` from a shard thread, in order with everything this thread sent
/// there before. `Err` only when that shard has stopped.
pub fn send(mailbox: &MailboxSender<Request>, request: Request) -> Result<(), Request> {
    QUEUES.with(|q| {
        let mut queues = q.borrow_mut();
        if let Some((_, queue)) = queues.iter_mut().find(|(m, _)| m.same_mailbox(mailbox)) {
            if !queue.is_empty() {
                queue.push_back(request);
                return Ok(());
            }
        }
        match mailbox.try_send(request) {
            Ok(()) => Ok(()),
            Err(SendError::Full(request)) => {
                match queues.iter_mut().find(|(m, _)| m.same_mailbox(mailbox)) {
                    Some((_, queue)) => queue.push_back(request),
                    None => queues.push((mailbox.clone(), VecDeque::from([request]))),
                }
                drop(queues);
                wake_own_loop();
                Ok(())
            }
            Err(SendError::Closed(request)) => Err(request),
        }
    })
}

/// Whether requests of this thread wait for `mailbox` (a request that must not wait has to be
/// refused then, or it would overtake them).
pub fn has_waiting(mailbox: &MailboxSender<Request>) -> bool {
    QUEUES.with(|q| q.borrow().iter().any(|(m, queue)| m.same_mailbox(mailbox) && !queue.is_empty()))
}

/// Pushes what waits for each mailbox, oldest first, until one is full. Returns whether
/// anything still waits. Requests for a stopped shard are dropped (their callers hear
/// "shutting down").
pub fn flush() -> bool {
    QUEUES.with(|q| {
        let mut queues = q.borrow_mut();
        let mut left = false;
        for (mailbox, queue) in queues.iter_mut() {
            while let Some(request) = queue.pop_front() {
                match mailbox.try_send(request) {
                    Ok(()) => {}
                    Err(SendError::Full(request)) => {
                        queue.push_front(request);
                        break;
                    }
                    Err(SendError::Closed(_)) => {}
                }
            }
            left |= !queue.is_empty();
        }
        queues.retain(|(_, queue)| !queue.is_empty());
        left
    })
}

/// Drops everything waiting (at shutdown): the callers hear "shutting down".
pub fn clear() {
    QUEUES.with(|q| q.borrow_mut().clear());
    OWN.with(|o| o.borrow_mut().take());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::mailbox::mailbox;

    #[test]
    fn sends_to_a_full_mailbox_wait_in_order_and_later_ones_do_not_overtake() {
        let (tx, rx) = mailbox::<Request>(2).unwrap();
        let barrier = || {
            let (reply, done) = oneshot::channel();
            (Request::Barrier { reply }, done)
        };
        let mut waits = Vec::new();
        for _ in 0..5 {
            let (r, done) = barrier();
            assert!(send(&tx, r).is_ok());
            waits.push(done);
        }
        // Two fit; three wait here. Draining one makes room for exactly one more.
        let first = rx.try_recv().unwrap();
        assert!(has_waiting(&tx));
        assert!(flush(), "two still wait");
        let mut received = vec![first];
        while let Some(r) = rx.try_recv() {
            received.push(r);
        }
        assert_eq!(received.len(), 3);
        assert!(!flush(), "the rest fit now");
        assert!(!has_waiting(&tx));
        while let Some(r) = rx.try_recv() {
            received.push(r);
        }
        assert_eq!(received.len(), 5);
        // Answer in the order received: the waits must complete in the order sent.
        for r in received {
            let Request::Barrier { reply } = r else { panic!() };
            reply.send(Ok(())).unwrap();
        }
        for w in waits {
            assert!(w.try_recv().is_ok());
        }
        clear();
    }
}
