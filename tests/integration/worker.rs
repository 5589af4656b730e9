//! `thrombseg worker` and `thrombseg submit` against the local RabbitMQ and SeaweedFS.

use std::process::Command;
use std::time::Duration;

use lapin::BasicProperties;
use ndarray::Array3;
use serde_json::Value;

use crate::support::archives::{member_names, read_member, valid_npz};
use crate::support::broker::{self, TestTopology, WorkerProcess};
use crate::support::seaweedfs::{self, BUCKET, stage_job};
use crate::support::{MASK_TOLERANCE, binary, fixture, mask_disagreement, temp_dir, unique_name};

async fn object_bytes(s3: &aws_sdk_s3::Client, key: &str) -> Option<Vec<u8>> {
    let object = s3.get_object().bucket(BUCKET).key(key).send().await.ok()?;
    Some(object.body.collect().await.unwrap().into_bytes().to_vec())
}

fn assert_no_presigned_queries(logs: &str) {
    for secret in ["X-Amz-Signature", "X-Amz-Credential", "x-id="] {
        assert!(!logs.contains(secret), "worker logs contain {secret}:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn atlas_job_through_submit_matches_monai() {
    let storage = seaweedfs::shared();
    let topology = TestTopology::unique();
    let worker = WorkerProcess::start(&topology, &[]);
    let dir = temp_dir();
    let result_path = dir.path().join("atlas_masks.npz");

    let submit = Command::new(binary())
        .arg("submit")
        .arg(fixture("ct_brain_atlas_1mm.npz"))
        .args(["--bucket", BUCKET, "--output"])
        .arg(&result_path)
        .args(["--job-id", &unique_name("atlas"), "--timeout-seconds", "600"])
        .envs(topology.environment())
        .envs(storage.aws_environment())
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&submit.stdout);
    assert!(
        submit.status.success(),
        "submit failed\nstdout: {stdout}\nstderr: {}\nworker:\n{}",
        String::from_utf8_lossy(&submit.stderr),
        worker.logs()
    );
    let envelope: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(envelope["status"], "OK");
    assert_eq!(envelope["attempt"], 1);
    assert!(envelope["stages"]["upload"].as_f64().is_some(), "{envelope}");

    let actual = std::fs::read(&result_path).unwrap();
    let expected = std::fs::read(fixture("golden/atlas.expected.npz")).unwrap();
    for mask in ["pred_2d", "pred_3d"] {
        let actual = read_member::<u8>(&actual, mask);
        assert_eq!(actual.shape(), &[202, 202, 179]);
        let disagreement = mask_disagreement(&actual, &read_member::<u8>(&expected, mask));
        assert!(
            disagreement <= MASK_TOLERANCE,
            "atlas {mask} differs from MONAI in {:.4}% of voxels",
            disagreement * 100.0
        );
    }

    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(
        broker::ready_count(&channel, &topology.job_queue).await,
        0,
        "the job was acked"
    );
    assert_no_presigned_queries(&worker.logs());

    assert!(worker.terminate().success(), "worker exits 0 on SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_jobs_get_errors_and_worker_continues() {
    let storage = seaweedfs::shared();
    let s3 = storage.client();
    let topology = TestTopology::unique();
    let worker = WorkerProcess::start(&topology, &[]);
    let prefix = unique_name("jobs");

    let bad_volume = valid_npz(&Array3::<i16>::zeros((8, 8, 8)), 250.0, -1.0);
    let (bad_get, bad_put) = stage_job(
        &s3,
        &format!("{prefix}/bad.npz"),
        bad_volume,
        &format!("{prefix}/bad.out.npz"),
        Duration::from_secs(3600),
    )
    .await;
    let example = std::fs::read(fixture("input_file_example.npz")).unwrap();
    let (good_get, good_put) = stage_job(
        &s3,
        &format!("{prefix}/good in dir/ex+1@2=3é.npz"),
        example,
        &format!("{prefix}/good.out.npz"),
        Duration::from_secs(3600),
    )
    .await;
    let forbidden_get = bad_get.replace("X-Amz-Signature=", "X-Amz-Signature=0");

    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let plain = |job_id: &str, input: &str, output: &str| {
        serde_json::json!({"job_id": job_id, "input_file_url": input, "output_file_url": output}).to_string()
    };
    broker::publish_job(
        &channel,
        &topology,
        plain("bad-volume", &bad_get, &bad_put).as_bytes(),
        BasicProperties::default(),
    )
    .await;
    broker::publish_job(&channel, &topology, b"{not json at all", BasicProperties::default()).await;
    broker::publish_job(
        &channel,
        &topology,
        plain("forbidden", &forbidden_get, &bad_put).as_bytes(),
        BasicProperties::default(),
    )
    .await;
    // The output URL is checked before the download; nothing is sent to that address.
    broker::publish_job(
        &channel,
        &topology,
        plain("metadata-output", &bad_get, "http://169.254.169.254/latest/out.npz").as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let mlflow = serde_json::json!({
        "dataframe_split": {"columns": ["input_file_url", "output_file_url"], "data": [[good_get, good_put]]}
    });
    broker::publish_job(
        &channel,
        &topology,
        mlflow.to_string().as_bytes(),
        BasicProperties::default().with_message_id("good-after-bad".into()),
    )
    .await;

    let envelopes = broker::collect_messages(&connection, &topology.status_queue, 4, Duration::from_secs(300)).await;
    let envelopes: Vec<Value> = envelopes
        .iter()
        .map(|m| serde_json::from_slice(&m.data).unwrap())
        .collect();
    assert_eq!(
        envelopes.len(),
        4,
        "four envelopes: {envelopes:?}\nworker:\n{}",
        worker.logs()
    );
    let by_id = |id: &str| {
        envelopes
            .iter()
            .find(|e| e["job_id"] == id)
            .unwrap_or_else(|| panic!("no envelope for {id}: {envelopes:?}"))
    };

    let bad = by_id("bad-volume");
    assert_eq!(bad["status"], "ERROR");
    assert_eq!(bad["error"]["kind"], "bad_input");
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("non_mdc_var"),
        "{bad}"
    );

    let forbidden = by_id("forbidden");
    assert_eq!(forbidden["status"], "ERROR");
    assert_eq!(forbidden["error"]["kind"], "bad_input");
    let message = forbidden["error"]["message"].as_str().unwrap();
    assert!(message.contains("HTTP 403"), "{message}");
    assert!(!message.contains("X-Amz"), "envelope leaks the query string: {message}");

    let metadata = by_id("metadata-output");
    assert_eq!(metadata["error"]["kind"], "bad_input");
    assert!(
        metadata["error"]["message"].as_str().unwrap().contains("link-local"),
        "{metadata}"
    );
    assert!(
        metadata["stages"].get("download").is_none(),
        "rejected before the download: {metadata}"
    );

    let good = by_id("good-after-bad");
    assert_eq!(good["status"], "OK", "{good}");

    assert!(
        object_bytes(&s3, &format!("{prefix}/bad.out.npz")).await.is_none(),
        "no output for failed jobs"
    );
    let output = object_bytes(&s3, &format!("{prefix}/good.out.npz"))
        .await
        .expect("the good job's output");
    assert_eq!(member_names(&output), vec!["pred_2d", "pred_3d"]);
    assert_eq!(read_member::<u8>(&output, "pred_3d").shape(), &[60, 60, 61]);

    assert_eq!(
        broker::ready_count(&channel, &topology.job_queue).await,
        0,
        "every job was settled"
    );
    let dead = broker::collect_messages(&connection, &topology.dead_letter_queue, 4, Duration::from_secs(10)).await;
    assert_eq!(
        dead.len(),
        4,
        "the bad volume, the non-JSON body, the forbidden URL and the metadata output are dead-lettered"
    );
    assert_no_presigned_queries(&worker.logs());

    assert!(worker.terminate().success(), "worker exits 0 on SIGTERM");
}
