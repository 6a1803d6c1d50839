//! The low-latency idle strategy answers like the parking one and, once idle, parks: an idle
//! engine costs no CPU. Its own test binary, so that the process's CPU time is the engine's.

use std::time::Duration;

use spate::record::Record;
use spate::{Engine, EngineConfig, FetchOptions, IdleStrategy, Target};

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data, all zeroes is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given, which lives for the call.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

#[test]
fn a_low_latency_engine_answers_and_then_parks() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig { shards: 2, idle: IdleStrategy::LOW_LATENCY, ..EngineConfig::default() };
    let engine = Engine::open(dir.path(), config).unwrap();
    engine.create_topic("t", 2, spate::log::LogConfig::default()).unwrap();
    // A long poll answered by a produce from another thread, both waiting the low-latency way.
    let consumer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let options = FetchOptions { max_wait: Duration::from_secs(5), ..FetchOptions::default() };
            let fetched = engine.fetch("t", 1, 0, options).unwrap();
            fetched.records(0).unwrap().into_iter().map(|r| r.value.unwrap().to_vec()).collect::<Vec<_>>()
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..100u32 {
        let value = i.to_be_bytes();
        engine
            .produce(
                "t",
                Target::Partition(i % 2),
                &[Record { timestamp: 0, key: None, value: Some(&value), headers: &[] }],
            )
            .unwrap();
    }
    let got = consumer.join().unwrap();
    assert!(
        !got.is_empty() && got[0] == 1u32.to_be_bytes(),
        "the long poll got the first record of partition 1"
    );
    // Idle now: within the backoff window every thread parks. Half a second of idleness costs
    // a few milliseconds at most; a loop that kept spinning would cost up to a second (two
    // shard threads).
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_seconds();
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_seconds() - before;
    assert!(used < 0.1, "an idle low-latency engine used {used:.3} s of CPU in 0.5 s");
    engine.shutdown().unwrap();
}
