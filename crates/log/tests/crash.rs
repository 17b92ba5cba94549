//! The crash test: a writer process appending concurrently under the `fsync` policy is killed
//! with SIGKILL at a random moment, several times; every append it acknowledged must then be in
//! the log, in order, with its payload, and the log must open, read and append normally.
//!
//! The writer is this test binary re-invoked with `FLARE_LOG_CRASH_DIR` set, running only
//! `crash_writer_child`, which prints one `ACK` line per acknowledged record.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use flare_log::{
    Durability, EmbeddedLog, EmbeddedLogConfig, EventLog, NewRecord, StartFrom, conformance::poll_n,
};

const DIR_ENV: &str = "FLARE_LOG_CRASH_DIR";
const ROUND_ENV: &str = "FLARE_LOG_CRASH_ROUND";
const TOPIC: &str = "crash";
const WRITERS: u32 = 16;
const ROUNDS: u32 = 4;

fn config(dir: &Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        durability: Durability::Fsync,
        // Small segments, so that kills also land around segment rolls.
        segment_bytes: 256 * 1024,
        ..EmbeddedLogConfig::in_dir(dir)
    }
}

/// Deterministic payload of record `seq` of `writer` in `round`, 16 B to ~2 KB.
fn payload(round: u32, writer: u32, seq: u64) -> Vec<u8> {
    let mut bytes = format!("{round}/{writer}/{seq}/").into_bytes();
    let filler = (seq.wrapping_mul(2_654_435_761) ^ u64::from(writer)) % 2000;
    bytes.extend((0..filler).map(|i| b'a' + ((i + seq) % 26) as u8));
    bytes
}

fn key(writer: u32) -> Vec<u8> {
    format!("writer-{writer}").into_bytes()
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    round: u32,
    writer: u32,
    seq: u64,
    partition: u32,
    offset: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut fields = line.strip_prefix("ACK ")?.split(' ');
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some(Ack {
        round: next()? as u32,
        writer: next()? as u32,
        seq: next()?,
        partition: next()? as u32,
        offset: next()?,
    })
}

/// Runs only inside the child process; a no-op in a normal test run.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let round: u32 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let log = EmbeddedLog::open(config(Path::new(&dir))).await.unwrap();
        log.ensure_topic(TOPIC, 4).await.unwrap();
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                // Bounded, so that a child whose parent died does not run on.
                let started = std::time::Instant::now();
                while started.elapsed() < Duration::from_secs(30) {
                    // Some writers append three records per call, the rest one.
                    let count = if writer % 4 == 0 { 3 } else { 1 };
                    let records = (seq..seq + count)
                        .map(|s| NewRecord {
                            key: Some(key(writer)),
                            payload: payload(round, writer, s),
                            ..NewRecord::default()
                        })
                        .collect();
                    let positions = log.append(TOPIC, records).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    for (i, position) in positions.iter().enumerate() {
                        let s = seq + i as u64;
                        let line = format!(
                            "ACK {round} {writer} {s} {} {}\n",
                            position.partition, position.offset
                        );
                        out.write_all(line.as_bytes()).unwrap();
                    }
                    out.flush().unwrap();
                    seq += count;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut all_acks: Vec<Ack> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, &dir)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (acks_tx, acks_rx) = mpsc::channel();
        let collector = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ack) = parse_ack(&line) {
                    let _ = acks_tx.send(ack);
                }
            }
        });
        // Kill at a random moment once the writer is acknowledging appends.
        let first = acks_rx.recv_timeout(Duration::from_secs(20));
        assert!(
            first.is_ok(),
            "round {round}: the writer acknowledged nothing"
        );
        if round == 0 {
            runtime.block_on(read_while_writing(&dir));
        }
        std::thread::sleep(Duration::from_millis(rand::random_range(100..900)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        collector.join().unwrap();
        let round_acks: Vec<Ack> = first.into_iter().chain(acks_rx.try_iter()).collect();
        assert!(round_acks.iter().all(|a| a.round == round));
        eprintln!(
            "round {round}: {} acknowledged records before SIGKILL",
            round_acks.len()
        );
        all_acks.extend(round_acks);

        runtime.block_on(verify(&dir, &all_acks, round));
    }
}

/// A read-only view in this process follows the writer process through the files: a
/// consumer is woken by its appends and sees only whole, valid records.
async fn read_while_writing(dir: &Path) {
    let reader = EmbeddedLog::open_reader(dir)
        .await
        .expect("a reader opens beside the writer");
    let mut consumer = reader
        .consumer("tail", &[TOPIC.to_string()], StartFrom::Latest)
        .await
        .unwrap();
    let started = Instant::now();
    let records = poll_n(consumer.as_mut(), 200).await;
    eprintln!(
        "reader process view: 200 live records in {:?}",
        started.elapsed()
    );
    for record in &records {
        let text = String::from_utf8_lossy(&record.payload);
        let mut fields = text.split('/');
        let round: u32 = fields.next().unwrap().parse().unwrap();
        let writer: u32 = fields.next().unwrap().parse().unwrap();
        let seq: u64 = fields.next().unwrap().parse().unwrap();
        assert_eq!(record.payload, payload(round, writer, seq));
    }
    consumer
        .commit(&records[0])
        .await
        .expect("a read-only process can commit");
}

async fn verify(dir: &Path, acks: &[Ack], round: u32) {
    let started = Instant::now();
    let log = EmbeddedLog::open(config(dir))
        .await
        .expect("the log opens after a crash");
    eprintln!("round {round}: reopened in {:?}", started.elapsed());
    let info = log
        .topics()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == TOPIC)
        .unwrap();
    let mut stored = HashMap::new();
    for partition in 0..info.partitions {
        let mut offset = info.start_offsets[partition as usize];
        loop {
            let records = log
                .read(TOPIC, partition, offset, 1000)
                .await
                .expect("everything reads");
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            for record in records {
                stored.insert((partition, record.offset), record);
            }
        }
        assert_eq!(
            offset, info.end_offsets[partition as usize],
            "partition {partition} reads to its end"
        );
    }
    let mut last_offset: HashMap<(u32, u32), u64> = HashMap::new();
    let mut sorted = acks.to_vec();
    sorted.sort_by_key(|a| (a.round, a.writer, a.seq));
    for ack in &sorted {
        let record = stored
            .get(&(ack.partition, ack.offset))
            .unwrap_or_else(|| panic!("acknowledged record lost: {ack:?}"));
        assert_eq!(
            record.payload,
            payload(ack.round, ack.writer, ack.seq),
            "{ack:?}"
        );
        assert_eq!(
            record.key.as_deref(),
            Some(key(ack.writer).as_slice()),
            "{ack:?}"
        );
        // One writer's records are in one partition, in the order they were acknowledged.
        if let Some(previous) = last_offset.insert((ack.round, ack.writer), ack.offset) {
            assert!(
                previous < ack.offset,
                "out of order: {ack:?} after offset {previous}"
            );
        }
    }
    let position = log
        .append(
            TOPIC,
            vec![NewRecord {
                key: Some(b"after-crash".to_vec()),
                ..NewRecord::default()
            }],
        )
        .await
        .expect("appending after recovery works");
    assert_eq!(
        position[0].offset,
        info.end_offsets[position[0].partition as usize]
    );
    log.close().await.unwrap();
}
