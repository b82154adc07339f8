//! `--rank auto`: peers racing for ranks in a local store and in S3 on moto's server each
//! get a distinct one, and a peer too many is told so.

use std::sync::Arc;

use peerless_comm::RunId;
use peerless_data::{ObjectStore, S3Options, StoreOptions, open_store};
use peerless_runtime::rank::{RankError, claim_rank};
use peerless_testkit::moto::MotoServer;

async fn race(store: Arc<dyn ObjectStore>) {
    let run = RunId::random();
    let size = 6;
    // Two claimants per rank, all at once: half of them must find every rank taken.
    let tasks: Vec<_> = (0..2 * size)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                claim_rank(store.as_ref(), run, size, &format!("peer {i}")).await
            })
        })
        .collect();
    let mut ranks = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(rank) => ranks.push(rank),
            Err(RankError::AllTaken { size: 6, .. }) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    ranks.sort_unstable();
    assert_eq!(
        ranks,
        (0..size).collect::<Vec<_>>(),
        "each rank exactly once"
    );
    assert_eq!(refused, size as usize);
    let err = claim_rank(store.as_ref(), run, size, "late")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--rank"), "{err}");
    // Another run's ranks are free.
    assert_eq!(
        claim_rank(store.as_ref(), RunId::random(), size, "x")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_peers_get_distinct_ranks_in_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path().to_str().unwrap(), &StoreOptions::default())
        .await
        .unwrap();
    race(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_peers_get_distinct_ranks_in_s3() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket("ranks").unwrap();
    // SAFETY (of the environment): set before the SDK reads it, on this test's thread.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    }
    let options = StoreOptions {
        s3: S3Options {
            endpoint_url: Some(moto.endpoint().to_owned()),
            region: Some("us-east-1".into()),
            ..S3Options::default()
        },
    };
    let store = open_store("s3://ranks/run", &options).await.unwrap();
    race(store).await;
}
