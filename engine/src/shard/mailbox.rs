//! A shard's mailbox: a bounded queue that application threads and other shards push requests
//! into, and an eventfd that wakes the shard when it sleeps.
//!
//! The shard drains the queue each turn of its loop. When it finds nothing to do it announces
//! that it is going to sleep, checks the queue once more, and only then waits on the eventfd
//! (with a timeout for its timers). A sender pushes, then wakes the shard only if it announced
//! sleep, so a busy shard costs its senders no system call. The two sides form Dekker's pattern:
//! each writes its flag (the queue, the `sleeping` bit) and then reads the other's, with a
//! sequentially consistent fence in between, so at least one of them sees the other and a
//! request can never sit in the queue of a sleeping shard.
//!
//! Closing uses the same handshake. A stopping shard sets `closed` and then drains its queue,
//! dropping what it finds (a dropped request drops its reply sender, which its caller sees as
//! "shutting down"). A sender checks `closed` after its push, and if it is set drains the queue
//! itself. Either the shard's drain sees the message or the sender sees `closed`, so no message
//! is ever left in a queue nobody reads, and no caller waits for a reply that cannot come.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender, TrySendError};

/// The wake-up half: an eventfd and the flag that says whether the shard may be asleep on it.
#[derive(Debug)]
pub struct Wake {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
    closed: AtomicBool,
}

impl Wake {
    pub fn new() -> std::io::Result<Wake> {
        // SAFETY: plain syscall; the returned descriptor is checked and then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Wake { eventfd, sleeping: AtomicBool::new(false), closed: AtomicBool::new(false) })
    }

    /// Called by a sender after its push: wakes the shard if it is (about to be) asleep.
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A failure can only be
            // EAGAIN (the counter is saturated), which still leaves the shard woken.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Shard side: announce sleep. The caller must re-check its queue afterwards and call
    /// [`Wake::cancel_sleep`] if it found work.
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub fn cancel_sleep(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Shard side: sleeps until notified or until `timeout` passes (`None`: no timeout).
    pub fn wait(&self, timeout: Option<Duration>) {
        let timeout_ms = timeout.map_or(-1, |t| {
            // Round up, so a deadline 0.3 ms away does not turn into a busy loop.
            i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        let mut pfd = libc::pollfd { fd: self.eventfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc > 0 {
            let mut counter: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
            unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Empties the eventfd's counter after a wake-up seen by someone else's poller.
    fn drain(&self) {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd; EAGAIN (an
        // empty counter) is harmless.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
    }
}

/// The sending half, cloned by every handle that talks to the shard.
#[derive(Debug)]
pub struct MailboxSender<T> {
    tx: Sender<T>,
    /// For draining after the shard has closed (see the module documentation).
    rx: Receiver<T>,
    wake: Arc<Wake>,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender { tx: self.tx.clone(), rx: self.rx.clone(), wake: Arc::clone(&self.wake) }
    }
}

/// Why a message could not be delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// The queue is full (only from [`MailboxSender::try_send`]).
    Full(T),
    /// The shard has stopped.
    Closed(T),
}

impl<T> MailboxSender<T> {
    /// Queues `msg`, waiting while the queue is full: backpressure on the sender.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        if self.wake.closed.load(Ordering::SeqCst) {
            return Err(SendError::Closed(msg));
        }
        self.tx.send(msg).map_err(|e| SendError::Closed(e.into_inner()))?;
        self.after_push();
        Ok(())
    }

    /// Queues `msg` if there is room now.
    pub fn try_send(&self, msg: T) -> Result<(), SendError<T>> {
        if self.wake.closed.load(Ordering::SeqCst) {
            return Err(SendError::Closed(msg));
        }
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) => SendError::Full(m),
            TrySendError::Disconnected(m) => SendError::Closed(m),
        })?;
        self.after_push();
        Ok(())
    }

    /// Whether `self` and `other` reach the same mailbox.
    pub fn same_mailbox(&self, other: &MailboxSender<T>) -> bool {
        Arc::ptr_eq(&self.wake, &other.wake)
    }

    /// Wakes the shard if it sleeps, without sending anything (it has other work: requests
    /// its own tasks left waiting for full mailboxes).
    pub fn wake(&self) {
        self.wake.notify();
    }

    fn after_push(&self) {
        self.wake.notify();
        // `notify` fenced; if the shard closed meanwhile, nobody else will read the queue.
        if self.wake.closed.load(Ordering::SeqCst) {
            while self.rx.try_recv().is_ok() {}
        }
    }

    /// Messages waiting in the queue.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// The receiving half, owned by the shard.
#[derive(Debug)]
pub struct MailboxReceiver<T> {
    rx: Receiver<T>,
    wake: Arc<Wake>,
}

impl<T> MailboxReceiver<T> {
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Whether nothing is queued (a check, no wake-up involved).
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Closes the mailbox for good: later sends fail, and everything queued is dropped (its
    /// senders' replies report the shutdown).
    pub fn close(&self) {
        self.wake.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while self.rx.try_recv().is_ok() {}
    }

    /// Sleeps until a message may be waiting or `timeout` passes; returns at once if one is.
    pub fn sleep(&self, timeout: Option<Duration>) {
        self.wake.prepare_sleep();
        if !self.rx.is_empty() {
            self.wake.cancel_sleep();
            return;
        }
        self.wake.wait(timeout);
    }

    /// The descriptor an event loop polls for readability to learn of a wake-up; after it
    /// fires, call [`MailboxReceiver::woken`].
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        self.wake.eventfd.as_raw_fd()
    }

    /// Shard side of an event-loop sleep: announces it, and says whether the loop may really
    /// sleep (`false`: a message is already waiting, the announcement is withdrawn).
    pub fn prepare_sleep(&self) -> bool {
        self.wake.prepare_sleep();
        if !self.rx.is_empty() {
            self.wake.cancel_sleep();
            return false;
        }
        true
    }

    /// Shard side: the event-loop sleep is over (woken, timed out, or other work ran).
    pub fn woken(&self) {
        self.wake.drain();
        self.wake.cancel_sleep();
    }
}

/// A bounded mailbox of `capacity` messages.
pub fn mailbox<T>(capacity: usize) -> std::io::Result<(MailboxSender<T>, MailboxReceiver<T>)> {
    let (tx, rx) = channel::bounded(capacity);
    let wake = Arc::new(Wake::new()?);
    Ok((MailboxSender { tx, rx: rx.clone(), wake: Arc::clone(&wake) }, MailboxReceiver { rx, wake }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_sleeping_receiver_is_woken_by_a_send() {
        let (tx, rx) = mailbox::<u32>(4).unwrap();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
            tx
        });
        let start = Instant::now();
        let mut got = None;
        while got.is_none() {
            rx.sleep(Some(Duration::from_secs(10)));
            got = rx.try_recv();
        }
        assert_eq!(got, Some(7));
        assert!(start.elapsed() < Duration::from_secs(5), "woken by the send, not the timeout");
        drop(waker.join().unwrap());
    }

    #[test]
    fn sleep_returns_at_once_when_work_is_queued_and_times_out_otherwise() {
        let (tx, rx) = mailbox::<u32>(4).unwrap();
        tx.send(1).unwrap();
        let start = Instant::now();
        rx.sleep(Some(Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(rx.try_recv(), Some(1));
        let start = Instant::now();
        rx.sleep(Some(Duration::from_millis(30)));
        assert!(start.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn try_send_reports_full_and_closed() {
        let (tx, rx) = mailbox::<u32>(2).unwrap();
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(SendError::Full(3)));
        assert_eq!(tx.len(), 2);
        rx.close();
        assert_eq!(tx.len(), 0, "closing drops what was queued");
        assert_eq!(tx.try_send(4), Err(SendError::Closed(4)));
        assert_eq!(tx.send(5), Err(SendError::Closed(5)));
    }

    #[test]
    fn nothing_stays_queued_once_closed_even_under_a_race() {
        // Each message carries a guard; every guard must be dropped (delivered or discarded)
        // once the receiver closes, however the sends interleave with the close.
        for _ in 0..200 {
            let (tx, rx) = mailbox::<Arc<()>>(8).unwrap();
            let token = Arc::new(());
            let sender = {
                let (tx, token) = (tx.clone(), Arc::clone(&token));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        if tx.send(Arc::clone(&token)).is_err() {
                            break;
                        }
                    }
                })
            };
            std::thread::yield_now();
            rx.close();
            sender.join().unwrap();
            drop(tx);
            assert_eq!(Arc::strong_count(&token), 1, "a message was left in a closed queue");
        }
    }

    #[test]
    fn no_wake_up_is_lost_under_contention() {
        // Many short bursts from several threads while the receiver sleeps between them: every
        // message must arrive without relying on the timeout.
        let (tx, rx) = mailbox::<u64>(64).unwrap();
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000u64 {
                        tx.send(t * 1_000_000 + i).unwrap();
                        if i % 100 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut received = 0;
        let start = Instant::now();
        loop {
            while rx.try_recv().is_some() {
                received += 1;
            }
            if received == 8_000 {
                break;
            }
            // A lost wake-up would show as a 10 s stall.
            rx.sleep(Some(Duration::from_secs(10)));
            assert!(start.elapsed() < Duration::from_secs(8), "stalled: a wake-up was lost");
        }
        for s in senders {
            s.join().unwrap();
        }
    }
}
