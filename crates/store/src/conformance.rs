//! The behaviour every [`Store`] backend must show, as reusable async checks.
//!
//! Each check takes a fresh, empty store and panics (like a test) when the backend misbehaves.
//! [`conformance_tests!`](crate::conformance_tests) turns the whole list into `#[tokio::test]`s
//! for one backend:
//!
//! ```ignore
//! async fn memory_store() -> (Arc<dyn Store>, ()) { (Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap()), ()) }
//! mod memory { flare_store::conformance_tests!(super::memory_store); }
//! ```
//!
//! Search results are checked against `flare_search::matcher`, the in-memory reference
//! semantics, over generated data, rather than against hand-written expectations.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flare_search::{
    Chain, Clause, Include, IndexEntry, IndexValue, Predicate, Prefix, SearchQuery, SortKey,
    StringMatch, TotalMode,
};

use crate::{
    Commit, Expected, HistoryQuery, HistoryScope, OutboxMessage, ResourceKey, Store, StoreError,
    StoredVersion, VersionWrite,
};

/// Generates one `#[tokio::test]` per conformance check. `$make` is an async fn returning
/// `(Arc<dyn Store>, guard)`, the guard living as long as the test (e.g. a temporary dir).
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@each $make;
            create_then_read,
            expectations_are_checked,
            conflicting_commit_writes_nothing,
            delete_leaves_tombstone_and_clears_index,
            same_resource_twice_in_one_commit,
            concurrent_commits_group_and_conflict_alone,
            outbox_is_gap_free_in_commit_order,
            outbox_changed_wakes_the_relay,
            history_scopes_order_and_paging,
            search_agrees_with_reference_matcher,
            search_update_replaces_index_values,
            search_chain,
            search_sort_and_paging,
            search_large_result_plans_agree,
            search_total_modes,
            search_system_level,
            search_include_and_revinclude,
        );
    };
    (@each $make:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (store, _guard) = $make().await;
                $crate::conformance::$check(store).await;
            }
        )*
    };
}

const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn key(resource_type: &str, id: &str) -> ResourceKey {
    ResourceKey::new(resource_type, id)
}

fn body(resource_type: &str, id: &str, version: u64) -> String {
    format!(
        r#"{{"resourceType":"{resource_type}","id":"{id}","meta":{{"versionId":"{version}"}}}}"#
    )
}

/// A write of version `version` (expecting `version - 1`, or absence for version 1).
pub fn write(
    resource_type: &str,
    id: &str,
    version: u64,
    at_ms: i64,
    index: Vec<IndexEntry>,
) -> VersionWrite {
    VersionWrite {
        version: StoredVersion {
            key: key(resource_type, id),
            version_id: version,
            last_updated_ms: at_ms,
            body: Some(body(resource_type, id, version)),
        },
        expected: if version == 1 {
            Expected::Absent
        } else {
            Expected::Version(version - 1)
        },
        index,
    }
}

/// A delete tombstone as version `version`.
pub fn tombstone(resource_type: &str, id: &str, version: u64, at_ms: i64) -> VersionWrite {
    VersionWrite {
        version: StoredVersion {
            key: key(resource_type, id),
            version_id: version,
            last_updated_ms: at_ms,
            body: None,
        },
        expected: Expected::Version(version - 1),
        index: Vec::new(),
    }
}

fn commit_of(writes: Vec<VersionWrite>) -> Commit {
    Commit {
        writes,
        outbox: Vec::new(),
    }
}

fn message(n: u64) -> OutboxMessage {
    OutboxMessage {
        topic: format!("fhir.topic{}", n % 3),
        key: if n.is_multiple_of(2) {
            Some(format!("Patient/{n}").into_bytes())
        } else {
            None
        },
        headers: vec![
            ("event-id".to_owned(), format!("e{n}").into_bytes()),
            ("bin".to_owned(), vec![0, 255]),
        ],
        payload: format!(r#"{{"n":{n}}}"#).into_bytes(),
        timestamp_ms: T0 + n as i64,
    }
}

fn string(param: &str, text: &str) -> IndexEntry {
    IndexEntry {
        param: param.to_owned(),
        value: IndexValue::String {
            normalized: text.to_lowercase(),
            exact: text.to_owned(),
        },
    }
}

fn token(param: &str, system: Option<&str>, code: &str) -> IndexEntry {
    IndexEntry {
        param: param.to_owned(),
        value: IndexValue::Token {
            system: system.map(str::to_owned),
            code: Some(code.to_owned()),
            text: None,
        },
    }
}

fn reference(param: &str, target_type: &str, target_id: &str) -> IndexEntry {
    IndexEntry {
        param: param.to_owned(),
        value: IndexValue::Reference {
            target_type: Some(target_type.to_owned()),
            target_id: Some(target_id.to_owned()),
            url: format!("{target_type}/{target_id}"),
        },
    }
}

fn date(param: &str, low_ms: i64, high_ms: i64) -> IndexEntry {
    IndexEntry {
        param: param.to_owned(),
        value: IndexValue::Date { low_ms, high_ms },
    }
}

fn clause(param: &str, predicates: Vec<Predicate>) -> Clause {
    Clause {
        param: param.to_owned(),
        chain: None,
        predicates,
    }
}

fn query(resource_type: Option<&str>, clauses: Vec<Clause>) -> SearchQuery {
    SearchQuery {
        resource_type: resource_type.map(str::to_owned),
        clauses,
        count: 1000,
        ..SearchQuery::default()
    }
}

fn ids(versions: &[StoredVersion]) -> Vec<String> {
    versions.iter().map(|v| v.key.id.clone()).collect()
}

async fn commit_ok(store: &Arc<dyn Store>, writes: Vec<VersionWrite>) {
    store.commit(commit_of(writes)).await.expect("commit");
}

async fn search_ids(store: &Arc<dyn Store>, query: &SearchQuery) -> Vec<String> {
    ids(&store.search(query).await.expect("search").matches)
}

/// Tiny deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

// ---------------------------------------------------------------------------------------------
// Versions

pub async fn create_then_read(store: Arc<dyn Store>) {
    assert_eq!(store.current(&key("Patient", "p1")).await.unwrap(), None);
    commit_ok(&store, vec![write("Patient", "p1", 1, T0, vec![])]).await;
    commit_ok(&store, vec![write("Patient", "p1", 2, T0 + 5, vec![])]).await;

    let current = store
        .current(&key("Patient", "p1"))
        .await
        .unwrap()
        .expect("current");
    assert_eq!(current.version_id, 2);
    assert_eq!(current.last_updated_ms, T0 + 5);
    assert_eq!(
        current.body.as_deref(),
        Some(body("Patient", "p1", 2).as_str())
    );

    let first = store
        .version(&key("Patient", "p1"), 1)
        .await
        .unwrap()
        .expect("version 1");
    assert_eq!(
        first.body.as_deref(),
        Some(body("Patient", "p1", 1).as_str())
    );
    assert_eq!(first.last_updated_ms, T0);
    assert_eq!(store.version(&key("Patient", "p1"), 3).await.unwrap(), None);
    assert_eq!(
        store
            .version(&key("Patient", "p1"), u64::MAX)
            .await
            .unwrap(),
        None
    );
    // Same id, other type: another resource.
    assert_eq!(
        store.current(&key("Observation", "p1")).await.unwrap(),
        None
    );
}

pub async fn expectations_are_checked(store: Arc<dyn Store>) {
    commit_ok(&store, vec![write("Patient", "p1", 1, T0, vec![])]).await;

    let again = store
        .commit(commit_of(vec![write("Patient", "p1", 1, T0, vec![])]))
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict { ref key, expected: Expected::Absent, actual: Some(1) }) if key.id == "p1"),
        "{again:?}"
    );
    let mut stale = write("Patient", "p1", 3, T0, vec![]);
    stale.expected = Expected::Version(2);
    let stale = store.commit(commit_of(vec![stale])).await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Conflict {
                actual: Some(1),
                ..
            })
        ),
        "{stale:?}"
    );
    let missing = store
        .commit(commit_of(vec![write("Patient", "nobody", 2, T0, vec![])]))
        .await;
    assert!(
        matches!(missing, Err(StoreError::Conflict { actual: None, .. })),
        "{missing:?}"
    );

    assert_eq!(
        store
            .current(&key("Patient", "p1"))
            .await
            .unwrap()
            .map(|v| v.version_id),
        Some(1)
    );
    assert_eq!(
        store.current(&key("Patient", "nobody")).await.unwrap(),
        None
    );
}

pub async fn conflicting_commit_writes_nothing(store: Arc<dyn Store>) {
    commit_ok(&store, vec![write("Patient", "p1", 1, T0, vec![])]).await;
    let commit = Commit {
        writes: vec![
            write("Patient", "new", 1, T0, vec![string("name", "Fresh")]),
            write("Patient", "p1", 1, T0, vec![]), // conflicts: p1 exists
        ],
        outbox: vec![message(1)],
    };
    assert!(matches!(
        store.commit(commit).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.current(&key("Patient", "new")).await.unwrap(), None);
    assert!(store.outbox_after(0, 10).await.unwrap().is_empty());
    let by_name = query(Some("Patient"), vec![clause("name", vec![starts("fresh")])]);
    assert!(search_ids(&store, &by_name).await.is_empty());
}

fn starts(value: &str) -> Predicate {
    Predicate::String {
        mode: StringMatch::StartsWith,
        value: value.to_owned(),
    }
}

pub async fn delete_leaves_tombstone_and_clears_index(store: Arc<dyn Store>) {
    commit_ok(
        &store,
        vec![write("Patient", "p1", 1, T0, vec![string("name", "Smith")])],
    )
    .await;
    let by_name = query(Some("Patient"), vec![clause("name", vec![starts("smi")])]);
    assert_eq!(search_ids(&store, &by_name).await, ["p1"]);

    commit_ok(&store, vec![tombstone("Patient", "p1", 2, T0 + 1)]).await;
    let current = store
        .current(&key("Patient", "p1"))
        .await
        .unwrap()
        .expect("tombstone");
    assert!(current.is_deleted());
    assert_eq!(current.version_id, 2);
    assert!(search_ids(&store, &by_name).await.is_empty());
    assert!(
        search_ids(&store, &query(Some("Patient"), vec![]))
            .await
            .is_empty()
    );

    // Re-creating after a delete continues the version sequence.
    let recreate = store
        .commit(commit_of(vec![write("Patient", "p1", 1, T0 + 2, vec![])]))
        .await;
    assert!(
        matches!(
            recreate,
            Err(StoreError::Conflict {
                actual: Some(2),
                ..
            })
        ),
        "{recreate:?}"
    );
    commit_ok(
        &store,
        vec![write(
            "Patient",
            "p1",
            3,
            T0 + 2,
            vec![string("name", "Smythe")],
        )],
    )
    .await;
    assert_eq!(search_ids(&store, &by_name).await, Vec::<String>::new());
    let by_new_name = query(Some("Patient"), vec![clause("name", vec![starts("smy")])]);
    assert_eq!(search_ids(&store, &by_new_name).await, ["p1"]);
    let history = store
        .history(&HistoryQuery {
            scope: HistoryScope::Instance(key("Patient", "p1")),
            since_ms: None,
            before_ms: None,
            count: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        history
            .versions
            .iter()
            .map(|v| (v.version_id, v.is_deleted()))
            .collect::<Vec<_>>(),
        [(3, false), (2, true), (1, false)]
    );
}

pub async fn same_resource_twice_in_one_commit(store: Arc<dyn Store>) {
    // The second write expects the first: writes apply in order.
    commit_ok(
        &store,
        vec![
            write("Patient", "p1", 1, T0, vec![]),
            write("Patient", "p1", 2, T0, vec![]),
        ],
    )
    .await;
    assert_eq!(
        store
            .current(&key("Patient", "p1"))
            .await
            .unwrap()
            .map(|v| v.version_id),
        Some(2)
    );
    // Both expecting absence: the second conflicts, so neither is written.
    let twice = store
        .commit(commit_of(vec![
            write("Patient", "p2", 1, T0, vec![]),
            write("Patient", "p2", 1, T0, vec![]),
        ]))
        .await;
    assert!(
        matches!(twice, Err(StoreError::Conflict { .. })),
        "{twice:?}"
    );
    assert_eq!(store.current(&key("Patient", "p2")).await.unwrap(), None);
}

pub async fn concurrent_commits_group_and_conflict_alone(store: Arc<dyn Store>) {
    commit_ok(&store, vec![write("Patient", "shared", 1, T0, vec![])]).await;
    let mut tasks = Vec::new();
    for n in 0..64u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let own = Commit {
                writes: vec![write("Patient", &format!("own{n}"), 1, T0, vec![])],
                outbox: vec![message(n)],
            };
            let own = store.commit(own).await;
            // Everyone races to turn version 1 of `shared` into version 2: one wins.
            let race = store
                .commit(commit_of(vec![write(
                    "Patient",
                    "shared",
                    2,
                    T0 + n as i64,
                    vec![],
                )]))
                .await;
            (own, race)
        }));
    }
    let mut winners = 0;
    for task in tasks {
        let (own, race) = task.await.expect("task");
        own.expect("independent commits all succeed");
        match race {
            Ok(()) => winners += 1,
            Err(StoreError::Conflict {
                actual: Some(2), ..
            }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    for n in 0..64 {
        assert!(
            store
                .current(&key("Patient", &format!("own{n}")))
                .await
                .unwrap()
                .is_some()
        );
    }
    let seqs: Vec<u64> = store
        .outbox_after(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Outbox

pub async fn outbox_is_gap_free_in_commit_order(store: Arc<dyn Store>) {
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(1), message(2)],
        })
        .await
        .unwrap();
    // A conflicting commit must not burn sequence numbers.
    let failed = Commit {
        writes: vec![write("Patient", "x", 2, T0, vec![])],
        outbox: vec![message(99)],
    };
    assert!(store.commit(failed).await.is_err());
    store
        .commit(Commit {
            writes: vec![write("Patient", "p", 1, T0, vec![])],
            outbox: vec![message(3)],
        })
        .await
        .unwrap();

    let all = store.outbox_after(0, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        all.iter().map(|e| e.message.clone()).collect::<Vec<_>>(),
        [message(1), message(2), message(3)]
    );
    assert_eq!(
        store
            .outbox_after(1, 1)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [2]
    );

    store.outbox_ack(2).await.unwrap();
    assert_eq!(
        store
            .outbox_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [3]
    );
    store.outbox_ack(3).await.unwrap();
    assert!(store.outbox_after(0, 10).await.unwrap().is_empty());
    // Numbering continues after everything was acknowledged.
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(4)],
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .outbox_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [4]
    );
    assert!(store.outbox_after(u64::MAX, 10).await.unwrap().is_empty());
}

pub async fn outbox_changed_wakes_the_relay(store: Arc<dyn Store>) {
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.outbox_changed().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "woke without a commit");
    // A commit without outbox messages does not wake it.
    commit_ok(&store, vec![write("Patient", "p", 1, T0, vec![])]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "woke for a commit without messages");
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(1)],
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .expect("task");

    // A commit while nobody waits is remembered for the next wait.
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(2)],
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), store.outbox_changed())
        .await
        .expect("remembered");
}

// ---------------------------------------------------------------------------------------------
// History

pub async fn history_scopes_order_and_paging(store: Arc<dyn Store>) {
    // p1 v1 @0, o1 v1 @10, p1 v2 @20, p2 v1 @20 (same ms: write order decides), p1 v3 (delete) @30
    commit_ok(&store, vec![write("Patient", "p1", 1, T0, vec![])]).await;
    commit_ok(&store, vec![write("Observation", "o1", 1, T0 + 10, vec![])]).await;
    commit_ok(&store, vec![write("Patient", "p1", 2, T0 + 20, vec![])]).await;
    commit_ok(&store, vec![write("Patient", "p2", 1, T0 + 20, vec![])]).await;
    commit_ok(&store, vec![tombstone("Patient", "p1", 3, T0 + 30)]).await;

    let run = |scope: HistoryScope,
               since_ms: Option<i64>,
               before_ms: Option<i64>,
               count: usize,
               offset: usize| {
        let store = store.clone();
        async move {
            let page = store
                .history(&HistoryQuery {
                    scope,
                    since_ms,
                    before_ms,
                    count,
                    offset,
                })
                .await
                .unwrap();
            let listed: Vec<String> = page
                .versions
                .iter()
                .map(|v| format!("{}/{}", v.key, v.version_id))
                .collect();
            (listed, page.total)
        }
    };
    let (all, total) = run(HistoryScope::System, None, None, 10, 0).await;
    assert_eq!(
        all,
        [
            "Patient/p1/3",
            "Patient/p2/1",
            "Patient/p1/2",
            "Observation/o1/1",
            "Patient/p1/1"
        ]
    );
    assert_eq!(total, 5);
    let (patients, total) = run(HistoryScope::Type("Patient".into()), None, None, 10, 0).await;
    assert_eq!(
        patients,
        [
            "Patient/p1/3",
            "Patient/p2/1",
            "Patient/p1/2",
            "Patient/p1/1"
        ]
    );
    assert_eq!(total, 4);
    let (p1, _) = run(
        HistoryScope::Instance(key("Patient", "p1")),
        None,
        None,
        10,
        0,
    )
    .await;
    assert_eq!(p1, ["Patient/p1/3", "Patient/p1/2", "Patient/p1/1"]);
    let (window, total) = run(HistoryScope::System, Some(T0 + 10), Some(T0 + 30), 10, 0).await;
    assert_eq!(window, ["Patient/p2/1", "Patient/p1/2", "Observation/o1/1"]);
    assert_eq!(total, 3);
    let (page, total) = run(HistoryScope::System, None, None, 2, 2).await;
    assert_eq!(page, ["Patient/p1/2", "Observation/o1/1"]);
    assert_eq!(total, 5);
    let (none, total) = run(
        HistoryScope::Instance(key("Patient", "nobody")),
        None,
        None,
        10,
        0,
    )
    .await;
    assert!(none.is_empty());
    assert_eq!(total, 0);
}

// ---------------------------------------------------------------------------------------------
// Search

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const NAMES: [&str; 6] = ["Smith", "Smythe", "Jones", "Johnson", "Müller", "O'Brien"];

/// The generated Observations' index entries, by id.
fn generated_observations() -> Vec<(String, Vec<IndexEntry>)> {
    let mut rng = Lcg(42);
    let mut resources = Vec::new();
    for n in 0..120u64 {
        let mut entries = Vec::new();
        let systems = [Some(LOINC), Some(SNOMED), None];
        for _ in 0..=rng.next(2) {
            let system = systems[rng.next(3) as usize];
            let code = ["a", "b", "c"][rng.next(3) as usize];
            let text = ["heart rate", "blood pressure", "body weight"][rng.next(3) as usize];
            entries.push(IndexEntry {
                param: "code".into(),
                value: IndexValue::Token {
                    system: system.map(str::to_owned),
                    code: Some(code.to_owned()),
                    text: (rng.next(4) > 0).then(|| text.to_owned()),
                },
            });
        }
        if rng.next(6) > 0 {
            // Values start and end on and next to the searched ranges' edges.
            let day_start = T0 + rng.next(10) as i64 * DAY;
            let low =
                day_start + [0, 2 * HOUR, 5 * HOUR, 2 * HOUR - 1, DAY - 1][rng.next(5) as usize];
            let high = match rng.next(7) {
                0 => low,
                1 => low + HOUR - 1,
                2 => day_start + DAY - 1,
                3 => day_start + 2 * DAY - 1,
                4 => day_start + 2 * DAY,
                5 => low + 3 * DAY,
                _ => i64::MAX,
            };
            entries.push(date("date", low, high));
        }
        if rng.next(5) > 0 {
            let value = rng.next(2000) as f64 / 10.0;
            let (system, code) = if rng.next(2) == 0 {
                ("http://unitsofmeasure.org", "mm[Hg]")
            } else {
                ("http://unitsofmeasure.org", "/min")
            };
            entries.push(IndexEntry {
                param: "value-quantity".into(),
                value: IndexValue::Quantity {
                    value,
                    low: value - 0.05,
                    high: value + 0.05,
                    system: Some(system.to_owned()),
                    code: Some(code.to_owned()),
                    unit: Some(if code == "/min" {
                        "beats/minute".to_owned()
                    } else {
                        "mmHg".to_owned()
                    }),
                },
            });
        }
        if rng.next(4) > 0 {
            let value = rng.next(100) as f64;
            entries.push(IndexEntry {
                param: "n".into(),
                value: IndexValue::Number {
                    value,
                    low: value - 0.5,
                    high: value + 0.5,
                },
            });
        }
        let name = NAMES[rng.next(6) as usize];
        entries.push(IndexEntry {
            param: "name".into(),
            value: IndexValue::String {
                normalized: fold(name),
                exact: name.to_owned(),
            },
        });
        if rng.next(8) > 0 {
            entries.push(reference(
                "subject",
                "Patient",
                &format!("p{}", rng.next(10)),
            ));
        } else if rng.next(2) == 0 {
            entries.push(IndexEntry {
                param: "subject".into(),
                value: IndexValue::Reference {
                    target_type: None,
                    target_id: None,
                    url: "http://elsewhere.org/Patient/9".into(),
                },
            });
        } else {
            // A versioned relative reference: its url is not just type/id.
            entries.push(IndexEntry {
                param: "subject".into(),
                value: IndexValue::Reference {
                    target_type: Some("Patient".into()),
                    target_id: Some("p4".into()),
                    url: "Patient/p4/_history/1".into(),
                },
            });
        }
        let uri = [
            "http://hl7.org/fhir",
            "http://hl7.org/fhir/StructureDefinition/x",
            "http://example.org/a/b",
        ][rng.next(3) as usize];
        entries.push(IndexEntry {
            param: "url".into(),
            value: IndexValue::Uri(uri.to_owned()),
        });
        resources.push((format!("o{n:03}"), entries));
    }
    resources
}

/// A stand-in for the search crate's folding, good enough for the generated names.
fn fold(text: &str) -> String {
    text.to_lowercase().replace('ü', "u").replace('\'', "")
}

fn generated_clauses() -> Vec<Clause> {
    let mut clauses = Vec::new();
    let prefixes = [
        Prefix::Eq,
        Prefix::Ne,
        Prefix::Gt,
        Prefix::Lt,
        Prefix::Ge,
        Prefix::Le,
        Prefix::Sa,
        Prefix::Eb,
        Prefix::Ap,
    ];
    for prefix in prefixes {
        for (low, high) in [
            (T0 + 3 * DAY, T0 + 4 * DAY - 1),
            (T0 + 5 * DAY + 2 * HOUR, T0 + 5 * DAY + 3 * HOUR - 1),
            (T0, T0 + 31 * DAY - 1),
        ] {
            clauses.push(clause(
                "date",
                vec![Predicate::Date {
                    prefix,
                    low_ms: low,
                    high_ms: high,
                }],
            ));
        }
        clauses.push(clause(
            "n",
            vec![Predicate::Number {
                prefix,
                value: 50.0,
                low: 49.5,
                high: 50.5,
            }],
        ));
        clauses.push(clause(
            "value-quantity",
            vec![Predicate::Quantity {
                prefix,
                value: 100.0,
                low: 99.95,
                high: 100.05,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("mm[Hg]".into()),
            }],
        ));
        clauses.push(clause(
            "value-quantity",
            vec![Predicate::Quantity {
                prefix,
                value: 80.0,
                low: 72.0,
                high: 88.0,
                system: None,
                code: Some("beats/minute".into()),
            }],
        ));
    }
    let token = |system: Option<Option<&str>>, code: Option<&str>, negate| Predicate::Token {
        system: system.map(|s| s.map(str::to_owned)),
        code: code.map(str::to_owned),
        negate,
    };
    clauses.extend([
        clause("code", vec![token(None, Some("a"), false)]),
        clause("code", vec![token(Some(Some(LOINC)), Some("a"), false)]),
        clause("code", vec![token(Some(None), Some("b"), false)]),
        clause("code", vec![token(Some(Some(SNOMED)), None, false)]),
        clause(
            "code",
            vec![
                token(Some(Some(LOINC)), Some("a"), false),
                token(Some(Some(SNOMED)), Some("c"), false),
            ],
        ),
        clause("code", vec![token(None, Some("a"), true)]),
        clause(
            "code",
            vec![
                token(Some(Some(LOINC)), Some("a"), true),
                token(None, Some("b"), true),
            ],
        ),
        clause("code", vec![Predicate::TokenText("blood".into())]),
        clause("code", vec![Predicate::TokenText("rate".into())]),
        clause("name", vec![starts("sm")]),
        clause("name", vec![starts("mu"), starts("jo")]),
        clause(
            "name",
            vec![Predicate::String {
                mode: StringMatch::Exact,
                value: "Smith".into(),
            }],
        ),
        clause(
            "name",
            vec![Predicate::String {
                mode: StringMatch::Exact,
                value: "smith".into(),
            }],
        ),
        clause(
            "name",
            vec![Predicate::String {
                mode: StringMatch::Contains,
                value: "th".into(),
            }],
        ),
        clause(
            "subject",
            vec![Predicate::Reference {
                target_type: Some("Patient".into()),
                target_id: Some("p3".into()),
                url: None,
            }],
        ),
        clause(
            "subject",
            vec![Predicate::Reference {
                target_type: None,
                target_id: Some("p4".into()),
                url: None,
            }],
        ),
        clause(
            "subject",
            vec![Predicate::Reference {
                target_type: Some("Group".into()),
                target_id: Some("p4".into()),
                url: None,
            }],
        ),
        clause(
            "subject",
            vec![Predicate::Reference {
                target_type: None,
                target_id: None,
                url: Some("http://elsewhere.org/Patient/9".into()),
            }],
        ),
        // A relative url as a url: the same resources as its type and id.
        clause(
            "subject",
            vec![Predicate::Reference {
                target_type: None,
                target_id: None,
                url: Some("Patient/p4".into()),
            }],
        ),
        clause(
            "subject",
            vec![Predicate::Reference {
                target_type: None,
                target_id: None,
                url: Some("Patient/p4/_history/1".into()),
            }],
        ),
        clause(
            "url",
            vec![Predicate::Uri {
                value: "http://hl7.org/fhir".into(),
                below: false,
                above: false,
            }],
        ),
        clause(
            "url",
            vec![Predicate::Uri {
                value: "http://hl7.org/fhir".into(),
                below: true,
                above: false,
            }],
        ),
        clause(
            "url",
            vec![Predicate::Uri {
                value: "http://example.org/a/b/c".into(),
                below: false,
                above: true,
            }],
        ),
        clause("date", vec![Predicate::Missing(true)]),
        clause("date", vec![Predicate::Missing(false)]),
        clause("n", vec![Predicate::Missing(true)]),
        clause("nothing", vec![Predicate::Missing(true)]),
    ]);
    clauses
}

pub async fn search_agrees_with_reference_matcher(store: Arc<dyn Store>) {
    let resources = generated_observations();
    let writes = resources
        .iter()
        .map(|(id, entries)| write("Observation", id, 1, T0, entries.clone()))
        .collect::<Vec<_>>();
    commit_ok(&store, writes).await;
    // A resource of another type with the same values must never show up.
    commit_ok(
        &store,
        vec![write("Condition", "c1", 1, T0, resources[0].1.clone())],
    )
    .await;

    let single = generated_clauses();
    let mut queries: Vec<Vec<Clause>> = single.iter().map(|c| vec![c.clone()]).collect();
    // Pairs and triples mixing kinds, including negations and `:missing` next to drivers.
    let mut rng = Lcg(7);
    for _ in 0..120 {
        let size = 2 + rng.next(2) as usize;
        queries.push(
            (0..size)
                .map(|_| single[rng.next(single.len() as u64) as usize].clone())
                .collect(),
        );
    }
    for clauses in queries {
        let expected: Vec<String> = resources
            .iter()
            .filter(|(_, entries)| flare_search::matcher::matches(&clauses, entries))
            .map(|(id, _)| id.clone())
            .collect();
        let page = store
            .search(&query(Some("Observation"), clauses.clone()))
            .await
            .expect("search");
        assert_eq!(ids(&page.matches), expected, "clauses: {clauses:?}");
        assert_eq!(
            page.total,
            Some(expected.len() as u64),
            "clauses: {clauses:?}"
        );
    }
}

pub async fn search_update_replaces_index_values(store: Arc<dyn Store>) {
    commit_ok(
        &store,
        vec![write(
            "Patient",
            "p1",
            1,
            T0,
            vec![string("name", "Alpha"), token("gender", None, "male")],
        )],
    )
    .await;
    commit_ok(
        &store,
        vec![write(
            "Patient",
            "p1",
            2,
            T0 + 1,
            vec![string("name", "Beta")],
        )],
    )
    .await;
    let find = |param: &str, predicate: Predicate| {
        query(Some("Patient"), vec![clause(param, vec![predicate])])
    };
    assert!(
        search_ids(&store, &find("name", starts("alpha")))
            .await
            .is_empty()
    );
    assert_eq!(
        search_ids(&store, &find("name", starts("beta"))).await,
        ["p1"]
    );
    assert!(
        search_ids(
            &store,
            &find(
                "gender",
                Predicate::Token {
                    system: None,
                    code: Some("male".into()),
                    negate: false
                }
            )
        )
        .await
        .is_empty()
    );
    assert_eq!(
        search_ids(&store, &find("gender", Predicate::Missing(true))).await,
        ["p1"]
    );
    let page = store.search(&find("name", starts("beta"))).await.unwrap();
    assert_eq!(
        page.matches[0].version_id, 2,
        "search returns the current version"
    );
}

pub async fn search_chain(store: Arc<dyn Store>) {
    commit_ok(
        &store,
        vec![
            write(
                "Patient",
                "p1",
                1,
                T0,
                vec![string("name", "Smith"), token("gender", None, "female")],
            ),
            write(
                "Patient",
                "p2",
                1,
                T0,
                vec![string("name", "Jones"), token("gender", None, "female")],
            ),
            write("Group", "p1", 1, T0, vec![string("name", "Smith")]),
            write(
                "Observation",
                "o1",
                1,
                T0,
                vec![reference("subject", "Patient", "p1")],
            ),
            write(
                "Observation",
                "o2",
                1,
                T0,
                vec![reference("subject", "Patient", "p2")],
            ),
            write(
                "Observation",
                "o3",
                1,
                T0,
                vec![reference("subject", "Group", "p1")],
            ),
            write(
                "Observation",
                "o4",
                1,
                T0,
                vec![reference("subject", "Patient", "gone")],
            ),
        ],
    )
    .await;
    let chained = |target: &str, inner: Clause| Clause {
        param: "subject".into(),
        chain: Some(Box::new(Chain {
            target_type: target.into(),
            clause: inner,
        })),
        predicates: vec![],
    };
    let by_name = chained("Patient", clause("name", vec![starts("smi")]));
    assert_eq!(
        search_ids(&store, &query(Some("Observation"), vec![by_name.clone()])).await,
        ["o1"]
    );
    let by_group = chained("Group", clause("name", vec![starts("smi")]));
    assert_eq!(
        search_ids(&store, &query(Some("Observation"), vec![by_group])).await,
        ["o3"]
    );
    let female = chained(
        "Patient",
        clause(
            "gender",
            vec![Predicate::Token {
                system: None,
                code: Some("female".into()),
                negate: false,
            }],
        ),
    );
    assert_eq!(
        search_ids(&store, &query(Some("Observation"), vec![female.clone()])).await,
        ["o1", "o2"]
    );
    // A chain next to another clause, and a chain whose inner clause cannot drive.
    let not_o2 = clause(
        "_id",
        vec![Predicate::Token {
            system: None,
            code: Some("o2".into()),
            negate: true,
        }],
    );
    commit_ok(
        &store,
        vec![write(
            "Observation",
            "o5",
            1,
            T0,
            vec![
                reference("subject", "Patient", "p2"),
                token("_id", None, "o5"),
            ],
        )],
    )
    .await;
    commit_ok(
        &store,
        vec![write(
            "Observation",
            "o2",
            2,
            T0,
            vec![
                reference("subject", "Patient", "p2"),
                token("_id", None, "o2"),
            ],
        )],
    )
    .await;
    assert_eq!(
        search_ids(&store, &query(Some("Observation"), vec![female, not_o2])).await,
        ["o1", "o5"]
    );
    let no_gender = chained("Patient", clause("gender", vec![Predicate::Missing(true)]));
    assert!(
        search_ids(&store, &query(Some("Observation"), vec![no_gender]))
            .await
            .is_empty()
    );
    // A deleted target no longer matches.
    commit_ok(&store, vec![tombstone("Patient", "p1", 2, T0 + 1)]).await;
    assert!(
        search_ids(&store, &query(Some("Observation"), vec![by_name]))
            .await
            .is_empty()
    );
}

pub async fn search_sort_and_paging(store: Arc<dyn Store>) {
    // Names with ties, a missing name, dates in another order than names.
    let people = [
        ("a", Some("Brown"), 3),
        ("b", Some("adams"), 1),
        ("c", None, 2),
        ("d", Some("Brown"), 0),
        ("e", Some("Clark"), 4),
    ];
    let writes = people
        .iter()
        .map(|(id, name, day)| {
            let mut entries = vec![date("birthdate", T0 + day * DAY, T0 + (day + 1) * DAY - 1)];
            if let Some(name) = name {
                entries.push(string("family", name));
            }
            write("Patient", id, 1, T0 + 10 - day, entries)
        })
        .collect();
    commit_ok(&store, writes).await;
    let sorted = |keys: &[(&str, bool)]| {
        let mut q = query(Some("Patient"), vec![]);
        q.sort = keys
            .iter()
            .map(|(param, descending)| SortKey {
                param: param.to_string(),
                descending: *descending,
            })
            .collect();
        q
    };
    assert_eq!(
        search_ids(&store, &sorted(&[])).await,
        ["a", "b", "c", "d", "e"]
    );
    // Folded names order; equal names tie-break on id; no name comes last either way.
    assert_eq!(
        search_ids(&store, &sorted(&[("family", false)])).await,
        ["b", "a", "d", "e", "c"]
    );
    assert_eq!(
        search_ids(&store, &sorted(&[("family", true)])).await,
        ["e", "a", "d", "b", "c"]
    );
    assert_eq!(
        search_ids(&store, &sorted(&[("family", false), ("birthdate", true)])).await,
        ["b", "a", "d", "e", "c"]
    );
    assert_eq!(
        search_ids(&store, &sorted(&[("birthdate", false)])).await,
        ["d", "b", "c", "a", "e"]
    );
    assert_eq!(
        search_ids(&store, &sorted(&[("_lastUpdated", false)])).await,
        ["e", "a", "c", "b", "d"]
    );
    assert_eq!(
        search_ids(&store, &sorted(&[("_id", true)])).await,
        ["e", "d", "c", "b", "a"]
    );
    assert_eq!(
        search_ids(&store, &sorted(&[("unknown-param", false)])).await,
        ["a", "b", "c", "d", "e"]
    );

    // Paging walks the same order without repeats or holes.
    let mut paged = Vec::new();
    for offset in [0, 2, 4, 6] {
        let mut q = sorted(&[("family", false)]);
        q.count = 2;
        q.offset = offset;
        let page = store.search(&q).await.unwrap();
        assert_eq!(page.total, Some(5));
        paged.extend(ids(&page.matches));
    }
    assert_eq!(paged, ["b", "a", "d", "e", "c"]);
}

pub async fn search_large_result_plans_agree(store: Arc<dyn Store>) {
    // Enough matches that a default-ordered page walks the type instead of sorting them all.
    let writes: Vec<VersionWrite> = (0..2_600u32)
        .map(|n| {
            let mut entries = vec![token(
                "status",
                None,
                if n % 10 == 3 { "rare" } else { "final" },
            )];
            entries.push(date(
                "date",
                T0 + i64::from(n) * HOUR,
                T0 + i64::from(n) * HOUR,
            ));
            write("Observation", &format!("o{n:05}"), 1, T0, entries)
        })
        .collect();
    commit_ok(&store, writes).await;
    let final_status = clause(
        "status",
        vec![Predicate::Token {
            system: None,
            code: Some("final".into()),
            negate: false,
        }],
    );
    let late = clause(
        "date",
        vec![Predicate::Date {
            prefix: Prefix::Ge,
            low_ms: T0 + 300 * HOUR,
            high_ms: T0 + 300 * HOUR,
        }],
    );
    let rare = clause(
        "status",
        vec![Predicate::Token {
            system: None,
            code: Some("rare".into()),
            negate: false,
        }],
    );
    let not_rare = clause(
        "status",
        vec![Predicate::Token {
            system: None,
            code: Some("rare".into()),
            negate: true,
        }],
    );

    // Matches bunched at the end of the id order: a walk with a small budget gives up.
    let very_late = clause(
        "date",
        vec![Predicate::Date {
            prefix: Prefix::Ge,
            low_ms: T0 + 2_450 * HOUR,
            high_ms: T0 + 2_450 * HOUR,
        }],
    );

    let expect = |keep: &dyn Fn(u32) -> bool| {
        (0..2_600u32)
            .filter(|n| keep(*n))
            .map(|n| format!("o{n:05}"))
            .collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<Clause>, Vec<String>)> = vec![
        (vec![final_status.clone()], expect(&|n| n % 10 != 3)),
        (
            vec![final_status.clone(), late.clone()],
            expect(&|n| n % 10 != 3 && n >= 300),
        ),
        (
            vec![late.clone(), rare.clone()],
            expect(&|n| n % 10 == 3 && n >= 300),
        ),
        (vec![not_rare, late], expect(&|n| n % 10 != 3 && n >= 300)),
        (
            vec![final_status.clone(), very_late],
            expect(&|n| n % 10 != 3 && n >= 2_450),
        ),
    ];
    for (clauses, expected) in cases {
        for (count, offset) in [(50, 0), (50, 1_000), (1_000, 1_900)] {
            let mut q = query(Some("Observation"), clauses.clone());
            q.count = count;
            q.offset = offset;
            let page = store.search(&q).await.unwrap();
            let wanted: Vec<String> = expected.iter().skip(offset).take(count).cloned().collect();
            assert_eq!(
                ids(&page.matches),
                wanted,
                "{clauses:?} count {count} offset {offset}"
            );
            assert_eq!(page.total, Some(expected.len() as u64));
        }
        // Without an accurate total, pages still chain to exactly the matches, and the total
        // appears only where the page shows it (the last page).
        let mut paged = Vec::new();
        let mut offset = 0;
        loop {
            let mut q = query(Some("Observation"), clauses.clone());
            q.total = TotalMode::None;
            q.count = 700;
            q.offset = offset;
            let page = store.search(&q).await.unwrap();
            paged.extend(ids(&page.matches));
            let last = offset + q.count >= expected.len();
            let expected_total = last.then_some(expected.len() as u64);
            assert_eq!(page.total, expected_total, "{clauses:?} offset {offset}");
            if last {
                break;
            }
            offset += q.count;
        }
        assert_eq!(paged, expected, "{clauses:?} paged without a total");
    }
}

pub async fn search_total_modes(store: Arc<dyn Store>) {
    commit_ok(
        &store,
        (0..5)
            .map(|n| {
                write(
                    "Patient",
                    &format!("p{n}"),
                    1,
                    T0,
                    vec![string("name", "Same")],
                )
            })
            .collect(),
    )
    .await;
    let mut q = query(Some("Patient"), vec![clause("name", vec![starts("same")])]);
    q.count = 2;
    let page = store.search(&q).await.unwrap();
    assert_eq!((page.matches.len(), page.total), (2, Some(5)));
    q.total = TotalMode::None;
    let page = store.search(&q).await.unwrap();
    assert_eq!((page.matches.len(), page.total), (2, None));
    // The last page shows the total without counting; a page past the end does not.
    q.offset = 4;
    let page = store.search(&q).await.unwrap();
    assert_eq!((page.matches.len(), page.total), (1, Some(5)));
    q.offset = 3;
    let page = store.search(&q).await.unwrap();
    assert_eq!((page.matches.len(), page.total), (2, Some(5)));
    q.offset = 9;
    let page = store.search(&q).await.unwrap();
    assert_eq!((page.matches.len(), page.total), (0, None));
    q.offset = 0;
    q.count_only = true;
    let page = store.search(&q).await.unwrap();
    assert_eq!((page.matches.len(), page.total), (0, Some(5)));
    let mut zero = query(Some("Patient"), vec![]);
    zero.count = 0;
    let page = store.search(&zero).await.unwrap();
    assert_eq!((page.matches.len(), page.total), (0, Some(5)));
}

pub async fn search_system_level(store: Arc<dyn Store>) {
    commit_ok(
        &store,
        vec![
            write(
                "Patient",
                "x1",
                1,
                T0,
                vec![token("_id", None, "x1"), date("_lastUpdated", T0, T0)],
            ),
            write(
                "Observation",
                "x1",
                1,
                T0 + DAY,
                vec![
                    token("_id", None, "x1"),
                    date("_lastUpdated", T0 + DAY, T0 + DAY),
                ],
            ),
            write(
                "Observation",
                "x2",
                1,
                T0 + DAY,
                vec![
                    token("_id", None, "x2"),
                    date("_lastUpdated", T0 + DAY, T0 + DAY),
                ],
            ),
        ],
    )
    .await;
    let by_id = query(
        None,
        vec![clause(
            "_id",
            vec![Predicate::Token {
                system: None,
                code: Some("x1".into()),
                negate: false,
            }],
        )],
    );
    let page = store.search(&by_id).await.unwrap();
    assert_eq!(
        page.matches
            .iter()
            .map(|v| v.key.to_string())
            .collect::<Vec<_>>(),
        ["Observation/x1", "Patient/x1"]
    );
    let recent = query(
        None,
        vec![clause(
            "_lastUpdated",
            vec![Predicate::Date {
                prefix: Prefix::Gt,
                low_ms: T0,
                high_ms: T0 + DAY - 1,
            }],
        )],
    );
    assert_eq!(search_ids(&store, &recent).await, ["x1", "x2"]);
    let everything = store.search(&query(None, vec![])).await.unwrap();
    assert_eq!(everything.total, Some(3));
}

pub async fn search_include_and_revinclude(store: Arc<dyn Store>) {
    commit_ok(
        &store,
        vec![
            write("Patient", "p1", 1, T0, vec![]),
            write("Patient", "p2", 1, T0, vec![]),
            write("Practitioner", "dr", 1, T0, vec![]),
            write(
                "Observation",
                "o1",
                1,
                T0,
                vec![
                    reference("subject", "Patient", "p1"),
                    reference("performer", "Practitioner", "dr"),
                    token("code", None, "x"),
                ],
            ),
            write(
                "Observation",
                "o2",
                1,
                T0,
                vec![
                    reference("subject", "Patient", "p1"),
                    token("code", None, "x"),
                ],
            ),
            write(
                "Observation",
                "o3",
                1,
                T0,
                vec![
                    reference("subject", "Patient", "missing"),
                    token("code", None, "x"),
                ],
            ),
            write(
                "Provenance",
                "prov",
                1,
                T0,
                vec![
                    reference("target", "Observation", "o1"),
                    reference("target", "Patient", "p2"),
                ],
            ),
        ],
    )
    .await;
    let include = |source: &str, param: &str, target: Option<&str>| Include {
        source_type: source.into(),
        param: param.into(),
        target_type: target.map(str::to_owned),
        iterate: false,
    };
    let mut q = query(
        Some("Observation"),
        vec![clause(
            "code",
            vec![Predicate::Token {
                system: None,
                code: Some("x".into()),
                negate: false,
            }],
        )],
    );
    q.includes = vec![
        include("Observation", "subject", None),
        include("Observation", "performer", Some("Patient")),
    ];
    q.revincludes = vec![include("Provenance", "target", None)];
    let page = store.search(&q).await.unwrap();
    assert_eq!(ids(&page.matches), ["o1", "o2", "o3"]);
    let included: BTreeSet<String> = page.included.iter().map(|v| v.key.to_string()).collect();
    // p1 once though two matches point at it; the practitioner is not a Patient; p2 is only
    // reached through the Provenance, which is not followed further.
    assert_eq!(
        included,
        BTreeSet::from(["Patient/p1".to_owned(), "Provenance/prov".to_owned()])
    );
    assert_eq!(page.included.len(), 2);

    q.includes = vec![include("Observation", "*", None)];
    q.revincludes.clear();
    let page = store.search(&q).await.unwrap();
    let included: BTreeSet<String> = page.included.iter().map(|v| v.key.to_string()).collect();
    assert_eq!(
        included,
        BTreeSet::from(["Patient/p1".to_owned(), "Practitioner/dr".to_owned()])
    );

    // Deleted targets are not included.
    commit_ok(&store, vec![tombstone("Patient", "p1", 2, T0 + 1)]).await;
    q.includes = vec![include("Observation", "subject", None)];
    assert!(store.search(&q).await.unwrap().included.is_empty());
}
