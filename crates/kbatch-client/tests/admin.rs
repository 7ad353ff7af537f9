//! Admin operations against the real broker.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use kbatch_client::{Error, ErrorCode, NewTopic};
use kbatch_testkit::{admin, unique_name};

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_described_and_deleted() {
    let a = admin();
    let name = unique_name("admin");
    // Describing a missing topic reports it missing and does not create it as a side effect.
    assert!(matches!(a.describe_topic(&name).await, Err(Error::UnknownTopic(n)) if n == name));
    assert!(matches!(
        a.describe_topic(&name).await,
        Err(Error::UnknownTopic(_))
    ));

    let t = NewTopic::new(&name, 4)
        .with_config("cleanup.policy", "compact")
        .with_config("retention.ms", "123456");
    a.create_topics(std::slice::from_ref(&t)).await.unwrap();
    let d = a.describe_topic(&name).await.unwrap();
    assert_eq!(
        d.partitions.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(
        d.partitions
            .iter()
            .all(|p| p.leader >= 0 && p.replicas.len() == 1)
    );
    let cfg = a.describe_topic_configs(&name).await.unwrap();
    assert_eq!(
        cfg.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    assert_eq!(cfg.get("retention.ms").map(String::as_str), Some("123456"));
    assert!(a.list_topics().await.unwrap().contains(&name));

    // Creating it again is refused with the broker's code; ensure_topic treats it as done.
    let err = a.create_topics(std::slice::from_ref(&t)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(!a.ensure_topic(t).await.unwrap());

    a.delete_topics(&[&name]).await.unwrap();
    let gone = a.delete_topics(&[&name]).await.unwrap_err();
    assert!(
        matches!(gone, Error::UnknownTopic(ref n) if *n == name),
        "{gone}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_topics_get_clear_errors() {
    let a = admin();
    let err = a
        .create_topics(&[NewTopic::new(unique_name("zero"), 0)])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("partition count") && err.to_string().contains("0"),
        "{err}"
    );
    let err = a
        .create_topics(&[NewTopic::new("bad/name", 1)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad/name"), "{err}");
    let bad_cfg = NewTopic::new(unique_name("badcfg"), 1).with_config("cleanup.policy", "shred");
    assert!(a.create_topics(&[bad_cfg]).await.is_err());
}
